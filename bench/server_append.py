"""``python -m bench.server_append [--n N] [--rounds R]``: PostgreSQL's one-round-trip append against the client path.

Two fresh schemas, one with migration 0012's ``eventstore_append_v1`` and one with it dropped (where a store appends
the way it did before: two round trips, six statements). Each round appends ``n`` no-op tasks' records to each
(``task.sent`` stored first, as its publisher does, then ``append_new`` of the copy with ``task.received``,
``task.started`` and ``task.succeeded``, as a pool process does), the two alternated, and reports per append: wall
time, the client's CPU and the server's (the backends' CPU from ``/proc``, so the server must run on this
machine). Medians over the rounds; the schemas are dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import create_engine, text

from bench.throughput import POSTGRES, _drop_schema, _postgres_schema
from relaybus.eventstore import EventStore, NewEvent, open_store
from relaybus.eventstore._serverappend import FUNCTION, SIGNATURE

_LIBPQ = "host=127.0.0.1 port=5432 user=postgres dbname=test"


def _task_records(tag: str) -> list[NewEvent]:
    now = datetime.now(UTC)
    common: dict[str, Any] = {
        "stream_id": f"wf-{tag}", "task_id": str(uuid.uuid4()), "agent": "bench_noop", "queue": "relaybus.bench_noop",
        "priority": 5, "attempt": 1, "worker_host": "bench-host", "occurred_at": now,
        "metadata": {"celery_task": "agents.bench_noop", "retries": 0},
    }  # fmt: skip
    return [
        NewEvent(type=kind, payload={"redelivered": False, "n": tag}, **common)
        for kind in ("task.sent", "task.received", "task.started", "task.succeeded")
    ]


def _server_cpu_s() -> float:
    """The CPU time of every client backend but the one asking."""
    with psycopg.connect(_LIBPQ, autocommit=True) as conn:
        pids = [row[0] for row in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )]  # fmt: skip
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _round(store: EventStore, n: int, tag: str) -> dict[str, float]:
    batches = [_task_records(f"{tag}-{i}") for i in range(n)]
    for batch in batches:
        store.append([batch[0]])  # the publisher's task.sent
    server, cpu, wall = _server_cpu_s(), time.process_time(), time.perf_counter()
    for batch in batches:
        store.append_new(batch)
    return {
        "wall_ms": 1000 * (time.perf_counter() - wall) / n,
        "client_cpu_ms": 1000 * (time.process_time() - cpu) / n,
        "server_cpu_ms": 1000 * (_server_cpu_s() - server) / n,
    }


def run(n: int = 1000, rounds: int = 4) -> dict[str, Any]:
    schemas: dict[str, str] = {}
    stores: dict[str, EventStore] = {}
    try:
        for variant in ("function", "client"):
            schema, url = _postgres_schema()
            schemas[variant] = schema
            if variant == "client":
                with create_engine(POSTGRES).begin() as conn:
                    conn.execute(text(f'DROP FUNCTION "{schema}".{FUNCTION}({SIGNATURE})'))
            stores[variant] = open_store(url)
        samples: dict[str, list[dict[str, float]]] = {variant: [] for variant in stores}
        for round_no in range(rounds):
            order = ("function", "client") if round_no % 2 == 0 else ("client", "function")
            for variant in order:
                samples[variant].append(_round(stores[variant], n, f"{variant}-{round_no}"))
        result: dict[str, Any] = {
            variant: {key: statistics.median(s[key] for s in runs) for key in runs[0]} | {"samples": runs}
            for variant, runs in samples.items()
        }
        keys = ("wall_ms", "client_cpu_ms", "server_cpu_ms")
        result["function_vs_client"] = {key: result["function"][key] / result["client"][key] for key in keys}
        return result
    finally:
        for store in stores.values():
            store.close()
        for schema in schemas.values():
            _drop_schema(schema)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.server_append")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    result = run(args.n, args.rounds)
    print("variant     wall ms   client CPU ms   server CPU ms   (per append of a no-op task's records)")
    for variant in ("function", "client", "function_vs_client"):
        r = result[variant]
        print(f"{variant:20s} {r['wall_ms']:7.3f} {r['client_cpu_ms']:14.3f} {r['server_cpu_ms']:15.3f}")
    print(json.dumps({k: v for k, v in result.items() if k == "function_vs_client"}))


if __name__ == "__main__":
    main()
