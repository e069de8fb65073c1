"""Benchmark: the reference pipeline end to end, and one event hop, through real workers.

::

    python -m bench.pipeline_bench [--pipelines 50] [--hops 300] [--no-record]

needs RabbitMQ and Redis (the ``RELAYBUS_*`` settings). It runs in a namespace of its own, with
two worker processes (researchers on one, every other agent on the other, concurrency 2 each) and
the offline LLM provider, so the figures measure relaybus, not a model.

* **end-to-end latency, alone**: ten pipelines one after another (N=3 researchers each), from
  ``start()`` to the outcome stored in the result backend (its ``date_done``);
* **pipelines/s and end-to-end latency under load**: ``n`` pipelines started at once.
* **event hop**: ``publish()`` in this process to the first line of a subscriber's handler in a
  worker, one event at a time (unloaded), measured by the handler.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from celery import Celery

from bench.common import delete_namespace
from bench.subscribers import BENCH_AGENT, BenchPing
from relaybus.celery import create_app, topology_of
from relaybus.settings import Settings, get_settings
from relaybus.tasks.agents.pipeline_models import ResearchRequest
from relaybus.tasks.bus.bus import declare_subscriptions, event_queue_name, publish, subscribers
from relaybus.tasks.pipelines.client import PipelineHandle, start
from relaybus.workers import WorkerProcess, worker_argv

ROOT = Path(__file__).resolve().parents[1]
REQUEST = "Compare retries, sagas and chords for reliable agent pipelines"
PIPELINE_AGENTS = ["system", "intake", "planner", "writer", "reviewer", "publisher", BENCH_AGENT]


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100), nearest-rank."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def _consumers(app: Celery, queue: str) -> int:
    with app.connection_for_read() as conn:
        try:
            return int(conn.default_channel.queue_declare(queue=queue, passive=True)[2])
        except Exception:
            return 0


def _wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.002)


def _done_at(app: Celery, pipeline_id: str) -> float:
    meta = app.backend.get_task_meta(pipeline_id)
    done = meta.get("date_done")
    if isinstance(done, str):
        done = datetime.fromisoformat(done)
    return float(done.timestamp()) if isinstance(done, datetime) else time.time()


def _pipelines(app: Celery, n: int, topics: int) -> dict[str, float]:
    started: list[tuple[float, PipelineHandle]] = []
    first = time.time()
    for i in range(n):
        request = ResearchRequest(request=f"{REQUEST} (run {i})", max_topics=topics)
        started.append((time.time(), start("research", request, app=app)))
    latencies = []
    last = first
    for t0, handle in started:
        outcome = handle.wait(timeout=300, interval=0.01)
        if outcome.status != "completed":
            raise RuntimeError(f"pipeline {handle.id} failed: {outcome.reason}")
        done = _done_at(app, handle.id)
        latencies.append((done - t0) * 1000)
        last = max(last, done)
    return {
        "pipelines": n,
        "pipelines_per_s": n / (last - first),
        "e2e_p50_ms": percentile(latencies, 50),
        "e2e_p95_ms": percentile(latencies, 95),
    }


def _one_at_a_time(app: Celery, n: int, topics: int) -> dict[str, float]:
    latencies = []
    for i in range(n):
        t0 = time.time()
        handle = start("research", ResearchRequest(request=f"{REQUEST} (alone {i})", max_topics=topics), app=app)
        handle.wait(timeout=60, interval=0.005)
        latencies.append((_done_at(app, handle.id) - t0) * 1000)
    return {"alone_p50_ms": percentile(latencies, 50), "alone_p95_ms": percentile(latencies, 95)}


def _hops(app: Celery, n: int) -> dict[str, float]:
    key = f"bench:hops:{uuid.uuid4().hex}"
    client = app.backend.client
    for seq in range(n):
        publish(BenchPing(key=key, seq=seq, sent_at=time.time()), app=app)
        _wait(lambda s=seq: client.llen(key) > s, 30, f"hop {seq}")
    latencies = [json.loads(x)["latency_ms"] for x in client.lrange(key, 0, -1)]
    client.delete(key)
    return {"hops": n, "hop_p50_ms": percentile(latencies, 50), "hop_p99_ms": percentile(latencies, 99)}


def run(settings: Settings, n_pipelines: int, *, n_hops: int = 300, topics: int = 3) -> dict[str, Any]:
    """Start workers in a fresh namespace, measure, stop them; returns the figures."""
    workdir = Path(tempfile.mkdtemp(prefix="relaybus-bench-"))
    settings = settings.model_copy(
        update={
            "namespace": f"bench{uuid.uuid4().hex[:8]}",
            "extra_modules": (*settings.extra_modules, "bench.subscribers"),
            "extra_agents": (*settings.extra_agents, BENCH_AGENT),
            "llm_provider": "offline",
            "eventstore_url": settings.eventstore_url
            if not settings.eventstore_url.startswith("sqlite")
            else f"sqlite:///{workdir / 'events.sqlite'}",
        }
    )
    app = create_app(settings)
    app.loader.import_default_modules()
    app.set_current()
    topology = topology_of(app)
    with app.connection_for_write() as conn:
        topology.declare(conn)
    declare_subscriptions(app)
    workers = [
        WorkerProcess(
            worker_argv(topology, agents, concurrency=2, hostname=f"{name}@%h", loglevel="WARNING"),
            settings,
            workdir / f"{name}.log",
            cwd=ROOT,
        )
        for name, agents in (("agents", PIPELINE_AGENTS), ("researchers", ["researcher"]))
    ]
    try:
        queues = [topology.queue_name(a) for a in [*PIPELINE_AGENTS, "researcher"]]
        queues += [event_queue_name(settings.namespace, s) for s in subscribers()]
        for queue in queues:
            _wait(lambda q=queue: _consumers(app, q) > 0, 60, f"a consumer on {queue}")
        _pipelines(app, 3, topics)  # warm up: imports, connections, the SQLite schema
        figures: dict[str, Any] = {"record_events": settings.record_events, "researchers": topics}
        figures.update(_one_at_a_time(app, 10, topics))
        figures.update(_pipelines(app, n_pipelines, topics))
        figures.update(_hops(app, n_hops))
        return figures
    finally:
        for worker in workers:
            worker.stop()
        delete_namespace(app)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipelines", type=int, default=50)
    parser.add_argument("--hops", type=int, default=300)
    parser.add_argument("--no-record", action="store_true", help="only with the event log switched off")
    args = parser.parse_args()
    base = get_settings()
    modes = [False] if args.no_record else [True, False]
    rows = [
        run(base.model_copy(update={"record_events": record}), args.pipelines, n_hops=args.hops) for record in modes
    ]
    header = (
        "event log",
        "alone p50 ms",
        "alone p95 ms",
        "pipelines",
        "pipelines/s",
        "e2e p50 ms",
        "e2e p95 ms",
        "hops",
        "hop p50 ms",
        "hop p99 ms",
    )
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    for row in rows:
        print(
            " | ".join(
                [
                    "on" if row["record_events"] else "off",
                    f"{row['alone_p50_ms']:.0f}",
                    f"{row['alone_p95_ms']:.0f}",
                    str(row["pipelines"]),
                    f"{row['pipelines_per_s']:.1f}",
                    f"{row['e2e_p50_ms']:.0f}",
                    f"{row['e2e_p95_ms']:.0f}",
                    str(row["hops"]),
                    f"{row['hop_p50_ms']:.1f}",
                    f"{row['hop_p99_ms']:.1f}",
                ]
            )
        )
    print(
        "\n2 worker processes (researchers | every other agent), prefork concurrency 2 each; offline LLM;"
        f" {rows[0]['researchers']} researchers per pipeline; all pipelines started at once; hops one at a time."
    )


if __name__ == "__main__":
    main()
