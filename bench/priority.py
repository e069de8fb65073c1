"""Priority under load: the queue wait of an urgent task against a normal one, both behind a backlog.

The backlog (normal priority) is published first, then one urgent and one normal task; a worker
(prefork, 2 processes, prefetch 1) starts and drains the queue. Queue wait = the task's first
mark minus the moment the worker began consuming (both were published before it started).
"""

from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis

from bench.common import bench_settings, delete_namespace, make_app, start_worker, wait_consuming


def run(backlog: int = 5000, redis_url: str = "redis://127.0.0.1:6379/0") -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        settings = bench_settings(Path(tmp), record_events=False)
        app = make_app(settings)
        r = redis.Redis.from_url(redis_url)
        key = f"bench:{uuid.uuid4().hex}"
        task = app.tasks["agents.bench_noop"]
        queue = f"{settings.namespace}.bench_noop"
        try:
            for i in range(backlog):
                task.apply_async(kwargs={"key": f"{key}:backlog", "n": i}, priority="normal")
            published = {}
            for label, priority in (("normal", "normal"), ("urgent", "urgent")):
                published[label] = time.time()
                task.apply_async(kwargs={"key": f"{key}:{label}"}, priority=priority)
            worker = start_worker(settings, [queue], Path(tmp) / "priority.log")
            try:
                wait_consuming(app, [queue])
                consuming = time.time()
                deadline = time.monotonic() + 600
                while not (r.get(f"{key}:normal:first") and r.get(f"{key}:urgent:first")):
                    if time.monotonic() > deadline or not worker.alive():
                        raise RuntimeError(f"priority bench did not finish; see {worker.log_path}")
                    time.sleep(0.05)
            finally:
                worker.stop()
            started = {label: float(r.get(f"{key}:{label}:first") or 0) for label in published}
            # Waits count from when the worker began consuming, so its start-up time is left out.
            waits = {label: started[label] - max(published[label], consuming) for label in published}
            ahead = int(r.get(f"{key}:backlog:count") or 0)
            return {
                "backlog": backlog,
                "urgent_wait_s": waits["urgent"],
                "normal_wait_s": waits["normal"],
                "urgent_to_normal_wait_ratio": waits["urgent"] / waits["normal"] if waits["normal"] else None,
                "backlog_done_before_normal": ahead,
            }
        finally:
            for suffix in ("backlog", "normal", "urgent"):
                for part in ("first", "last", "count"):
                    r.delete(f"{key}:{suffix}:{part}")
            delete_namespace(app)
            app.close()
