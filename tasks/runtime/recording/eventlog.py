"""The recorder that writes to the event log, waiting for the database when it is away.

The database may be away for a while (a restart, a failover): every append waits for it, retrying with
backoff for up to :data:`STORE_WAIT_S` seconds before ``StoreUnavailable`` is raised. Waiting is what keeps
the log whole: ``task.sent`` is written from a Celery signal, whose errors Celery logs and swallows, and a
terminal event written after the work must not be dropped. When even the wait runs out, the task base gives
the message back to the broker (tasks.runtime.hooks).
"""

from __future__ import annotations

import logging
import random
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from relaybus.eventstore import NewEvent, StoreUnavailable, open_store
from relaybus.eventstore.payloads import resolve
from relaybus.eventstore.storable import restore
from relaybus.eventstore.types import LLM_COMPLETED, TASK_FAILED, TASK_REDELIVERED, TASK_SENT
from relaybus.tasks.runtime.claimcheck import store_config
from relaybus.tasks.runtime.config import RuntimeConfig
from relaybus.tasks.runtime.context import current_task_id
from relaybus.tasks.runtime.recording import records
from relaybus.tasks.runtime.recording.group import GroupCommitter
from relaybus.tasks.runtime.recording.held import HeldStarts
from relaybus.tasks.runtime.recording.hostwriter import HostWriterClient, WriterGone, client_from_env, groups_in_process
from relaybus.tasks.runtime.recording.protocol import Failure

logger = logging.getLogger(__name__)

#: How long an append waits for an unavailable event store before it raises (seconds).
STORE_WAIT_S = 120.0
#: Backoff between attempts: doubling from the first to the last value, with jitter.
STORE_RETRY_FIRST_S = 0.2
STORE_RETRY_MAX_S = 5.0

#: The monotonic time by which waiting for the store must end in this context: the task base sets it
#: below a running task's soft time limit, so the limit never fires inside the wait (the message is
#: requeued instead), and clears it when the task returns.
STORE_WAIT_UNTIL: ContextVar[float | None] = ContextVar("relaybus_store_wait_until", default=None)


@contextmanager
def waiting_until(deadline: float | None) -> Iterator[None]:
    """Inside the block, an append gives up waiting for an unavailable store by ``deadline``
    (``time.monotonic()``), even before :data:`STORE_WAIT_S`: the task base sets it below the task's
    soft time limit, so the limit never fires inside the wait (the message is requeued instead)."""
    token = STORE_WAIT_UNTIL.set(deadline)
    try:
        yield
    finally:
        STORE_WAIT_UNTIL.reset(token)


def _deadline() -> float:
    """When waiting for an unavailable store must end in this context (:data:`STORE_WAIT_UNTIL`)."""
    deadline = time.monotonic() + STORE_WAIT_S
    bound = STORE_WAIT_UNTIL.get()
    return deadline if bound is None else min(deadline, bound)


