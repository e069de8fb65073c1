"""The site's side of relaybus: one Celery app built from Django settings, start a workflow, read its status.

The Celery app is built from ``settings.RELAYBUS`` (``project.celery.create_app(Settings(...))``), not
from a module-level import of ``project.celery.app``: tests and other deployments can then give the
site their own broker, namespace and event store with ``override_settings(RELAYBUS=...)``, without
touching ``os.environ``. The site never imports agent code; it sends tasks by name.
"""

from __future__ import annotations

import functools
from typing import Any

from celery import Celery
from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from relaybus.celery import create_app
from relaybus.eventstore import EventStore, fold, open_store
from relaybus.settings import PriorityClass, Settings
from relaybus.tasks.runtime.context import workflow_context

#: The first step of the reference pipeline. Its input is ``{"request": ...}``.
FIRST_TASK = "agents.intake"


@functools.cache
def relaybus_settings() -> Settings:
    return Settings(**settings.RELAYBUS)


@functools.cache
def celery_app() -> Celery:
    return create_app(relaybus_settings())


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


def start_workflow(request: str, correlation_id: str, priority: PriorityClass = "normal") -> None:
    """Publish a workflow. Call it from ``transaction.on_commit``, never inside the transaction."""
    # With the pipeline client (tasks.pipelines.client) this one line becomes:
    #   client.start("research", {"request": request}, priority=priority, correlation_id=correlation_id,
    #                app=celery_app())
    _send_first_task(request, correlation_id, priority)


def _send_first_task(request: str, correlation_id: str, priority: PriorityClass) -> None:
    app = celery_app()
    # Every message published inside the block, and every task those tasks publish, carries this
    # correlation id: it is how the event log groups the workflow's events.
    with workflow_context(correlation_id):
        app.send_task(FIRST_TASK, kwargs={"request": request}, priority=relaybus_settings().priority(priority))


def workflow_status(correlation_id: str) -> dict[str, Any]:
    """The workflow's status and events, from the event log (the source of truth, never Redis).

    ``pending`` until the first event is recorded; then the event store's own fold decides
    (``running``, ``succeeded``, ``failed``, ``completed``, ``compensated``...).
    """
    events = event_store().by_correlation(correlation_id)
    state = fold(events).get(correlation_id)
    return {
        "status": state.status if state is not None else "pending",
        "events": [
            {"type": e.type, "agent": e.agent, "task_id": e.task_id, "occurred_at": e.occurred_at.isoformat()}
            for e in events
        ],
    }
