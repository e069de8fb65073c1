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

from celery import chain
from pydantic import BaseModel, ConfigDict

from project.celery import create_app, topology_of
from project.settings import Settings, embedded
from project.workers import WorkerProcess, worker_argv
from tasks.context import workflow_context

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
    output: dict[str, Any]
    seconds: float
    timeline: list[dict[str, Any]]


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
    log = Path(settings.embedded_dir).resolve() / "demo-worker.log"
    worker = WorkerProcess(worker_argv(topology, None, concurrency=2), settings, log)
    started = time.monotonic()
    try:
        if not worker.wait_log("ready.", timeout=60):
            raise RuntimeError(f"the demo worker did not start; see {log}")
        with workflow_context() as correlation_id:
            workflow = chain(
                app.signature("agents.intake", kwargs={"request": request, "max_topics": 3}),
                app.signature("agents.planner"),
            )
            output = workflow.apply_async().get(timeout=timeout)
        seconds = time.monotonic() - started
        timeline = _timeline(settings, correlation_id)
    finally:
        worker.stop()
        if mode != "embedded":
            _delete_queues(app)
    return DemoResult(mode=mode, correlation_id=correlation_id, output=output, seconds=seconds, timeline=timeline)


def _timeline(settings: Settings, correlation_id: str) -> list[dict[str, Any]]:
    if not settings.record_events:
        return []
    try:
        from eventstore import open_store
    except ImportError:
        return []
    store = open_store(settings.eventstore_url)
    try:
        return [
            {"position": e.position, "type": e.type, "agent": e.agent, "at": e.occurred_at.isoformat()}
            for e in store.by_correlation(correlation_id)
        ]
    finally:
        store.close()


def _delete_queues(app: Any) -> None:
    topology = topology_of(app)
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        for queue in topology.all_queues():
            try:
                channel.queue_delete(queue.name)
            except Exception:
                channel = conn.default_channel
