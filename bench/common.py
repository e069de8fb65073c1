"""Shared pieces of the benchmarks: settings, worker processes, timing and statistics."""

from __future__ import annotations

import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from celery import Celery

from relaybus.celery import create_app, topology_of
from relaybus.settings import Settings
from relaybus.workers import WorkerProcess

ROOT = Path(__file__).resolve().parents[1]
BENCH_AGENTS = ("bench_noop",)


def bench_settings(tmp: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "namespace": f"bench{uuid.uuid4().hex[:6]}",
        "eventstore_url": f"sqlite:///{tmp / 'events.sqlite'}",
        "extra_modules": ("bench.agents",),
        "extra_agents": BENCH_AGENTS,
    }
    values.update(overrides)
    return Settings(**values)


def make_app(settings: Settings) -> Celery:
    app = create_app(settings)
    app.loader.import_default_modules()
    app.set_current()
    with app.connection_for_write() as conn:
        topology_of(app).declare(conn)
    return app


def start_worker(
    settings: Settings,
    queues: list[str],
    log: Path,
    concurrency: int = 2,
    pool: str = "prefork",
    app_module: str = "relaybus",
    extra: tuple[str, ...] = (),
) -> WorkerProcess:
    """``celery -A app_module worker`` on ``queues`` (relaybus's app, or a baseline's: bench.plain_app)."""
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        app_module,
        "worker",
        "-Q",
        ",".join(queues),
        "-c",
        str(concurrency),
        "-P",
        pool,
        "-l",
        "WARNING",
        "--without-mingle",
        "--without-gossip",
        "-n",
        f"bench{uuid.uuid4().hex[:6]}@%h",
        *extra,
    ]
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    worker = WorkerProcess(argv, settings, log, cwd=ROOT)
    return worker


def wait_consuming(app: Celery, queues: list[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ok = True
        with app.connection_for_read() as conn:
            for q in queues:
                try:
                    _, _, consumers = conn.default_channel.queue_declare(queue=q, passive=True)
                except Exception:
                    consumers = 0
                ok = ok and consumers > 0
        if ok:
            return
        time.sleep(0.1)
    raise RuntimeError(f"no worker consumed {queues} within {timeout}s")


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def delete_namespace(app: Celery) -> None:
    with app.connection_for_write() as conn:
        topology_of(app).delete(conn)
