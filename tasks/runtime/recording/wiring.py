"""Which recorder an app uses, and the publish handlers that record ``task.sent``.

``task.sent`` is written only once the broker has confirmed the message (publisher confirms): built in
``before_task_publish``, where the message's properties are known, and appended in
``after_task_publish``, which Celery sends only when the publish returned. A publish that fails raises to
its caller and leaves no record of a task that was never sent.

A publisher may leave the record to the worker that receives the message (:func:`receiver_records_sent`: a
saga's steps, whose tasks write a copy of their ``task.sent`` with their start records anyway). Its write was
a transaction of its own between a saga's move and the next step's, on the same lock (SQLite) or one more WAL
flush (PostgreSQL). The message then carries its publish time and the publisher's host
(``x_published_at``, ``x_published_by``), and the record is written by whatever ends the message first: its
start, or a revoke, a time limit, a rejection or a dead letter in the receiving worker (tasks.runtime.request,
tasks.runtime.consumer), all before the message is acknowledged. A message purged from its queue unreceived
leaves no ``task.sent``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from celery import Celery

from relaybus.eventstore import NewEvent
from relaybus.tasks.runtime.config import resources, runtime_config
from relaybus.tasks.runtime.context import PUBLISHED_AT_HEADER, PUBLISHED_BY_HEADER
from relaybus.tasks.runtime.recording.eventlog import EventRecorder
from relaybus.tasks.runtime.recording.protocol import NullRecorder, Recorder

_OFF = NullRecorder()

#: The ``task.sent`` record of the message being published in this context: (app, task id, record).
_PENDING_SENT: ContextVar[tuple[Celery, str, NewEvent] | None] = ContextVar("relaybus_pending_sent", default=None)
#: Whether the messages published in this context leave their ``task.sent`` to their receiver.
_LEFT_TO_RECEIVER: ContextVar[bool] = ContextVar("relaybus_sent_left_to_receiver", default=False)


@contextmanager
def receiver_records_sent() -> Iterator[None]:
    """Inside the block, a message published leaves its ``task.sent`` to the worker that receives it (module
    docstring). Only for a task that records its start with relaybus's recorder (an agent task): any other
    would leave its send unrecorded."""
    token = _LEFT_TO_RECEIVER.set(True)
    try:
        yield
    finally:
        _LEFT_TO_RECEIVER.reset(token)


def recorder_for(app: Celery) -> Recorder:
    """The app's recorder: one per event store and process, or the null recorder when recording is off."""
    config = runtime_config(app)
    if not config.record_events:
        return _OFF
    recorder: Recorder = resources().get(f"recorder:{config.eventstore_url}", lambda: EventRecorder(config))
    return recorder


#: How long the worker's main process (its consumer, its request handlers) waits for an unavailable event
#: store: it serves every pool process, so briefly.
MAIN_PROCESS_STORE_WAIT_S = 5.0


def record_from_main_process(app: Celery, events: list[NewEvent]) -> None:
    """Append ``events`` from the worker's main process, waiting for the store at most
    :data:`MAIN_PROCESS_STORE_WAIT_S` (then ``StoreUnavailable``); nothing when recording is off."""
    from relaybus.tasks.runtime.recording.eventlog import waiting_until

    recorder = recorder_for(app)
    if recorder.enabled:
        with waiting_until(time.monotonic() + MAIN_PROCESS_STORE_WAIT_S):
            recorder.append(events, task_id="")


def on_before_task_publish(
    app: Celery,
    body: Any = None,
    headers: dict[str, Any] | None = None,
    properties: dict[str, Any] | None = None,
    routing_key: str | None = None,
    **_: Any,
) -> None:
    """``before_task_publish`` handler: build the ``task.sent`` record of the message about to go out."""
    _PENDING_SENT.set(None)
    if headers is None:
        return
    # Never inherited (a retry or a deferral republishes its task's headers): set below for this message only.
    headers.pop(PUBLISHED_AT_HEADER, None)
    headers.pop(PUBLISHED_BY_HEADER, None)
    recorder = recorder_for(app)
    if not recorder.enabled:
        return
    from relaybus.tasks.runtime.recording import records

    if _LEFT_TO_RECEIVER.get() and records.agent_for_task(str(headers.get("task", ""))) is not None:
        headers[PUBLISHED_AT_HEADER] = time.time_ns() // 1_000
        headers[PUBLISHED_BY_HEADER] = getattr(recorder, "host", "")
        return
    priority = (properties or {}).get("priority")
    event = records.sent(headers, body, routing_key, priority, getattr(recorder, "host", ""))
    if event is not None:
        _PENDING_SENT.set((app, str(headers.get("id")), event))


def on_after_task_publish(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """``after_task_publish`` handler: the broker confirmed the message; write its ``task.sent``."""
    pending = _PENDING_SENT.get()
    if pending is None:
        return
    _PENDING_SENT.set(None)
    app, task_id, event = pending
    if headers is not None and str(headers.get("id")) != task_id:
        return  # not the message this record was built for
    recorder_for(app).append([event])


_HOST_WRITERS: list[Any] = []


def start_host_writer(sender: Any = None, **_: Any) -> None:
    """``worker_init`` handler: a prefork worker starts its host writer before it forks the pool
    (tasks.runtime.recording.hostwriter)."""
    from relaybus.tasks.runtime.recording.hostwriter import start_for_worker

    app = getattr(sender, "app", None)
    if app is None:
        return
    pool = getattr(sender, "pool_cls", "") or ""
    name = pool if isinstance(pool, str) else str(getattr(pool, "__module__", "")).rsplit(".", 1)[-1]
    writer = start_for_worker(runtime_config(app), name.rsplit(":", 1)[-1].rsplit(".", 1)[-1])
    if writer is not None:
        _HOST_WRITERS.append(writer)


def stop_host_writer(**_: Any) -> None:
    """``worker_shutdown`` handler: the pool has stopped; so does its writer."""
    while _HOST_WRITERS:
        _HOST_WRITERS.pop().stop()
