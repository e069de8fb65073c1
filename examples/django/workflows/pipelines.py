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
from collections.abc import Mapping
from typing import Any

from celery import Celery
from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

import relaybus
from relaybus.eventstore import EventStore, open_store
from relaybus.eventstore.types import PIPELINE_OUTCOME_TYPES

#: The pipeline the site starts: relaybus's reference pipeline. Its input is ``{"request": ...}``.
PIPELINE = "research"


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


def start_workflow(
    input: Mapping[str, Any], correlation_id: str, priority: str = "normal", *, pipeline: str = PIPELINE
) -> relaybus.PipelineHandle:
    """Start ``pipeline`` with ``input`` under ``correlation_id`` (its pipeline id; ``priority``: urgent,
    high, normal, low). Raises ``relaybus.InvalidInput`` before anything is sent if the input does not
    validate, ``relaybus.TransientError`` (``BrokerUnreachable``, ``PublishTimeout``) if the broker did not take it.

    Called by the outbox (``workflows.outbox``) after the request's transaction committed, never inside it.
    Starting again under the same id runs the pipeline once: relaybus derives the entry task's id from
    the pipeline id, and a copy of an entry task that already ran does nothing.
    """
    return relaybus.start(pipeline, input, priority=priority, correlation_id=correlation_id, app=celery_app())


#: The statuses after which nothing more happens to a workflow (relaybus's words; ``succeeded`` is a
#: workflow of plain tasks without an outcome record, ``compensated`` a saga's).
FINISHED = frozenset({"completed", "failed", "timed_out", "compensated", "compensation_failed", "succeeded"})


def workflow_status(correlation_id: str) -> dict[str, Any]:
    """The pipeline's status, its outcome once it ended, and its steps and events, from the event log.

    The status is the one ``relaybus timeline`` and ``relaybus workflows list`` show: ``pending`` until the
    first record, then ``running``, then ``completed`` (with ``output``), ``failed`` (with ``reason``, which
    names the step that failed) or ``timed_out`` (no progress within its deadline; ``reason`` says since when).
    ``steps`` are the timeline's: each task's agent, status, attempts, queue wait and run time.
    """
    timeline = event_store().timeline(correlation_id)
    outcome: dict[str, Any] = next(
        (dict(e.payload) for e in reversed(timeline.events) if e.type in PIPELINE_OUTCOME_TYPES), {}
    )
    return {
        "status": timeline.workflow.status if timeline.workflow is not None else "pending",
        "output": outcome.get("output"),
        "reason": outcome.get("reason"),
        "steps": [
            {
                "task_id": step.task_id,
                "agent": step.agent,
                "status": step.status,
                "attempts": step.attempts,
                "queue_wait_s": step.queue_wait_s,
                "run_time_s": step.run_time_s,
                "started_at": step.started_at.isoformat() if step.started_at else None,
            }
            for step in timeline.steps
        ],
        "events": [
            {"type": e.type, "agent": e.agent, "task_id": e.task_id, "occurred_at": e.occurred_at.isoformat()}
            for e in timeline.events
        ],
    }
