"""Recording task transitions in the event log.

Where each transition is written:

* ``task.sent`` — in the publishing process once the broker confirmed the message (:mod:`.wiring`), client
  or worker; a saga's step's by the worker that receives it, with its first record
  (:func:`.wiring.receiver_records_sent`);
* ``task.received`` and ``task.started`` — in the pool child when the task begins, held back and
  written with the task's next record or by a background flush (:mod:`.held`);
* ``task.retried``, ``task.succeeded``, ``task.failed`` (+ ``task.dead_lettered``) — in the child,
  before the task returns, so the terminal event is durable before the message is acknowledged;
* ``task.failed`` for a hard time limit, ``task.revoked``, ``task.rejected``, dead letters of the worker's
  consumer and ``task.redelivered`` — in the worker's main process (tasks.runtime.request, .consumer).

The modules:

* :mod:`.protocol` — :class:`Recorder`, what callers may ask of a recorder, and :class:`NullRecorder`;
* :mod:`.eventlog` — :class:`EventRecorder`, which writes to the event store and waits for it when it is away;
* :mod:`.records` — every record of a task's life, built from its request (deterministic event ids);
* :mod:`.held` — the start records held back, and the thread that flushes them;
* :mod:`.wiring` — :func:`recorder_for` an app, and the publish handlers that record ``task.sent``.
"""

from __future__ import annotations

from relaybus.tasks.runtime.recording.eventlog import EventRecorder
from relaybus.tasks.runtime.recording.protocol import Failure, NullRecorder, Recorder
from relaybus.tasks.runtime.recording.records import agent_for_task, event_id
from relaybus.tasks.runtime.recording.wiring import (
    on_after_task_publish,
    on_before_task_publish,
    receiver_records_sent,
    recorder_for,
)

__all__ = [
    "EventRecorder",
    "Failure",
    "NullRecorder",
    "Recorder",
    "agent_for_task",
    "event_id",
    "on_after_task_publish",
    "on_before_task_publish",
    "receiver_records_sent",
    "recorder_for",
]
