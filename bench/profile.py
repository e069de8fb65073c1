"""``python -m bench.profile [VARIANT ...] [--n N]``: where a worker's time goes, per throughput variant or saga.

Runs :func:`bench.throughput._one` (or, for ``saga+sqlite`` and ``saga+postgresql``, ``n`` success and ``n``
compensated sagas of :mod:`bench.saga_bench`) with cProfile in every pool process and in the worker's main
thread (``RELAYBUS_BENCH_PROFILE``), then prints the top functions by own time, pool processes merged.
"""

from __future__ import annotations

import argparse
import os
import pstats
import tempfile
import time
from pathlib import Path


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


def main() -> None:
    from bench.throughput import VARIANTS, _one

    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("variants", nargs="*", default=["agent+sqlite"], help=", ".join([*VARIANTS, *SAGA_VARIANTS]))
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--keep", type=Path, help="keep the .prof files under this folder")
    args = parser.parse_args()
    for variant in args.variants:
        with tempfile.TemporaryDirectory() as tmp:
            prof = (args.keep / variant.replace("+", "_")) if args.keep else Path(tmp) / "prof"
            os.environ["RELAYBUS_BENCH_PROFILE"] = str(prof)
            try:
                if variant in SAGA_VARIANTS:
                    figures = _saga(variant, args.n, Path(tmp))
                else:
                    figures = _one(variant, args.n, Path(tmp),
                                   os.environ.get("RELAYBUS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
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
