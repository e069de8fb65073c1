"""What the global rate limiter adds to an agent's LLM call: the same call with the limiter on and off.

The call is the offline provider's (no network, ~tens of µs), so the difference is the limiter's own cost: one
Lua script on a Redis on localhost to admit the call and one to correct it to the reported usage. The window
is pre-filled to a size (the calls of the last period), since the sliding log's cost grows with it a little.
"""

from __future__ import annotations

import statistics
import time
import uuid
from typing import Any

import redis

from relaybus.tasks.llm import (
    ChatMessage,
    CompletionRequest,
    LLMProvider,
    OfflineProvider,
    RateLimit,
    RateLimitedProvider,
    RateLimits,
    RedisRateLimiter,
)


def _per_call_us(provider: LLMProvider, calls: int, rounds: int) -> float:
    requests = [CompletionRequest(messages=(ChatMessage(role="user", content=f"question {i}"),), max_tokens=64)
                for i in range(calls)]
    best = []
    for _ in range(rounds):
        started = time.perf_counter()
        for request in requests:
            provider.complete(request)
        best.append((time.perf_counter() - started) / calls * 1e6)
    return statistics.median(best)


def run(calls: int = 2000, rounds: int = 3, windows: tuple[int, ...] = (100, 10_000),
        redis_url: str = "redis://127.0.0.1:6379/0") -> dict[str, Any]:
    client = redis.Redis.from_url(redis_url)
    offline = OfflineProvider()
    results: dict[str, Any] = {"calls": calls, "off_us": _per_call_us(offline, calls, rounds), "on": {}}
    for window in windows:
        namespace = f"bench-rl-{uuid.uuid4().hex[:8]}"
        limit = RateLimit(requests=10**9, tokens=10**12, period_s=3600)
        limits = RateLimits(limits={f"{offline.name}/{offline.model}": limit}, redis_url=redis_url,
                            namespace=namespace)
        limiter = RedisRateLimiter(client, namespace)
        try:
            for _ in range(window):  # the calls already in the window
                limiter.acquire(offline.name, offline.model, limit, 100, urgent=True, reserve=0.2, waiter="")
            provider = RateLimitedProvider(offline, limiter, limits, urgent=False, waiter="bench")
            on = _per_call_us(provider, calls, rounds)
        finally:
            for key in client.scan_iter(f"{namespace}:*"):
                client.delete(key)
        results["on"][window] = {"on_us": on, "overhead_us": on - results["off_us"]}
    client.close()
    return results
