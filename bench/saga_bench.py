"""Benchmark: the reference content saga (4 steps) through real workers.

::

    python -m bench.saga_bench [--sagas 50] [--alone 20] [--postgres URL] [--no-record]

needs RabbitMQ and Redis (the ``RELAYBUS_*`` settings), and PostgreSQL with ``--postgres`` (the
event store and the side-effect tables in a schema of their own; SQLite in a temporary file
otherwise). It runs in a namespace of its own with two worker processes, the saga agents
(researcher, writer, reviewer, publisher; concurrency 2) and the system queue (the orchestration
tasks; concurrency 2), and the offline LLM, so the figures measure relaybus, not a model.

* **alone**: sagas one after another. Success: ``saga.started`` to ``saga.completed``. Compensation
  (publishing fails, so the review is cancelled and the draft discarded): from the moment the
  publisher raised (its fault row) to ``saga.compensated``, and the whole saga.
* **under load**: ``n`` sagas started at once; sagas per second from the first start to the last end.

Times come from the event log's ``occurred_at`` and the fault table, all written on this machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from celery import Celery
from pydantic import JsonValue
from sqlalchemy import create_engine, text

from bench.common import delete_namespace
from relaybus.celery import create_app, topology_of
from relaybus.eventstore import open_store
from relaybus.sagas import SagaView
from relaybus.settings import Settings, get_settings
from relaybus.tasks.agents.content_store import engine_for, saga_runs, set_fault
from relaybus.tasks.saga import start_saga, wait_for_saga
from relaybus.workers import WorkerProcess, worker_argv

ROOT = Path(__file__).resolve().parents[1]
AGENTS = ["researcher", "writer", "reviewer", "publisher"]
BRIEF: dict[str, JsonValue] = {"topic": "How do sagas compensate on Celery?"}


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
        time.sleep(0.01)


def _start(app: Celery, engine: Any, *, fail: bool) -> str:
    saga_id = f"b-{uuid.uuid4().hex[:16]}"
    if fail:
        set_fault(engine, "step:publishing", saga_id=saga_id, error="permanent")
    start_saga("content_creation", BRIEF, saga_id=saga_id, app=app)
    return saga_id


def _failed_at(engine: Any, saga_id: str) -> datetime:
    (row,) = [r for r in saga_runs(engine, saga_id) if r["name"] == "step:publishing" and r["outcome"] == "fault"]
    at: datetime = row["at"]
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)  # SQLite keeps UTC without the zone


def _ms(start: datetime, end: datetime | None) -> float:
    assert end is not None
    return (end - start).total_seconds() * 1000


def _alone(app: Celery, engine: Any, count: int, *, fail: bool) -> dict[str, float]:
    totals, recoveries = [], []
    for _ in range(count):
        view = wait_for_saga(_start(app, engine, fail=fail), 60, interval=0.005, app=app)
        assert view.status == ("compensated" if fail else "completed"), view.status
        totals.append(_ms(view.started_at, view.ended_at))
        if fail:
            recoveries.append(_ms(_failed_at(engine, view.saga_id), view.ended_at))
    figures = {"saga_p50_ms": percentile(totals, 50), "saga_p95_ms": percentile(totals, 95)}
    if fail:
        figures |= {
            "failure_to_compensated_p50_ms": percentile(recoveries, 50),
            "failure_to_compensated_p95_ms": percentile(recoveries, 95),
        }
    return figures


def _loaded(app: Celery, engine: Any, n: int, *, fail: bool) -> dict[str, float]:
    ids = [_start(app, engine, fail=fail) for _ in range(n)]
    views: list[SagaView] = [wait_for_saga(i, 300, interval=0.02, app=app) for i in ids]
    assert all(v.status == ("compensated" if fail else "completed") for v in views)
    first = min(v.started_at for v in views)
    last = max(v.ended_at for v in views if v.ended_at is not None)
    figures = {
        "sagas": n,
        "sagas_per_s": n / (last - first).total_seconds(),
        "loaded_saga_p50_ms": percentile([_ms(v.started_at, v.ended_at) for v in views], 50),
        "loaded_saga_p95_ms": percentile([_ms(v.started_at, v.ended_at) for v in views], 95),
    }
    if fail:
        recoveries = [_ms(_failed_at(engine, v.saga_id), v.ended_at) for v in views]
        figures |= {
            "loaded_failure_to_compensated_p50_ms": percentile(recoveries, 50),
            "loaded_failure_to_compensated_p95_ms": percentile(recoveries, 95),
        }
    return figures


def run(
    n: int = 50,
    *,
    alone: int = 20,
    postgres: str | None = None,
    record_events: bool = True,
    base: Settings | None = None,
) -> dict[str, Any]:
    """Start workers in a fresh namespace (and schema), measure, stop them; returns the figures."""
    workdir = Path(tempfile.mkdtemp(prefix="relaybus-saga-bench-"))
    schema = f"bench_{uuid.uuid4().hex[:8]}" if postgres else None
    if postgres and schema:
        admin = create_engine(postgres)
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        open_store(postgres, schema=schema, create=True).close()
        url = f"{postgres}?options=-csearch_path%3D{schema}"
    else:
        url = f"sqlite:///{workdir / 'events.sqlite'}"
    settings = (base or get_settings()).model_copy(
        update={
            "namespace": f"bench{uuid.uuid4().hex[:8]}",
            "eventstore_url": url,
            "record_events": record_events,
            "llm_provider": "offline",
        }
    )
    app = create_app(settings)
    app.loader.import_default_modules()
    app.set_current()
    topology = topology_of(app)
    with app.connection_for_write() as conn:
        topology.declare(conn)
    workers = [
        WorkerProcess(
            worker_argv(topology, agents, concurrency=2, hostname=f"{name}@%h", loglevel="WARNING"),
            settings,
            workdir / f"{name}.log",
            cwd=ROOT,
        )
        for name, agents in (("agents", AGENTS), ("system", ["system"]))
    ]
    engine = engine_for(url)
    try:
        for agent in [*AGENTS, "system"]:
            queue = topology.queue_name(agent)
            _wait(lambda q=queue: _consumers(app, q) > 0, 60, f"a consumer on {queue}")
        for fail in (False, True):  # warm up: imports, connections, tables
            _alone(app, engine, 3, fail=fail)
        figures: dict[str, Any] = {"store": "postgresql" if postgres else "sqlite", "record_events": record_events}
        figures["success"] = _alone(app, engine, alone, fail=False) | _loaded(app, engine, n, fail=False)
        figures["compensation"] = _alone(app, engine, alone, fail=True) | _loaded(app, engine, n, fail=True)
        return figures
    finally:
        for worker in workers:
            worker.stop()
        delete_namespace(app)
        engine.dispose()
        if postgres and schema:
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sagas", type=int, default=50, help="sagas started at once, per path")
    parser.add_argument("--alone", type=int, default=20, help="sagas run one after another, per path")
    parser.add_argument("--postgres", default=None, help="a PostgreSQL URL for the event store and side effects")
    parser.add_argument("--no-record", action="store_true", help="task events off (saga events are always kept)")
    args = parser.parse_args()
    r = run(args.sagas, alone=args.alone, postgres=args.postgres, record_events=not args.no_record)
    print(f"store: {r['store']}   task events recorded: {r['record_events']}")
    header = (
        "path",
        "alone p50 ms",
        "alone p95 ms",
        "failure→compensated p50 ms",
        "p95 ms",
        "sagas at once",
        "sagas/s",
        "loaded p50 ms",
        "loaded p95 ms",
        "loaded failure→compensated p50 / p95 ms",
    )
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    for path in ("success", "compensation"):
        f = r[path]
        recovery = (
            (f"{f['failure_to_compensated_p50_ms']:.0f}", f"{f['failure_to_compensated_p95_ms']:.0f}")
            if path == "compensation"
            else ("-", "-")
        )
        loaded_recovery = (
            (f"{f['loaded_failure_to_compensated_p50_ms']:.0f} / {f['loaded_failure_to_compensated_p95_ms']:.0f}")
            if path == "compensation"
            else "-"
        )
        print(
            " | ".join(
                [
                    path,
                    f"{f['saga_p50_ms']:.0f}",
                    f"{f['saga_p95_ms']:.0f}",
                    *recovery,
                    str(f["sagas"]),
                    f"{f['sagas_per_s']:.1f}",
                    f"{f['loaded_saga_p50_ms']:.0f}",
                    f"{f['loaded_saga_p95_ms']:.0f}",
                    loaded_recovery,
                ]
            )
        )


if __name__ == "__main__":
    main()
