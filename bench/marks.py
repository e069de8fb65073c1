"""The bookkeeping every throughput task does, relaybus or plain Celery: a Redis counter and timestamps.

No relaybus import here: the plain-Celery baselines (bench.plain_app) import this and nothing of relaybus.
"""

from __future__ import annotations

import os
import time

import redis

_redis: redis.Redis | None = None


def _r() -> redis.Redis:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(os.environ.get("RELAYBUS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
    return _redis


def mark(key: str) -> None:
    now = repr(time.time())
    pipe = _r().pipeline(transaction=False)
    pipe.setnx(f"{key}:first", now)
    pipe.set(f"{key}:last", now)
    pipe.incr(f"{key}:count")
    pipe.execute()
