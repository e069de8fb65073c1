"""``relaybus demo``: run the reference workflow through real worker processes and print what happened.

With RabbitMQ and Redis reachable at the configured URLs it uses them; otherwise it falls back to
the embedded default (kombu's filesystem broker, SQLite results and event log), which needs no
server at all.
"""

from __future__ import annotations

import socket
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict

from relaybus.celery import create_app, topology_of
from relaybus.settings import Settings, embedded
from relaybus.workers import WorkerProcess, worker_argv

DEFAULT_REQUEST = "How do dead-letter queues and sagas keep AI agent pipelines reliable?"


def reachable(url: str, default_port: int, timeout: float = 1.0) -> bool:
    parts = urlsplit(url)
    if not parts.hostname:
        return False
    try:
        with socket.create_connection((parts.hostname, parts.port or default_port), timeout=timeout):
            return True
    except OSError:
        return False


def choose_settings(settings: Settings, force_embedded: bool = False) -> tuple[Settings, str]:
    servers = (
        settings.broker_url.startswith("amqp")
        and reachable(settings.broker_url, 5672)
        and settings.result_backend.startswith("redis")
        and reachable(settings.result_backend, 6379)
    )
    if servers and not force_embedded:
        return settings, "rabbitmq+redis"
    return embedded(settings), "embedded"


class DemoResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    mode: str
    correlation_id: str
    status: str
    output: dict[str, Any]
    seconds: float
    timeline: list[dict[str, Any]]
    saga: dict[str, Any] | None = None


def run_demo(settings: Settings, request: str = DEFAULT_REQUEST, *, force_embedded: bool = False,
             timeout: float = 120.0) -> DemoResult:
    settings, mode = choose_settings(settings, force_embedded)
    settings = settings.model_copy(update={"namespace": f"demo{uuid.uuid4().hex[:6]}"})
    app = create_app(settings)
    app.loader.import_default_modules()
    app.set_current()
    topology = topology_of(app)
    with app.connection_for_write() as conn:
        topology.declare(conn)
    from relaybus.tasks.bus.bus import declare_subscriptions
    from relaybus.tasks.pipelines.client import start

    declare_subscriptions(app)
    log = Path(settings.embedded_dir).resolve() / "demo-worker.log"
    worker = WorkerProcess(worker_argv(topology, None, concurrency=2), settings, log)
    started = time.monotonic()
    try:
        if not worker.wait_log("ready.", timeout=60):
            raise RuntimeError(f"the demo worker did not start; see {log}")
        handle = start("research", {"request": request, "max_topics": 3}, app=app)
        outcome = handle.wait(timeout)
        seconds = time.monotonic() - started
        output = outcome.model_dump(mode="json")
        timeline = _timeline(settings, handle.id)
        saga = _compensating_saga(app, settings, request, timeout)
    finally:
        worker.stop()
        if mode != "embedded":  # the embedded broker's folder is the user's to keep or remove
            with app.connection_for_write() as conn:
                topology.delete(conn)
    return DemoResult(mode=mode, correlation_id=handle.id, status=outcome.status, output=output, seconds=seconds,
                      timeline=timeline, saga=saga)


def _compensating_saga(app: Any, settings: Settings, topic: str, timeout: float) -> dict[str, Any]:
    """The seed's content-creation saga with publishing made to fail: the review is cancelled and the
    draft discarded, newest first, and the research (read-only) is left alone."""
    from relaybus.tasks.agents.content_store import engine_for, live_items, set_fault
    from relaybus.tasks.saga import start_saga, wait_for_saga

    saga_id = f"demo-{uuid.uuid4().hex[:12]}"
    content = engine_for(settings.eventstore_url)
    set_fault(content, "step:publishing", saga_id=saga_id, error="permanent")
    start_saga("content_creation", {"topic": topic}, saga_id=saga_id, app=app)
    view = wait_for_saga(saga_id, timeout, app=app)
    return {
        "saga_id": saga_id,
        "status": view.status,
        "history": [
            {"type": h.type, "step": h.step} for h in view.history if h.type != "saga.started"
        ],
        "live_side_effects": len(live_items(content, saga_id)),
        "seconds": round(view.duration_s or 0.0, 3),
    }


def _timeline(settings: Settings, correlation_id: str) -> list[dict[str, Any]]:
    """One row per step of the workflow, from the event log: agent, status, queue wait, run time."""
    from relaybus.eventstore import open_store

    store = open_store(settings.eventstore_url)
    try:
        return [
            {"agent": s.agent, "task_id": s.task_id, "status": s.status, "attempts": s.attempts,
             "queue_wait_ms": None if s.queue_wait_s is None else round(s.queue_wait_s * 1000, 1),
             "run_ms": None if s.run_time_s is None else round(s.run_time_s * 1000, 1)}
            for s in store.timeline(correlation_id).steps
        ]
    finally:
        store.close()
