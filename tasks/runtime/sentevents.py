"""A client's ``task-sent`` events, batched, on a connection without publisher confirms.

Celery publishes the ``task-sent`` event with the producer that has just published the task, on the same
channel, once the task's confirm has come. With relaybus's publisher confirms every send therefore waited
for two confirms, the task's and the event's: one more broker round trip on every start and every step a
task sends. The event is monitoring (Flower, ``celery events``), not a record: the event log holds
``task.sent``, written once the task's own confirm came. So it goes on a connection of its own without
confirms, as the worker's task events do (tasks.runtime.consumer); its socket write is still bounded
(relaybus.broker). An event that cannot be published is logged and dropped: the task has gone out, and
its sender must not see the send fail.

Nor does the sender publish it: the event joins a buffer that a thread of the process publishes
``events_batch_s`` later, the events gathered meanwhile as one ``task.multi`` message (a list, which Flower and
``celery events`` read as the events one by one), as Celery's worker does with its own task events. The
publish cost a send about 0.2 ms of CPU (a saga start: 1.51 against 1.31 ms). What is still buffered is
published when the process exits (``atexit``) and when a pool process shuts down (:func:`flush_sent_events`,
on ``worker_process_shutdown``: a pool process leaves by ``os._exit``).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
from typing import Any

from celery import Celery
from celery.utils.log import get_logger

from relaybus.tasks.runtime.config import runtime_config

logger = get_logger(__name__)

#: The transport options of the event connection, on top of the app's.
UNCONFIRMED = {"confirm_publish": False}
#: A buffer this long is published at once, as Celery's dispatcher does with its own (``buffer_limit``).
BUFFER_LIMIT = 24

_EVERY: list[UnconfirmedEvents] = []  # this process's, for flush_sent_events


class UnconfirmedEvents:
    """A stand-in producer for Celery's event dispatcher, which calls only :meth:`publish`: one connection and one
    publishing thread per process (a fork starts its own), shared by the process's threads."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self._io = threading.Lock()  # the connection: one publish at a time
        self._pid: int | None = None
        self._connection: Any = None
        self._producer: Any = None
        self._fresh_buffer()
        _EVERY.append(self)

    def _fresh_buffer(self) -> None:
        """An empty buffer with a new lock and no publishing thread (also in a forked child: the parent's
        lock may have been held by its publishing thread as it forked)."""
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._buffer: list[tuple[Any, dict[str, Any]]] = []
        self._thread_pid: int | None = None

    def publish(self, body: Any, **kwargs: Any) -> None:
        """Buffer one event (Celery's ``producer.publish(event, routing_key=..., exchange=..., ...)``)."""
        kwargs.pop("retry", None)
        kwargs.pop("retry_policy", None)
        wait = runtime_config(self.app).events_batch_s
        if wait <= 0:
            self._send([(body, kwargs)])
            return
        with self._lock:
            self._buffer.append((body, kwargs))
            if self._thread_pid != os.getpid():
                self._thread_pid = os.getpid()
                threading.Thread(target=self._run, args=(wait,), name="relaybus-sent-events", daemon=True).start()
            if len(self._buffer) == 1 or len(self._buffer) >= BUFFER_LIMIT:
                self._ready.notify()

    def flush(self) -> None:
        """Publish what is buffered now."""
        with self._lock:
            batch, self._buffer = self._buffer, []
        if batch:
            self._send(batch)

    def _run(self, wait: float) -> None:
        ready = self._ready
        while True:
            with ready:
                ready.wait_for(lambda: bool(self._buffer))
                ready.wait_for(lambda: len(self._buffer) >= BUFFER_LIMIT, wait)  # more join the batch
            try:
                self.flush()
            except Exception:  # never let the thread die: the next events would wait forever
                logger.warning("task-sent events were not published (monitoring only)", exc_info=True)

    def _send(self, batch: list[tuple[Any, dict[str, Any]]]) -> None:
        body, kwargs = batch[0]
        if len(batch) > 1:  # one message for the batch, as Celery's dispatcher sends a group of task events
            body = [event for event, _ in batch]
            kwargs = {**kwargs, "routing_key": "task.multi"}
        with self._io:
            for attempt in (1, 2):  # a connection left idle may have been closed: one fresh try
                try:
                    self._producer_here().publish(body, retry=False, **kwargs)
                    return
                except Exception as error:
                    self._close()
                    if attempt == 2:
                        logger.warning("%d task-sent event(s) not published (monitoring only): %r", len(batch), error)

    def _producer_here(self) -> Any:
        if self._pid != os.getpid() or self._producer is None:
            self._connection = self.app.connection_for_write(transport_options=UNCONFIRMED)
            self._producer = self._connection.Producer()
            self._pid = os.getpid()
        return self._producer

    def _close(self) -> None:
        connection, self._connection, self._producer = self._connection, None, None
        if connection is not None and self._pid == os.getpid():
            with contextlib.suppress(Exception):
                connection.collect()  # no closing handshake: the broker may be the reason we are here


def flush_sent_events(**_: Any) -> None:
    """Publish every buffered ``task-sent`` event of this process (at exit; ``worker_process_shutdown``)."""
    for events in list(_EVERY):
        try:
            events.flush()
        except Exception:
            logger.warning("task-sent events were not published at exit (monitoring only)", exc_info=True)


def _after_fork_in_child() -> None:
    """The parent's publishing thread may have held either lock as it forked: the child starts with new ones."""
    for events in _EVERY:
        events._io = threading.Lock()
        events._fresh_buffer()


atexit.register(flush_sent_events)
os.register_at_fork(after_in_child=_after_fork_in_child)
