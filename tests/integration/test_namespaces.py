"""Namespaces on one broker (and vhost) isolate everything: agent queues, and Celery's event and remote-control
exchanges, so Flower, ``inspect``/``ping``, mingle and gossip see only their own namespace's workers and tasks.
And ``relaybus demo`` on RabbitMQ removes every queue and exchange it declared."""

from __future__ import annotations

import shutil
import socket
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from relaybus.celery import topology_of
from relaybus.demo import run_demo
from tests.harness import Worker, make_app, make_settings, wait_for, workers
from tests.integration.flower import Flower

pytestmark = pytest.mark.integration


def test_two_namespaces_on_one_broker_see_only_their_own_workers_and_tasks(tmp_path: Path, broker_url, redis_url):
    settings_a = make_settings(tmp_path, broker_url, redis_url)
    settings_b = make_settings(tmp_path, broker_url, redis_url)
    app_a, app_b = make_app(settings_a), make_app(settings_b)
    for app in (app_a, app_b):
        with app.connection_for_write() as conn:
            topology_of(app).declare(conn)
    flower = Flower(settings_a, tmp_path)
    try:
        flower.wait_ready()
        # Both with mingle and gossip, as a deployment runs them: B starts once A is consuming.
        worker_a = Worker(settings_a, ("probe",), tmp_path, mingle_and_gossip=True).wait_ready(app_a)
        with workers(worker_a):
            worker_b = Worker(settings_b, ("probe",), tmp_path, mingle_and_gossip=True).wait_ready(app_b)
            with workers(worker_b):
                host = socket.gethostname()
                node_a, node_b = f"{worker_a.name}@{host}", f"{worker_b.name}@{host}"
                wait_for(lambda: "mingle: " in worker_b.log() and "ready." in worker_b.log(), 30, 0.1, "B's start")
                assert "mingle: all alone" in worker_b.log(), worker_b.log()[-2000:]

                def pinged(app: Any) -> set[str]:
                    return {node for reply in app.control.ping(timeout=1.0) for node in reply}

                assert pinged(app_a) == {node_a}
                assert pinged(app_b) == {node_b}

                # Flower (namespace A) is listening once it has A's worker alive; B's task runs first, so
                # had its events reached A's exchange, Flower would have them before A's own.
                wait_for(lambda: flower.get("/api/workers", status=1).get(node_a), 60, 0.5, "Flower to see A")
                task_b = app_b.tasks["agents.probe"].apply_async(kwargs={"key": f"ns:{uuid.uuid4().hex}"})
                assert task_b.get(timeout=60)["value"] == 1
                task_a = app_a.tasks["agents.probe"].apply_async(kwargs={"key": f"ns:{uuid.uuid4().hex}"})
                assert task_a.get(timeout=60)["value"] == 1

                def a_done() -> dict[str, Any] | None:
                    tasks: dict[str, Any] = flower.get("/api/tasks", limit=1000)
                    return tasks if tasks.get(task_a.id, {}).get("state") == "SUCCESS" else None

                tasks = wait_for(a_done, 60, 0.5, "Flower to show A's task as SUCCESS")
                assert task_b.id not in tasks
                assert set(flower.get("/api/workers", status=1)) == {node_a}
    finally:
        flower.stop()
        for app in (app_a, app_b):
            with app.connection_for_write() as conn:
                topology_of(app).delete(conn)
            app.close()


def _broker_names() -> set[str]:
    """Every queue and exchange on the broker, by name (``rabbitmqctl``: AMQP cannot list them)."""
    ctl = shutil.which("rabbitmqctl")
    assert ctl, "rabbitmqctl is needed to list the broker's queues and exchanges"
    names: set[str] = set()
    for kind in ("list_queues", "list_exchanges"):
        out = subprocess.run([ctl, "-q", kind, "name"], capture_output=True, text=True, timeout=60, check=True)
        names |= {f"{kind[5:-1]} {line.strip()}" for line in out.stdout.splitlines()[1:] if line.strip()}
    return names


def test_relaybus_demo_on_rabbitmq_leaves_no_queue_or_exchange_behind(tmp_path: Path, broker_url, redis_url):
    settings = make_settings(tmp_path, broker_url, redis_url, embedded_dir=str(tmp_path / "embedded"),
                             extra_modules=(), extra_agents=())
    before = _broker_names()
    for _ in range(2):
        result = run_demo(settings)
        assert (result.mode, result.status) == ("rabbitmq+redis", "completed")
    left = {name for name in _broker_names() - before if "demo" in name}
    assert left == set(), f"the demo left these behind: {sorted(left)}"
