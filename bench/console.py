"""The console's pages on a big log: the workflow list with each filter, the agents page and ``/metrics``.

    python -m bench.console [--size 1000000] [--only sqlite|postgresql] [--reuse URL [--schema S]]

Fills a log as :mod:`bench.scale` does (pipelines of 60 events over 30 days, one in ten with a saga),
rebuilds the status projection, and renders each page through the real Starlette app (templates
included) in-process, the median of 5 runs after a warm one, in milliseconds. AMQP is left out (the
queue gauges of ``/metrics`` are what ``relaybus status`` costs): the figures are the log's part.
``--reuse`` measures an existing log instead (its projection is brought up to date, not rebuilt).
``python -m bench.scale`` times the projection's queries behind these pages alone (the "workflows list" rows).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.scale import SPAN, _database, fill
from relaybus.eventstore import EventStore, open_store

TOKEN = "bench-console-token"


def pages(store: EventStore) -> dict[str, str]:
    """The URLs to time, on rows that exist: a time range of one day in the middle of the log, a name."""
    newest = store.projection.workflows(limit=1)
    mid = store.projection.workflows(before_position=store.last_position() // 2, limit=1)
    day = (mid[0].first_event_at if mid else datetime.now(UTC)).replace(tzinfo=None)
    since, until = day.strftime("%Y-%m-%dT%H:%M"), (day + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    name = next(iter(store.projection.names()), "research")
    older = mid[0].last_position if mid else 1
    yesterday = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    return {
        "workflows (first page)": "/workflows",
        "workflows ?status=failed": "/workflows?status=failed",
        f"workflows ?name={name}": f"/workflows?name={name}",
        "workflows ?name=<none such>": "/workflows?name=nothing-by-that-name",
        "workflows ?since&until (1 day, mid-log)": f"/workflows?since={since}&until={until}",
        "workflows ?since (last day)": f"/workflows?since={yesterday}",
        "workflows status+name+range": f"/workflows?status=completed&name={name}&since={since}&until={until}",
        "workflows ?q=<correlation id>": f"/workflows?q={newest[0].correlation_id if newest else 'none'}",
        "workflows older page (?before=mid)": f"/workflows?before={older}",
        "agents (1 h)": "/agents?hours=1",
        "agents (24 h)": "/agents?hours=24",
        "metrics": "/metrics",
        "integrity": "/integrity",
    }


def measure(store: EventStore, runs: int = 5) -> dict[str, float]:
    from starlette.testclient import TestClient

    from relaybus.celery import app
    from relaybus.web import WebAuth, create_web_app

    web = create_web_app(app, store, WebAuth(token=TOKEN))
    web.state.console.queues = lambda: []  # the log's part only (see the module's docstring)
    timed: dict[str, float] = {}
    with TestClient(web, headers={"authorization": f"Bearer {TOKEN}"}) as client:
        for label, url in pages(store).items():
            times = []
            for i in range(runs + 1):
                started = time.perf_counter()
                response = client.get(url)
                elapsed = (time.perf_counter() - started) * 1000
                assert response.status_code == 200, (url, response.status_code, response.text[:300])
                if i:  # the first warms plans and caches
                    times.append(elapsed)
            timed[label] = round(statistics.median(times), 1)
    return timed


def run(kind: str, size: int) -> dict[str, Any]:
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="console-bench-") as tmp, _database(kind, Path(tmp), "big") as store:
        fill_s = fill(store, size, seed=1, start=now - SPAN - timedelta(hours=1))
        started = time.perf_counter()
        store.projection.rebuild()
        return {"events": store.last_position(), "fill_s": round(fill_s, 1),
                "rebuild_s": round(time.perf_counter() - started, 1), "pages_ms": measure(store)}


def report(kind: str, result: dict[str, Any]) -> None:
    print(f"\n{kind} at {result['events']:,} events: pages rendered (median of 5, ms)")
    for label, ms in result["pages_ms"].items():
        print(f"  {label:<48}{ms:>9.1f} ms{'   <-- over 200 ms' if ms > 200 else ''}")


def main(argv: list[str]) -> None:
    args = dict(a.split("=", 1) if "=" in a else (a, "") for a in argv[1:])
    if "--reuse" in args:
        schema = args.get("--schema") or None
        store = open_store(args["--reuse"], schema=schema) if schema else open_store(args["--reuse"])
        try:
            store.projection.catch_up()
            report(args["--reuse"].split(":", 1)[0], {"events": store.last_position(), "pages_ms": measure(store)})
        finally:
            store.close()
        return
    size = int(args.get("--size") or 1_000_000)
    kinds = (args["--only"],) if args.get("--only") else ("sqlite", "postgresql")
    for kind in kinds:
        report(kind, run(kind, size))


if __name__ == "__main__":
    main(sys.argv)