class EventRecorder:
    """A :class:`~.protocol.Recorder` on the event store at ``config.eventstore_url``."""

    enabled = True

    def __init__(self, config: RuntimeConfig) -> None:
        self.config = config
        self.store = open_store(
            config.eventstore_url,
            config=store_config(config),
        )
        self.host = socket.gethostname()
        # Tasks running on threads of this process (a threads or gevent pool) share transactions.
        self._group: GroupCommitter | None = GroupCommitter(self.store) if groups_in_process() else None
        # Start records carry a copy of the task's task.sent, most often stored already: look before writing.
        self.held = HeldStarts(self.store.append_new if self._group is None else self._commit_in_group)
        # In a prefork worker's pool process: the host writer that commits all pool processes' records together.
        self._writer: HostWriterClient | None = client_from_env()

    @property
    def writes_directly(self) -> bool:
        """Whether this process commits its records in transactions of its own (no group commit), so that a
        caller may commit a task's records in one of its own instead (a saga task's move, tasks.saga.advance)."""
        return self._group is None and self._writer is None

    def append(self, events: list[NewEvent], task_id: str | None = None) -> None:
        """Append ``events``, preceded by the held-back start records of the running task.

        Waits for an unavailable store (module docstring); if it gives up, the start records go back
        to be held, and ``StoreUnavailable`` is raised.
        """
        task_id = task_id or current_task_id()
        if self._group is not None:
            self._append_in_group(events, task_id)
            return
        with self.held.io_lock:
            held = self.held.take(task_id)
            deadline = _deadline()
            if self._writer is not None:
                try:
                    self._writer.append([*held, *events], max(0.0, deadline - time.monotonic()))
                    return
                except WriterGone as gone:
                    # Whether it committed or not, the records are written here (idempotent by event id).
                    logger.warning("the host writer did not answer (%s): this process writes its records", gone)
                    self._writer = None
                    held = [*held, *events]
                    events = []
                except StoreUnavailable:
                    self.held.give_back(task_id, held)
                    raise
            delay = STORE_RETRY_FIRST_S
            while True:
                try:
                    if held or not events:
                        self.store.append_new([*held, *events])
                    else:
                        self.store.append(events)
                    return
                except StoreUnavailable as exc:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        self.held.give_back(task_id, held)
                        raise
                    logger.warning("event store unavailable (%s); retrying for up to %.0f s more", exc, left)
                    time.sleep(min(left, delay / 2 + random.uniform(0, delay / 2)))  # a database to wait for: no event
                    delay = min(delay * 2, STORE_RETRY_MAX_S)

    def _append_in_group(self, events: list[NewEvent], task_id: str | None) -> None:
        assert self._group is not None
        with self.held.io_lock:  # taken and queued together: the flusher cannot queue these starts after them
            held = self.held.take(task_id)
            request = self._group.submit([*held, *events], _deadline())
        try:
            self._group.wait(request)  # outside the lock: other threads' records join the transaction
        except StoreUnavailable:
            self.held.give_back(task_id, held)
            raise

    def _commit_in_group(self, events: list[NewEvent]) -> int:
        """The start-record flusher's write (under ``io_lock``), through the same queue."""
        assert self._group is not None
        self._group.commit(events, time.monotonic() + STORE_WAIT_S)
        return len(events)

    def flush(self, older_than_s: float = 0.0) -> int:
        """Write the start records of tasks that have run longer than ``older_than_s``."""
        return self.held.flush(older_than_s)

    # -- transitions -------------------------------------------------------------------------

    def task_started(self, task: Any, request: Any, args: Any, kwargs: Any) -> None:
        self.held.hold(request.id, records.started(task, request, args, kwargs, self.host))

    def task_retried(self, task: Any, request: Any, error: BaseException, countdown: float) -> None:
        self.append([records.retried(task, request, error, countdown, self.host)], task_id=request.id)

    def task_succeeded(self, task: Any, request: Any, result: Any, duration_s: float) -> None:
        self.append([records.succeeded(task, request, result, duration_s, self.host)], task_id=request.id)

    def task_failed(
        self, task: Any, request: Any, error: BaseException, duration_s: float, *, dead_letter_reason: str | None
    ) -> None:
        self.append(records.failed(task, request, error, duration_s, dead_letter_reason, self.host), task_id=request.id)

    def task_rejected(self, task: Any, request: Any, error: BaseException, duration_s: float, *, reason: str) -> None:
        self.append([records.rejected(task, request, error, duration_s, reason, self.host)], task_id=request.id)

    def llm_completed(
        self, task: Any, request: Any, llm_request: Any, completion: Any, cost: dict[str, Any] | None = None
    ) -> None:
        self.append([records.llm_completed(task, request, llm_request, completion, self.host, cost)],
                    task_id=request.id)

    # -- queries -----------------------------------------------------------------------------

    def recorded_completions(self, correlation_id: str, *, task_id: str | None = None) -> dict[str, Any]:
        from relaybus.tasks.llm import Completion

        found: dict[str, Any] = {}
        recorded = (self.store.by_correlation(correlation_id) if task_id is None
                    else self.store.find(type=LLM_COMPLETED, task_id=task_id, limit=10_000))
        for event in recorded:
            if event.type == LLM_COMPLETED:
                # A large completion is kept by reference (eventstore.payloads): read back.
                completion = Completion.model_validate(resolve(event.payload["completion"], self.store.get_payload))
                found[completion.request_fingerprint] = completion
        return found

    def redeliveries(self, task_id: str) -> int:
        return len(self.store.find(type=TASK_REDELIVERED, task_id=task_id, limit=10_000))

    def first_failure(self, correlation_id: str) -> Failure | None:
        failed = self.store.find(type=TASK_FAILED, correlation_id=correlation_id, limit=1)
        if not failed:
            return None
        event = failed[0]
        # The failed record names the agent; the task's name is in its task.sent record.
        sent = self.store.find(type=TASK_SENT, task_id=event.task_id, limit=1) if event.task_id else []
        task = str(sent[0].payload.get("task") or "") if sent else ""
        task = task or (f"agents.{event.agent}" if event.agent else "")
        payload = restore(event.payload)  # an error message stored escaped reads as it was raised
        return Failure(task, str(payload.get("error_type")), str(payload.get("error_message")))
