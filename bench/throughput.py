"""Agent-task throughput against plain Celery tasks on the same broker and worker settings.

Each variant fills its queue with ``n`` tasks (the publish rate includes the caller's validation),
then a worker (prefork, 2 processes) starts and drains it; the consume rate runs from the first
task's mark to the last one's. Variants run in a rotating order over several rounds; the median
is reported.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis

from bench.common import bench_settings, delete_namespace, make_app, median, start_worker, wait_consuming

VARIANTS = ("plain", "agent", "agent+recording")


def _one(variant: str, n: int, tmp: Path, redis_url: str, work_ms: float = 0.0) -> dict[str, float]:
    settings = bench_settings(tmp, record_events=(variant == "agent+recording"))
    app = make_app(settings)
    r = redis.Redis.from_url(redis_url)
    key = f"bench:{uuid.uuid4().hex}"
    queue = f"{settings.namespace}.{'bench_plain' if variant == 'plain' else 'bench_noop'}"
    try:
        started = time.perf_counter()
        if variant == "plain":
            task = app.tasks["bench.plain"]
            for i in range(n):
                task.apply_async(kwargs={"key": key, "n": i, "work_ms": work_ms}, queue=queue)
        else:
            task = app.tasks["agents.bench_noop"]
            for i in range(n):
                task.apply_async(kwargs={"key": key, "n": i, "work_ms": work_ms})
        publish_s = time.perf_counter() - started
        worker = start_worker(settings, [queue], tmp / f"{variant}.log")
        try:
            wait_consuming(app, [queue])
            deadline = time.monotonic() + 300
            while int(r.get(f"{key}:count") or 0) < n:
                if time.monotonic() > deadline or not worker.alive():
                    raise RuntimeError(
                        f"{variant}: only {r.get(f'{key}:count')} of {n} tasks ran; see {worker.log_path}"
                    )
                time.sleep(0.05)
            first, last = float(r.get(f"{key}:first") or 0), float(r.get(f"{key}:last") or 0)
        finally:
            worker.stop()
        return {"publish_per_s": n / publish_s, "consume_per_s": (n - 1) / max(last - first, 1e-9)}
    finally:
        for suffix in ("first", "last", "count"):
            r.delete(f"{key}:{suffix}")
        delete_namespace(app)
        app.close()


def run(n: int = 2000, rounds: int = 3, redis_url: str = "redis://127.0.0.1:6379/0") -> dict[str, Any]:
    samples: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for round_no in range(rounds):
            order = VARIANTS[round_no % len(VARIANTS) :] + VARIANTS[: round_no % len(VARIANTS)]
            for variant in order:
                samples[variant].append(_one(variant, n, Path(tmp) / f"r{round_no}", redis_url))
    result: dict[str, Any] = {"n": n, "rounds": rounds}
    for variant in VARIANTS:
        result[variant] = {
            "publish_per_s": median([s["publish_per_s"] for s in samples[variant]]),
            "consume_per_s": median([s["consume_per_s"] for s in samples[variant]]),
            "samples": samples[variant],
        }
    plain = result["plain"]
    for variant in ("agent", "agent+recording"):
        result[variant]["publish_ratio_vs_plain"] = result[variant]["publish_per_s"] / plain["publish_per_s"]
        result[variant]["consume_ratio_vs_plain"] = result[variant]["consume_per_s"] / plain["consume_per_s"]
    result["recording_ratio"] = result["agent+recording"]["consume_per_s"] / result["agent"]["consume_per_s"]
    # The same comparison for tasks that do 20 ms of work, closer to an agent's (an LLM call takes longer).
    with tempfile.TemporaryDirectory() as tmp:
        working = {
            v: _one(v, max(200, n // 5), Path(tmp) / v.replace("+", "_"), redis_url, work_ms=20.0)
            for v in ("plain", "agent", "agent+recording")
        }
    result["work_20ms"] = working
    result["work_20ms"]["agent_ratio_vs_plain"] = working["agent"]["consume_per_s"] / working["plain"]["consume_per_s"]
    result["work_20ms"]["recording_ratio"] = (
        working["agent+recording"]["consume_per_s"] / working["agent"]["consume_per_s"]
    )
    return result
