"""Agent-task throughput against plain Celery on the same broker, machine and run.

Variants (``VARIANTS``):

* ``celery-defaults``: plain Celery as a user would pick it instead (bench.plain_app: early ack, prefetch 4,
  no confirms, no results, no events);
* ``celery-guarantees``: plain Celery with the delivery guarantees relaybus gives (late ack, prefetch 1,
  confirms, persistent, results in Redis, task events for Flower);
* ``agent``: a relaybus agent task, event log off;
* ``agent+sqlite`` / ``agent+postgres``: the same with every transition recorded in the event log;
* ``.../group``: recording with group commit (a host writer for prefork, a writer thread for threads).

Each variant fills its queue with ``n`` tasks, then a worker starts and drains it; the consume rate runs from
the first task's mark to the last one's. Variants run in a rotating order over several rounds (the machine
is shared: only ratios from one run mean anything); the median is reported.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import create_engine, text

from bench.common import bench_settings, delete_namespace, make_app, median, start_worker, wait_consuming
from relaybus.eventstore import open_store
from relaybus.workers import WorkerProcess

VARIANTS = ("celery-defaults", "celery-guarantees", "agent", "agent+sqlite", "agent+postgres")
#: The recording variants with group commit (RELAYBUS_GROUP_COMMIT, off by default), to show its effect.
GROUPED = ("agent+sqlite/group", "agent+postgres/group")
POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _postgres_schema() -> tuple[str, str]:
    """A fresh schema with the event log's tables: (its name, the event-store URL that uses it)."""
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    with create_engine(POSTGRES).begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    open_store(POSTGRES, schema=schema, create=True).close()
    return schema, f"{POSTGRES}?options=-csearch_path%3D{schema}"


def _drop_schema(schema: str) -> None:
    engine = create_engine(POSTGRES)
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


