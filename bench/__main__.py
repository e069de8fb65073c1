"""``python -m bench [--quick] [--only NAME,...]``: run the benchmarks, print a table, write JSON."""

from __future__ import annotations

import argparse
import json
import platform
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).resolve().parent / "results"


def _throughput(quick: bool) -> tuple[dict[str, Any], list[list[str]]]:
    from bench.throughput import run

    r = run(n=500 if quick else 2000, rounds=1 if quick else 3)
    rows = [
        ["task throughput", "plain Celery task (baseline)", f"{r['plain']['consume_per_s']:.0f} tasks/s",
         f"publish {r['plain']['publish_per_s']:.0f}/s", "1.00"],
        ["task throughput", "agent task, recording off", f"{r['agent']['consume_per_s']:.0f} tasks/s",
         f"publish {r['agent']['publish_per_s']:.0f}/s", f"{r['agent']['consume_ratio_vs_plain']:.2f} (target ≥ 0.9)"],
        ["task throughput", "agent task, full recording", f"{r['agent+recording']['consume_per_s']:.0f} tasks/s",
         f"publish {r['agent+recording']['publish_per_s']:.0f}/s",
         f"{r['recording_ratio']:.2f} vs recording off (target ≥ 0.8)"],
    ]
    return r, rows


BENCHMARKS = {"throughput": _throughput}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="smaller runs (a smoke test of the benchmarks)")
    parser.add_argument("--only", default="", help="comma-separated benchmark names: " + ", ".join(BENCHMARKS))
    args = parser.parse_args()
    chosen = [b.strip() for b in args.only.split(",") if b.strip()] or list(BENCHMARKS)
    console = Console()
    table = Table(title="relaybus benchmarks")
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
