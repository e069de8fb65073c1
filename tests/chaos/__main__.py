"""``python -m tests.chaos [--long] [pytest args...]``: run the chaos suite and print its figures.

The short version is what CI runs with the rest of the suite; ``--long`` runs the long one (200+
pipelines and sagas under the kill loop, more restarts). The figures go to the terminal and, as JSON,
to ``bench/results/chaos-<short|long>.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str]) -> int:
    long = "--long" in argv
    rest = [a for a in argv if a != "--long"]
    version = "long" if long else "short"
    report = ROOT / "bench" / "results" / f"chaos-{version}.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "RELAYBUS_CHAOS": version, "RELAYBUS_CHAOS_REPORT": str(report)}
    cmd = [sys.executable, "-m", "pytest", "tests/chaos", "-p", "no:cacheprovider", "-o", "addopts=-ra", *rest]
    code = subprocess.call(cmd, cwd=ROOT, env=env)
    if report.exists():
        rows = json.loads(report.read_text())
        print(f"\nchaos figures ({version}), written to {report.relative_to(ROOT)}:")
        for key in (
            "workflows",
            "workers_killed",
            "pool_children_killed",
            "host_writers_killed",
            "service_restarts",
            "events_checked",
            "tasks_checked",
            "duplicates",
            "missing_transitions",
        ):
            print(f"  {key.replace('_', ' '):<22} {sum(int(r[key]) for r in rows)}")
    return code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
