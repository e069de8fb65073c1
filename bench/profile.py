"""``python -m bench.profile [VARIANT ...] [--n N] [--sampler py-spy]``: where a worker's time goes, per throughput
variant or saga.

Runs :func:`bench.throughput._one` (or, for ``saga+sqlite`` and ``saga+postgresql``, ``n`` success and ``n``
compensated sagas of :mod:`bench.saga_bench`) with cProfile in every pool process and in the worker's main
thread (``RELAYBUS_BENCH_PROFILE``), then prints the top functions by own time, pool processes merged.

cProfile charges its own overhead to each call: functions called very often look costlier than they are.
``--sampler py-spy`` samples every process under the benchmark instead (``pip install py-spy``; attaching needs
ptrace rights, root or ``kernel.yama.ptrace_scope=0``) and prints shares of the samples that ran
(:mod:`bench.sampling`), by function and by package, per role: the pool processes, the workers, the driver.
"""

from __future__ import annotations

import argparse
import os
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def top(paths: list[Path], limit: int) -> list[tuple[str, int, float, float]]:
    """The ``limit`` functions with the most own time: (function, calls, own s, cumulative s)."""
    if not paths:
        return []
    stats = pstats.Stats(*[str(p) for p in paths])
    rows = []
    for (file, line, name), (_cc, calls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        short = "/".join(Path(file).parts[-2:])
        rows.append((f"{short}:{line}({name})", calls, tottime, cumtime))
    rows.sort(key=lambda r: r[2], reverse=True)
    return rows[:limit]


SAGA_VARIANTS = ("saga+sqlite", "saga+postgresql")


def _saga(variant: str, n: int, workdir: Path) -> dict[str, float]:
    """``n`` success then ``n`` compensated sagas of the saga benchmark, started back to back; the rate."""
    from bench.saga_bench import PG_URL, relaybus_variant
    from relaybus.settings import get_settings

    postgres = PG_URL if variant == "saga+postgresql" else None
    with relaybus_variant(variant.replace("+", "_"), get_settings(), workdir, postgres) as relaybus:
        relaybus.round(3, 2)  # warm up
        began = time.perf_counter()
        relaybus.loaded(n, fail=False)
        relaybus.loaded(n, fail=True)
        return {"consume_per_s": 2 * n / (time.perf_counter() - began)}


def sampled(run: Callable[[], dict[str, Any]], out: Path, rate: int) -> dict[str, Any]:
    """``run()`` with py-spy sampling this process and every process it starts, into ``out`` (raw format)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        raise SystemExit("py-spy is not installed: pip install py-spy")
    recorder = subprocess.Popen(
        [spy, "record", "--pid", str(os.getpid()), "--subprocesses", "--nonblocking", "--rate", str(rate),
         "--format", "raw", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    time.sleep(1.0)  # attached before the benchmark starts its processes
    try:
        return run()
    finally:
        recorder.send_signal(signal.SIGINT)
        _, errors = recorder.communicate(timeout=60)
        if not out.exists():
            raise SystemExit(f"py-spy wrote nothing: {errors.decode(errors='replace').strip()[-500:]}")


def main() -> None:
    from bench.sampling import read, report
    from bench.throughput import VARIANTS, _one

    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("variants", nargs="*", default=["agent+sqlite"], help=", ".join([*VARIANTS, *SAGA_VARIANTS]))
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--keep", type=Path, help="keep the .prof files (or py-spy's raw samples) under this folder")
    parser.add_argument("--sampler", choices=("cprofile", "py-spy"), default="cprofile")
    parser.add_argument("--rate", type=int, default=200, help="py-spy's samples a second")
    args = parser.parse_args()
    for variant in args.variants:
        with tempfile.TemporaryDirectory() as tmp:
            prof = (args.keep / variant.replace("+", "_")) if args.keep else Path(tmp) / "prof"

            def run(variant: str = variant, tmp: str = tmp) -> dict[str, Any]:
                if variant in SAGA_VARIANTS:
                    return _saga(variant, args.n, Path(tmp))
                return _one(variant, args.n, Path(tmp),
                            os.environ.get("RELAYBUS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))

            if args.sampler == "py-spy":
                prof.mkdir(parents=True, exist_ok=True)
                raw = prof / "samples.txt"
                figures = sampled(run, raw, args.rate)
                print(f"\n== {variant}: {figures['consume_per_s']:.0f} tasks/s (sampled by py-spy)")
                with raw.open() as lines:
                    print(report(read(lines), args.top))
                continue
            os.environ["RELAYBUS_BENCH_PROFILE"] = str(prof)
            try:
                figures = run()
            finally:
                os.environ.pop("RELAYBUS_BENCH_PROFILE", None)
            print(f"\n== {variant}: {figures['consume_per_s']:.0f} tasks/s")
            for role in ("child", "main"):
                paths = sorted(prof.glob(f"{role}-*.prof"))
                total = sum(pstats.Stats(str(p)).total_tt for p in paths) if paths else 0.0  # type: ignore[attr-defined]
                print(f"-- {role} ({len(paths)} process(es), {total:.2f} s profiled)")
                for name, calls, own, cum in top(paths, args.top):
                    print(f"{own:8.3f} {cum:8.3f} {calls:9d}  {name}")


if __name__ == "__main__":
    main()
