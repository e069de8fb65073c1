"""Event store throughput: single appends, batched appends, projection rebuild and full replay.

    python -m bench.eventstore_bench [N_EVENTS]

prints events/s on SQLite (a temporary file) and PostgreSQL (a temporary schema in
``RELAYBUS_TEST_POSTGRES_URL``, default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``).
Targets (issue #3): >= 20,000 events/s batched, >= 50,000 events/s rebuild / replay, on both.

``rebuild`` is the workflow-status projection rebuilt from the log; ``replay`` reads every event in
full (``iter_all``) and folds it, as a dry run does; ``verify`` recomputes every hash. Each event
carries a secret to redact, so the append figures include the slow path of redaction.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import create_engine, text

from relaybus.eventstore import EventStore, NewEvent, fold, open_store

BATCH = 500
AGENTS = ("planner", "researcher", "writer", "critic")
TYPES = ("task.sent", "task.received", "task.started", "llm.completed", "task.succeeded")


def make_events(n: int, *, tag: str) -> list[NewEvent]:
    """Task-shaped events, 20 per workflow, with a payload of a few hundred bytes."""
    now = datetime.now(UTC)
    events = []
    for i in range(n):
        workflow = f"{tag}-wf-{i // 20}"
        task = f"{workflow}-t{(i % 20) // 5}"
        events.append(
            NewEvent(
                stream_id=workflow,
                type=TYPES[i % 5],
                task_id=task,
                agent=AGENTS[(i // 5) % 4],
                queue="agents.default",
                priority=5,
                attempt=1,
                worker_host="bench-host",
                occurred_at=now,
                payload={
                    "input": {"topic": f"topic {i}", "depth": 3, "notes": "x" * 120},
                    "output": {"summary": "lorem ipsum dolor sit amet " * 4, "score": i / 7},
                    "api_key": "sk-bench",
                },
                metadata={"trace_id": uuid.uuid4().hex},
            )
        )
    return events


def _rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else float("inf")


def _timed(action: Callable[[], Any]) -> tuple[Any, float]:
    result, wall, _ = _timed_cpu(action)
    return result, wall


def _timed_cpu(action: Callable[[], Any]) -> tuple[Any, float, float]:
    """``(result, wall seconds, CPU seconds of this process)``: on a shared machine the CPU figure
    shows what the client side costs when the wall figure is inflated by other work."""
    started, cpu = time.perf_counter(), time.process_time()
    result = action()
    return result, time.perf_counter() - started, time.process_time() - cpu


def measure(store: EventStore, n_events: int, *, tag: str) -> dict[str, float]:
    n_single = max(1, min(1000, n_events // 10))
    singles = make_events(n_single, tag=f"{tag}-single")
    batched = make_events(n_events, tag=f"{tag}-batch")

    def append_singles() -> None:
        for event in singles:
            store.append([event])

    def append_batches() -> None:
        for start in range(0, len(batched), BATCH):
            store.append(batched[start : start + BATCH])

    _, single_s = _timed(append_singles)
    _, batched_s, batched_cpu_s = _timed_cpu(append_batches)
    total = store.last_position()
    rebuilt, rebuild_s = _timed(store.projection.rebuild)
    replayed, replay_s = _timed(lambda: len(fold(store.iter_all())))
    report, verify_s = _timed(store.verify)
    assert report.ok and rebuilt >= total and replayed > 0
    return {
        "events": float(total),
        "single_append_eps": _rate(n_single, single_s),
        "batched_append_eps": _rate(n_events, batched_s),
        "batched_append_cpu_eps": _rate(n_events, batched_cpu_s),
        "rebuild_eps": _rate(rebuilt, rebuild_s),
        "replay_eps": _rate(report.events_checked, replay_s),
        "verify_eps": _rate(report.events_checked, verify_s),
    }


@contextmanager
def _temporary_schema(url: str) -> Iterator[str]:
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        yield schema
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def run(sqlite_url: str | None, postgres_url: str | None, n_events: int) -> dict[str, dict[str, float]]:
    """Measure on each database given (use an empty SQLite file; PostgreSQL gets a throwaway schema)."""
    results: dict[str, dict[str, float]] = {}
    if sqlite_url:
        store = open_store(sqlite_url)
        try:
            results["sqlite"] = measure(store, n_events, tag=uuid.uuid4().hex[:6])
        finally:
            store.close()
    if postgres_url:
        with _temporary_schema(postgres_url.replace("postgresql://", "postgresql+psycopg://", 1)) as schema:
            store = open_store(postgres_url, schema=schema, create=True)
            try:
                results["postgresql"] = measure(store, n_events, tag=uuid.uuid4().hex[:6])
            finally:
                store.close()
    return results


def main(argv: list[str]) -> None:
    n_events = int(argv[1]) if len(argv) > 1 else 50_000
    postgres_url = os.environ.get("RELAYBUS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    with tempfile.TemporaryDirectory() as directory:
        results = run(f"sqlite:///{directory}/bench.sqlite", postgres_url, n_events)
    metrics = [
        "events",
        "single_append_eps",
        "batched_append_eps",
        "batched_append_cpu_eps",
        "rebuild_eps",
        "replay_eps",
        "verify_eps",
    ]
    print(f"{'metric':<22}" + "".join(f"{name:>14}" for name in results))
    for metric in metrics:
        print(f"{metric:<22}" + "".join(f"{results[name][metric]:>14,.0f}" for name in results))


if __name__ == "__main__":
    main(sys.argv)
