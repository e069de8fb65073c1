"""A running relaybus for a whole test module: one namespace, its subscriptions, a few real workers.

Starting workers costs seconds, so modules whose tests do not disturb each other share one set
(module-scoped fixture); each test still isolates itself by correlation id and Redis keys.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from celery import Celery

from relaybus.settings import Settings
from relaybus.tasks.bus.bus import declare_subscriptions, event_queue_name, subscribers
from tests.harness import TEST_AGENTS, Worker, consumer_count, delete_namespace, make_app, make_settings, wait_for
from tests.subscribers import SUBSCRIBER_AGENTS

TEST_MODULES = ("tests.agents", "tests.subscribers")


@dataclass
class System:
    settings: Settings
    app: Celery
    workers: list[Worker] = field(default_factory=list)

    @property
    def namespace(self) -> str:
        return self.settings.namespace

    def logs(self) -> str:
        return "\n".join(f"--- {w.name}\n{w.log()[-3000:]}" for w in self.workers)


def system_settings(tmp: Path, broker_url: str, redis_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "extra_modules": TEST_MODULES,
        "extra_agents": TEST_AGENTS + SUBSCRIBER_AGENTS,
        "record_events": True,
    }
    values.update(overrides)
    return make_settings(tmp, broker_url, redis_url, **values)


@contextmanager
def running_system(
    settings: Settings, tmp: Path, layout: list[tuple[tuple[str, ...], int]]
) -> Iterator[System]:
    """Declare the namespace and its subscriptions, start one worker per ``(agents, concurrency)``."""
    app = make_app(settings)
    system = System(settings, app)
    try:
        with app.connection_for_write() as conn:
            app.conf.relaybus_topology.declare(conn)
        declare_subscriptions(app)
        for agents, concurrency in layout:
            system.workers.append(Worker(settings, agents, tmp, concurrency=concurrency))
        for worker in system.workers:
            worker.wait_ready(app)
        served = [s for s in subscribers() if any(s in w.agents for w in system.workers)]
        for queue in [event_queue_name(settings.namespace, s) for s in served]:
            wait_for(partial(_consumed, app, queue), 30, what=f"a consumer on {queue}")
        yield system
    finally:
        for worker in system.workers:
            worker.stop()
        delete_namespace(app)
        app.close()


def _consumed(app: Celery, queue: str) -> bool:
    return consumer_count(app, queue) > 0



#: The agents that run the reference pipeline, its event subscribers and the content saga's steps.
REFERENCE_AGENTS = ("system", "intake", "planner", "researcher", "writer", "reviewer", "publisher", "auditor")


def completed_pipeline_and_compensated_saga(system: System, label: str) -> tuple[str, str]:
    """Run a research pipeline to ``completed`` and the content saga, its publishing step made to fail, to
    ``compensated``; their ids (the pipeline's correlation id, the saga's id)."""
    from relaybus.tasks.agents.content_store import engine_for, set_fault
    from relaybus.tasks.pipelines.client import start
    from relaybus.tasks.saga import start_saga, wait_for_saga

    handle = start("research", {"request": f"what {label} should show of a workflow", "max_topics": 2},
                   app=system.app)
    saga_id = f"{label}-{uuid.uuid4().hex[:12]}"
    set_fault(engine_for(system.settings.eventstore_url), "step:publishing", saga_id=saga_id, error="permanent")
    start_saga("content_creation", {"topic": label}, saga_id=saga_id, app=system.app)
    assert handle.wait(90).status == "completed", system.logs()
    assert wait_for_saga(saga_id, 90, app=system.app).status == "compensated", system.logs()
    return handle.id, saga_id


def task_ids_of(system: System, correlation_ids: list[str], record: str = "task.succeeded") -> dict[str, set[str]]:
    """Per workflow, the ids of its tasks that have a ``record`` in the event log."""
    from relaybus.eventstore import open_store

    store = open_store(system.settings.eventstore_url)
    try:
        return {c: {e.task_id for e in store.by_correlation(c) if e.task_id and e.type == record}
                for c in correlation_ids}
    finally:
        store.close()