def _plain_worker(mode: str, settings: Any, queue: str, log: Path, concurrency: int, pool: str) -> WorkerProcess:
    """A worker of the plain-Celery baseline in ``mode`` (bench.plain_app reads it from the environment)."""
    import os

    os.environ["RELAYBUS_BENCH_PLAIN"] = mode
    try:
        extra = ("-E",) if mode == "guarantees" else ()
        return start_worker(settings, [queue], log, concurrency, pool, app_module="bench.plain_app", extra=extra)
    finally:
        os.environ.pop("RELAYBUS_BENCH_PLAIN", None)


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and its live descendants (pool, host writer)."""
    import os

    tick = os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except (OSError, IndexError, ValueError):
            continue
    return total


def _one(
    variant: str,
    n: int,
    tmp: Path,
    redis_url: str,
    work_ms: float = 0.0,
    concurrency: int = 2,
    pool: str = "prefork",
) -> dict[str, float]:
    schema = None
    grouped = variant.endswith("/group")
    variant_ = variant.removesuffix("/group")
    overrides: dict[str, Any] = {
        "record_events": variant_ in ("agent+sqlite", "agent+postgres"),
        "group_commit": grouped,
    }
    if variant_ == "agent+postgres":
        schema, overrides["eventstore_url"] = _postgres_schema()
    settings = bench_settings(tmp, **overrides)
    app = make_app(settings)
    r = redis.Redis.from_url(redis_url)
    key = f"bench:{uuid.uuid4().hex}"
    plain = variant.startswith("celery-")
    queue = f"{settings.namespace}.{'plain' if plain else 'bench_noop'}"
    log = tmp / f"{variant.replace('/', '_')}.log"
    plain_app = None
    try:
        if plain:
            from bench.plain_app import create

            plain_app = create(variant.removeprefix("celery-"), settings.broker_url)
            with plain_app.connection_for_write() as conn:
                from kombu import Queue

                Queue(queue, durable=True).bind(conn.default_channel).declare()
            task = plain_app.tasks["bench.plain_baseline"]
            started = time.perf_counter()
            for i in range(n):
                task.apply_async(kwargs={"key": key, "n": i, "work_ms": work_ms}, queue=queue)
            publish_s = time.perf_counter() - started
            worker = _plain_worker(variant.removeprefix("celery-"), settings, queue, log, concurrency, pool)
        else:
            task = app.tasks["agents.bench_noop"]
            started = time.perf_counter()
            for i in range(n):
                task.apply_async(kwargs={"key": key, "n": i, "work_ms": work_ms})
            publish_s = time.perf_counter() - started
            worker = start_worker(settings, [queue], log, concurrency=concurrency, pool=pool)
        try:
            wait_consuming(app, [queue])
            idle_cpu_s = _tree_cpu_s(worker.proc.pid)  # start-up, not the tasks
            deadline = time.monotonic() + 300
            while int(r.get(f"{key}:count") or 0) < n:
                if time.monotonic() > deadline or not worker.alive():
                    raise RuntimeError(
                        f"{variant}: only {r.get(f'{key}:count')} of {n} tasks ran; see {worker.log_path}"
                    )
                time.sleep(0.05)
            first, last = float(r.get(f"{key}:first") or 0), float(r.get(f"{key}:last") or 0)
            cpu_s = _tree_cpu_s(worker.proc.pid) - idle_cpu_s
        finally:
            worker.stop()
        return {
            "publish_per_s": n / publish_s,
            "consume_per_s": (n - 1) / max(last - first, 1e-9),
            # What the worker's processes spent per task: steadier than a rate on a shared machine.
            "worker_cpu_ms_per_task": 1000 * cpu_s / n,
        }
    finally:
        for suffix in ("first", "last", "count"):
            r.delete(f"{key}:{suffix}")
        if plain_app is not None:
            with plain_app.connection_for_write() as conn:
                conn.default_channel.queue_delete(queue)
            plain_app.close()
        delete_namespace(app)
        app.close()
        if schema:
            _drop_schema(schema)


def _rounds(variants: tuple[str, ...], rounds: int, tmp: Path, redis_url: str, **kw: Any) -> dict[str, Any]:
    """Every variant ``rounds`` times, in a rotating order; the medians and every sample."""
    samples: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    for round_no in range(rounds):
        order = variants[round_no % len(variants) :] + variants[: round_no % len(variants)]
        for variant in order:
            samples[variant].append(
                _one(
                    variant,
                    kw["n"],
                    tmp / f"r{round_no}{uuid.uuid4().hex[:4]}",
                    redis_url,
                    **{k: v for k, v in kw.items() if k != "n"},
                )
            )
    out: dict[str, Any] = {}
    for variant in variants:
        out[variant] = {
            "publish_per_s": median([s["publish_per_s"] for s in samples[variant]]),
            "consume_per_s": median([s["consume_per_s"] for s in samples[variant]]),
            "worker_cpu_ms_per_task": median([s["worker_cpu_ms_per_task"] for s in samples[variant]]),
            "samples": samples[variant],
        }
    guarantees, defaults = out["celery-guarantees"]["consume_per_s"], out["celery-defaults"]["consume_per_s"]
    for variant in variants:
        out[variant]["vs_celery_guarantees"] = out[variant]["consume_per_s"] / guarantees
        out[variant]["vs_celery_defaults"] = out[variant]["consume_per_s"] / defaults
    return out


def run(
    n: int = 2000,
    rounds: int = 3,
    redis_url: str = "redis://127.0.0.1:6379/0",
    concurrencies: tuple[int, ...] = (1, 2, 4),
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        result: dict[str, Any] = {"n": n, "rounds": rounds, "pool": "prefork"}
        result["noop"] = _rounds((*VARIANTS, *GROUPED), rounds, tmp, redis_url, n=n)
        # Tasks with 20 ms of work, closer to an agent's (an LLM call takes longer still).
        result["work_20ms"] = _rounds(VARIANTS, max(1, rounds - 1), tmp, redis_url, n=max(200, n // 5), work_ms=20.0)
        # I/O-bound agents (an LLM call waits on the network) on a pool of threads: group commit in-process.
        result["threads_20ms"] = _rounds(
            (*VARIANTS, *GROUPED),
            max(1, rounds - 1),
            tmp,
            redis_url,
            n=max(400, n // 2),
            work_ms=20.0,
            concurrency=8,
            pool="threads",
        )
        # Concurrency: the recording path against plain Celery with the same guarantees.
        result["concurrency"] = {
            str(c): _rounds(
                ("celery-defaults", "celery-guarantees", "agent+sqlite", "agent+postgres"),
                1,
                tmp,
                redis_url,
                n=max(500, n // 2),
                concurrency=c,
            )
            for c in concurrencies
        }
    return result
