"""The site's side of relaybus: one Celery app built from Django settings, start a pipeline, read its status.

The Celery app is built from ``settings.RELAYBUS`` (``relaybus.create_app(relaybus.Settings(...))``), not
taken from ``relaybus.app``: tests and other deployments can then give the site their own broker, namespace
and event store with ``override_settings(RELAYBUS=...)``, without touching ``os.environ``.

``relaybus.start`` loads the modules that declare pipelines, as a worker does (the built-in ``research``
pipeline, and whatever ``RELAYBUS_EXTRA_MODULES`` names), validates the input with the pipeline's input model
and sends its entry task. The status view reads the event log, the record; ``PipelineHandle`` gives the
same answer from the result backend, for code that wants to block on it.
"""

from __future__ import annotations

import functools
from typing import Any

from celery import Celery
from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

import relaybus
from relaybus.eventstore import EventStore, fold, open_store

#: The pipeline the site starts: relaybus's reference pipeline. Its input is ``{"request": ...}``.
PIPELINE = "research"
#: The records that end a pipeline in the event log; their payload is the outcome.
OUTCOMES = ("pipeline.completed", "pipeline.failed")


@functools.cache
def relaybus_settings() -> relaybus.Settings:
    return relaybus.Settings(**settings.RELAYBUS)


@functools.cache
def celery_app() -> Celery:
    return relaybus.create_app(relaybus_settings())


@functools.cache
def event_store() -> EventStore:
    return open_store(relaybus_settings().eventstore_url)


@receiver(setting_changed)
def _rebuild_on_new_settings(*, setting: str, **_: Any) -> None:
    if setting != "RELAYBUS":
        return
    if celery_app.cache_info().currsize:
        celery_app().close()
    if event_store.cache_info().currsize:
        event_store().close()
    for cached in (relaybus_settings, celery_app, event_store):
        cached.cache_clear()


def start_workflow(request: str, correlation_id: str, priority: str = "normal") -> relaybus.PipelineHandle:
    """Start the pipeline under ``correlation_id`` (its pipeline id; ``priority``: urgent, high, normal, low).
    Call it from ``transaction.on_commit``, never inside the transaction."""
    return relaybus.start(
        PIPELINE, {"request": request}, priority=priority, correlation_id=correlation_id, app=celery_app()
    )


def workflow_status(correlation_id: str) -> dict[str, Any]:
    """The pipeline's status, its outcome once it ended, and its events, from the event log (never Redis).

    ``pending`` until the first event is recorded, then ``running``, then ``completed`` (with ``output``)
    or ``failed`` (with ``reason``, which names the step that failed).
    """
    events = event_store().by_correlation(correlation_id)
    state = fold(events).get(correlation_id)
    outcome = next((e.payload for e in reversed(events) if e.type in OUTCOMES), {})
    return {
        "status": state.status if state is not None else "pending",
        "output": outcome.get("output"),
        "reason": outcome.get("reason"),
        "events": [
            {"type": e.type, "agent": e.agent, "task_id": e.task_id, "occurred_at": e.occurred_at.isoformat()}
            for e in events
        ],
    }
