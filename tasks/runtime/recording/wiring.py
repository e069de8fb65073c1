"""Which recorder an app uses, and the ``before_task_publish`` handler that records ``task.sent``."""

from __future__ import annotations

from typing import Any

from celery import Celery

from relaybus.tasks.runtime.config import resources, runtime_config
from relaybus.tasks.runtime.recording.eventlog import EventRecorder
from relaybus.tasks.runtime.recording.protocol import NullRecorder, Recorder

_OFF = NullRecorder()


def recorder_for(app: Celery) -> Recorder:
    """The app's recorder: one per event store and process, or the null recorder when recording is off."""
    config = runtime_config(app)
    if not config.record_events:
        return _OFF
    recorder: Recorder = resources().get(f"recorder:{config.eventstore_url}", lambda: EventRecorder(config))
    return recorder


def on_before_task_publish(
    app: Celery,
    body: Any = None,
    headers: dict[str, Any] | None = None,
    properties: dict[str, Any] | None = None,
    routing_key: str | None = None,
    **_: Any,
) -> None:
    """``before_task_publish`` handler recording ``task.sent`` in the publishing process."""
    if headers is None:
        return
    priority = (properties or {}).get("priority")
    recorder_for(app).task_sent(headers, body, routing_key, priority)
