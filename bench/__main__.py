"""``python -m bench [--quick] [--only NAME,...]``: run the benchmarks, print a table, write JSON."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.peers import ensure_peers

RESULTS = Path(__file__).resolve().parent / "results"


def _throughput(quick: bool) -> tuple[dict[str, Any], list[list[str]]]:
    from bench.throughput import GROUPED, VARIANTS, run

    r = run(n=500 if quick else 2000, rounds=1 if quick else 3, concurrencies=(2,) if quick else (1, 2, 4))
    labels = {
        "celery-defaults": "plain Celery, defaults (early ack, prefetch 4)",
        "celery-guarantees": "plain Celery, relaybus's guarantees",
        "agent": "agent task, recording off",
        "agent+sqlite": "agent task, full recording, SQLite",
        "agent+postgres": "agent task, full recording, PostgreSQL",
        "agent+sqlite/group": "  same, SQLite, with group commit",
        "agent+postgres/group": "  same, PostgreSQL, with group commit",
    }
    targets = {"agent+sqlite": 0.9, "agent+postgres": 0.8}
    rows = []
    parts = (
        ("noop", "no-op tasks", None),
        ("work_20ms", "tasks with 20 ms of work", 0.97),
        ("threads_20ms", "20 ms of work, -P threads -c 8", None),
    )
    for part, title, target_20 in parts:
        for variant in (*VARIANTS, *GROUPED):
            f = r.get(part, {}).get(variant)
            if f is None:
                continue
            target = target_20 if target_20 and variant.startswith("agent+") and "/" not in variant else None
            target = target or (targets.get(variant) if part == "noop" else None)
            rows.append(
                [
                    f"throughput, {title}",
                    labels[variant],
                    f"{f['consume_per_s']:.0f} tasks/s",
                    f"worker CPU {f['worker_cpu_ms_per_task']:.2f} ms/task",
                    f"{f['vs_celery_guarantees']:.2f} / {f['vs_celery_defaults']:.2f}"
                    + (f" (target ≥ {target})" if target else ""),
                ]
            )
    for c, figures in r["concurrency"].items():
        for variant, f in figures.items():
            if variant.startswith("agent"):
                rows.append(
                    [
                        f"throughput, -c {c}",
                        labels[variant],
                        f"{f['consume_per_s']:.0f} tasks/s",
                        f"plain Celery (guarantees) {figures['celery-guarantees']['consume_per_s']:.0f}/s",
                        f"{f['vs_celery_guarantees']:.2f} / {f['vs_celery_defaults']:.2f}",
                    ]
                )
    return r, rows


def _priority(quick: bool) -> tuple[dict[str, Any], list[list[str]]]:
    from bench.priority import run

    r = run(backlog=1000 if quick else 5000)
    return r, [
        [
            "priority under load",
            f"urgent task behind {r['backlog']} normal",
            f"waited {r['urgent_wait_s']:.3f} s",
            f"normal waited {r['normal_wait_s']:.2f} s",
            f"{r['urgent_to_normal_wait_ratio']:.4f} of normal's wait",
        ],
    ]


def _eventstore(quick: bool) -> tuple[dict[str, Any], list[list[str]]]:
    from bench.eventstore_bench import run

    r = run(quick)
    rows = []
    labels = {"single": "single append", "batch100": "batch 100", "batch500": "batch 500", "replay": "replay"}
    for db in ("sqlite", "postgresql"):
        ours, theirs = r["stores"].get(f"relaybus_{db}"), r["stores"].get(f"eventsourcing_{db}")
        if not ours or not theirs:
            continue
        for metric, label in labels.items():
            ratio = r["ratios"][f"store_vs_eventsourcing_{db}_{metric}"]
            target = "≥ 0.8" if metric == "single" else "≥ 1.0"
            rows.append(
                [
                    "event store vs eventsourcing",
                    f"{db}, {label}",
                    f"{ours[metric]:,.0f} events/s",
                    f"eventsourcing {theirs[metric]:,.0f}/s",
                    f"{ratio:.2f} (target {target})",
                ]
            )
        rows.append(
            [
                "replay / rebuild",
                f"{db}, projection rebuild / verify",
                f"{ours['rebuild']:,.0f} events/s",
                f"verify {ours['verify']:,.0f}/s",
                "target ≥ 100,000",
            ]
        )
        keyed = r["stores"].get(f"relaybus_{db}_keyed")
        if keyed:
            for metric in ("single", "batch100", "batch500", "verify"):
                rows.append(
                    [
                        "chain key cost (keyed / unkeyed)",
                        f"{db}, {labels.get(metric, metric)}",
                        f"{keyed[metric]:,.0f} events/s keyed",
                        f"unkeyed {ours[metric]:,.0f}/s",
                        f"{r['ratios'][f'keyed_vs_unkeyed_{db}_{metric}']:.2f} (target ≥ 0.90)",
                    ]
                )
    return r, rows


def _scale(quick: bool) -> tuple[dict[str, Any], list[list[str]]]:
    from bench.scale import run

    r = run(quick)
    rows = []
    for db, sizes in r["databases"].items():
        for size, f in sizes.items():
            slowest = max(f["queries_ms"].items(), key=lambda kv: kv[1])
            rows.append(
                [
                    "event store at scale",
                    f"{db}, {int(size):,} events in the log",
                    f"append {f['append_eps']:,.0f} events/s",
                    f"slowest query {slowest[0]} {slowest[1]:.1f} ms",
                    f"{f['append_vs_empty']:.2f} of empty (target ≥ 0.8), queries target < 50 ms",
                ]
            )
    return r, rows


def _pipeline(quick: bool) -> tuple[dict[str, Any], list[list[str]]]:
    from bench.pipeline_bench import run
    from relaybus.settings import get_settings

    base = get_settings()
    n = 20 if quick else 50
    results = {
        mode: run(base.model_copy(update={"record_events": mode == "on"}), n, n_hops=100 if quick else 300)
        for mode in ("off", "on")
    }
    rows = []
    for mode, r in results.items():
        rows.append(
            [
                "reference pipeline",
                f"event log {mode}, {r['researchers']} researchers",
                f"{r['pipelines_per_s']:.1f} pipelines/s",
                f"alone p50 {r['alone_p50_ms']:.0f} ms / p95 {r['alone_p95_ms']:.0f} ms",
                "",
            ]
        )
        rows.append(
            [
                "event hop",
                f"event log {mode}",
                f"p50 {r['hop_p50_ms']:.1f} ms",
                f"p99 {r['hop_p99_ms']:.1f} ms",
                "target p50 < 10, p99 < 50",
            ]
        )
    return results, rows


def _sagas(quick: bool) -> tuple[dict[str, Any], list[list[str]]]:
    from bench.saga_bench import run

    r = run(20 if quick else 50, alone=10 if quick else 20, rounds=2 if quick else 4)
    rows = []
    labels = {
        "relaybus_sqlite": "relaybus, SQLite log",
        "relaybus_postgresql": "relaybus, PostgreSQL log",
        "celery_saga_defaults": "celery-saga 0.1.1, defaults",
        "celery_saga_matched": "celery-saga 0.1.1, matched guarantees",
    }
    for name, f in r["figures"].items():
        against = r["ratios"].get(name, {}).get("vs_matched", {})
        ratio = (
            f"vs celery-saga matched: {against['saga_vs_celery_saga_success_sagas_per_s']:.2f}x sagas/s, "
            f"{against['saga_vs_celery_saga_failure_to_compensated_p50_ms']:.2f}x failure→compensated p50, "
            f"{against['saga_vs_celery_saga_starts_per_s']:.2f}x starts/s"
            if against
            else ""
        )
        rows.append(
            [
                "saga, 4 no-op steps",
                labels.get(name, name),
                f"{f['success_sagas_per_s']:.1f} sagas/s, compensated {f['failure_sagas_per_s']:.1f}/s",
                f"alone p50/p95 {f['success_p50_ms']:.0f}/{f['success_p95_ms']:.0f} ms, failure→compensated "
                f"{f['failure_to_compensated_p50_ms']:.0f}/{f['failure_to_compensated_p95_ms']:.0f} ms, "
                f"starts {f['starts_per_s']:.0f}/s",
                ratio,
            ]
        )
    return r, rows


def _ratelimit(quick: bool) -> tuple[dict[str, Any], list[list[str]]]:
    from bench.ratelimit_bench import run

    r = run(calls=500 if quick else 2000, rounds=1 if quick else 3)
    rows = [["LLM call, global rate limit", "limiter off (offline provider)", f"{r['off_us']:.0f} µs/call", "", ""]]
    for window, f in r["on"].items():
        rows.append(
            [
                "LLM call, global rate limit",
                f"limiter on, Redis on localhost, {window} calls in the window",
                f"{f['on_us']:.0f} µs/call",
                f"overhead {f['overhead_us']:.0f} µs/call (2 Lua scripts)",
                "",
            ]
        )
    return r, rows


def _claimcheck(quick: bool) -> tuple[dict[str, Any], list[list[str]]]:
    from bench.claimcheck_bench import run

    r = run(messages=5000 if quick else 20_000, rounds=1 if quick else 3)
    rows = [
        ["task message, claim check", "off", f"{r['off_us']:.1f} µs/message", "", ""],
        [
            "task message, claim check",
            "on, nothing over 32 KB (a 1 KB input, a chain of 2)",
            f"{r['on_us']:.1f} µs/message",
            f"overhead {r['on_us'] - r['off_us']:.1f} µs/message",
            "",
        ],
    ]
    for db, f in r["large"].items():
        rows.append(
            [
                "large payload by reference",
                f"{f['mb']:.0f} MB document, {db}",
                f"store {f['put_ms']:.0f} ms, read back {f['get_ms']:.0f} ms",
                "redact, SHA-256, insert once",
                "",
            ]
        )
    return r, rows


def _server_append(quick: bool) -> tuple[dict[str, Any], list[list[str]]]:
    from bench.server_append import run

    r = run(n=300 if quick else 1000, rounds=2 if quick else 4)
    rows = []
    for variant, label in (("function", "one round trip (migration 0012)"), ("client", "client path, two round trips")):
        f = r[variant]
        rows.append(
            [
                "PostgreSQL append of a task's records",
                label,
                f"{f['wall_ms']:.2f} ms/append",
                f"client CPU {f['client_cpu_ms']:.2f} ms, server CPU {f['server_cpu_ms']:.2f} ms",
                f"{r['function_vs_client']['wall_ms']:.2f} wall" if variant == "function" else "",
            ]
        )
    return r, rows


BENCHMARKS = {
    "throughput": _throughput,
    "priority": _priority,
    "eventstore": _eventstore,
    "scale": _scale,
    "pipeline": _pipeline,
    "sagas": _sagas,
    "ratelimit": _ratelimit,
    "claimcheck": _claimcheck,
    "server_append": _server_append,
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="smaller runs (a smoke test of the benchmarks)")
    parser.add_argument("--only", default="", help="comma-separated benchmark names: " + ", ".join(BENCHMARKS))
    args = parser.parse_args()
    chosen = [b.strip() for b in args.only.split(",") if b.strip()] or list(BENCHMARKS)
    if {"eventstore", "sagas"} & set(chosen):
        ensure_peers()
    console = Console(width=200)
    table = Table(title="relaybus benchmarks")
    # ratio: against plain Celery with relaybus's guarantees / with its defaults, where not said otherwise.
    for column in ("benchmark", "variant", "result", "detail", "ratio"):
        table.add_column(column)
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "quick": args.quick,
        "results": {},
    }
    for name in chosen:
        started = time.perf_counter()
        console.print(f"running {name} …")
        result, rows = BENCHMARKS[name](args.quick)
        result["seconds"] = round(time.perf_counter() - started, 1)
        report["results"][name] = result
        for row in rows:
            table.add_row(*row)
    console.print(table)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "latest.json"
    out.write_text(json.dumps(report, indent=2, default=str))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
