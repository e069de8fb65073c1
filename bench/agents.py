"""Tasks measured by the throughput benchmark: one relaybus agent and one plain Celery task.

Both do the same trivial work and the same bookkeeping (a Redis counter and timestamps), so the
difference between them is what relaybus adds: validation, headers, context and recording.
"""

from __future__ import annotations

import os
import time

import redis
from celery import shared_task

from relaybus.tasks.runtime.task import AgentContext, AgentModel, agent

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


class NoopInput(AgentModel):
    key: str
    n: int = 0
    work_ms: float = 0.0  # stand-in for an agent's real work (an LLM call is 100 ms to seconds)


class NoopOutput(AgentModel):
    n: int


@agent("bench_noop", input=NoopInput, output=NoopOutput)
def bench_noop(inp: NoopInput, ctx: AgentContext) -> NoopOutput:
    if inp.work_ms:
        time.sleep(inp.work_ms / 1000)
    mark(inp.key)
    return NoopOutput(n=inp.n)


@shared_task(name="bench.plain", acks_late=True)
def bench_plain(key: str, n: int = 0, work_ms: float = 0.0) -> dict[str, int]:
    if work_ms:
        time.sleep(work_ms / 1000)
    mark(key)
    return {"n": n}
