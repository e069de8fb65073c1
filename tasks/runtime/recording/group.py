"""Group commit: the records of many concurrently finishing tasks share one transaction.

Each caller hands its records to :meth:`GroupCommitter.commit` and waits; one writer thread takes every
request queued meanwhile and appends them all with one ``append_new`` (one lock, one commit: on PostgreSQL
one WAL flush) before it wakes them. The record is still durable before ``commit`` returns, so before the
caller's message is acknowledged; only the cost of the commit is shared.

What a shared transaction must not do is let one caller's problem become another's:

* an event the database cannot store (:class:`~relaybus.eventstore.UnstorableEvent`, a full disk...) fails
  the whole batch; the batch is then written request by request, so only the request that holds it fails;
* an unavailable store is waited for, each request until its own deadline (the soft-time-limit bound of
  :data:`.eventlog.STORE_WAIT_UNTIL`, carried in the request), then that request alone gets the
  :class:`~relaybus.eventstore.StoreUnavailable` while later ones go on waiting.

The writer serves the threads of one process (a threads or gevent pool, a web app's publishers) and the pool
processes of a prefork worker through the host writer (:mod:`.hostwriter`), which runs one of these.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from relaybus.eventstore import NewEvent, StoreUnavailable

logger = logging.getLogger(__name__)

#: The most events one transaction takes (what is queued beyond it waits for the next one).
MAX_BATCH_EVENTS = 2000
#: Backoff between attempts while the store is unavailable: doubling from the first to the last value.
RETRY_FIRST_S = 0.2
RETRY_MAX_S = 5.0


class AppendsNew(Protocol):
    def append_new(self, events_: Sequence[NewEvent]) -> int: ...


class Request:
    """One caller's records, its deadline (``time.monotonic()``), and how its write ended."""

    __slots__ = ("deadline", "done", "error", "events")

    def __init__(self, events: list[NewEvent], deadline: float) -> None:
        self.events = events
        self.deadline = deadline
        self.done = threading.Event()
        self.error: BaseException | None = None

    def finish(self, error: BaseException | None = None) -> None:
        self.error = error
        self.done.set()


def write_batch(store: AppendsNew, batch: Sequence[Request]) -> None:
    """Append the events of every request of ``batch`` in one transaction.

    A failure other than an unavailable store is isolated: the requests are written one by one and each
    failing one gets its error (``Request.error``). ``StoreUnavailable`` is raised for the caller to wait.
    Requests are not finished here.
    """
    try:
        store.append_new([event for request in batch for event in request.events])
        return
    except StoreUnavailable:
        raise
    except Exception as error:
        if len(batch) == 1:
            batch[0].error = error
            return
        logger.warning("a grouped append failed (%s); writing its %d requests one by one", error, len(batch))
    for request in batch:  # what the first attempt wrote is skipped by event id (append_new)
        try:
            store.append_new(request.events)
        except StoreUnavailable:
            raise
        except Exception as error:
            request.error = error


class GroupCommitter:
    """One writer thread that appends the records of concurrent callers together (module docstring)."""

    def __init__(self, store: AppendsNew, *, max_batch_events: int = MAX_BATCH_EVENTS) -> None:
        self.store = store
        self.max_batch_events = max_batch_events
        self._queue: list[Request] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        #: Transactions written and requests they carried, for tests and the benchmark's report.
        self.batches = 0
        self.requests = 0

    def commit(self, events: list[NewEvent], deadline: float) -> None:
        """Append ``events`` durably, sharing the transaction with whoever commits meanwhile; raises the
        store's error for these events (``StoreUnavailable`` once ``deadline`` has passed)."""
        self.wait(self.submit(events, deadline))

    def submit(self, events: list[NewEvent], deadline: float) -> Request:
        """Queue ``events`` for the next transaction; :meth:`wait` for it. Requests are written in the order
        they were submitted (one transaction keeps its events in order), so a caller that must not see its
        records overtaken submits under its own lock and waits outside it."""
        request = Request(events, deadline)
        with self._cond:
            self._queue.append(request)
            self._cond.notify()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="relaybus-group-commit", daemon=True)
                self._thread.start()
        return request

    def wait(self, request: Request) -> None:
        """Wait until ``request`` is written; raise its error."""
        # The writer honours the deadline; the margin covers a transaction still running at it.
        if not request.done.wait(max(0.0, request.deadline - time.monotonic()) + 60.0):
            raise StoreUnavailable("the group-commit writer did not answer")
        if request.error is not None:
            raise request.error

    def _take(self, block: bool) -> list[Request]:
        with self._cond:
            while block and not self._queue:
                self._cond.wait()
            batch: list[Request] = []
            count = 0
            while self._queue and (not batch or count + len(self._queue[0].events) <= self.max_batch_events):
                request = self._queue.pop(0)
                batch.append(request)
                count += len(request.events)
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take(block=True)
            try:
                self._write(batch)
            except BaseException as error:  # never leave a caller waiting, never let the thread die silently
                logger.exception("group commit failed")
                for request in batch:
                    if not request.done.is_set():
                        request.finish(error)

    def _write(self, batch: list[Request]) -> None:
        written = write_until_done(self.store, batch, lambda: self._take(block=False))
        self.batches += written
        self.requests += len(batch)


def write_until_done(store: AppendsNew, batch: list[Request], more: Callable[[], list[Request]] = lambda: []) -> int:
    """Write ``batch`` (:func:`write_batch`) and finish every request of it: while the store is unavailable,
    wait with backoff, finishing with ``StoreUnavailable`` each request whose deadline passed, and add what
    ``more`` gives to the next attempt. Returns the number of transactions that committed."""
    delay = RETRY_FIRST_S
    while batch:
        try:
            write_batch(store, batch)
        except StoreUnavailable as unavailable:
            now = time.monotonic()
            for request in batch:
                if request.deadline <= now:
                    request.finish(unavailable)
            batch = [r for r in batch if not r.done.is_set()]
            if not batch:
                return 0
            logger.warning("event store unavailable (%s); %d request(s) wait", unavailable, len(batch))
            time.sleep(min(min(r.deadline for r in batch) - now, delay / 2 + random.uniform(0, delay / 2)))
            delay = min(delay * 2, RETRY_MAX_S)
            batch += more()  # who came meanwhile joins the next attempt
            continue
        for request in batch:
            request.finish(request.error)
        return 1
    return 0
