"""The rate limiter's windows in a real Redis: shares, corrections, spreading, keys, and what an outage does."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import redis as redis_lib
from celery import Celery

from relaybus.tasks.llm import (
    ChatMessage,
    CompletionRequest,
    OfflineProvider,
    RateLimit,
    RateLimited,
    RateLimitedProvider,
    RateLimits,
    RedisRateLimiter,
    RequestOverLimit,
)
from relaybus.tasks.llm._errors import ProviderOverloaded
from relaybus.tasks.llm._ratelimit import PAUSE_WITHOUT_RETRY_AFTER_S
from relaybus.tasks.runtime.deferral import already_deferred
from relaybus.tasks.runtime.idempotency import mark_done
from relaybus.tasks.runtime.recording import NullRecorder

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def limiter(redis_client: redis_lib.Redis) -> Iterator[RedisRateLimiter]:
    namespace = f"rl{uuid.uuid4().hex[:8]}"
    yield RedisRateLimiter(redis_client, namespace)
    for key in redis_client.scan_iter(f"{namespace}:*"):
        redis_client.delete(key)


def outcome(limiter: RedisRateLimiter, limit: RateLimit, tokens: int = 10, *, urgent: bool = False,
            waiter: str = "w") -> float | str:
    """0.0 for a call let through, else the wait the limiter asked for."""
    try:
        limiter.acquire("p", "m", limit, tokens, urgent=urgent, reserve=0.25, waiter=waiter)
    except RateLimited as limited:
        assert limited.wait_s is not None
        return round(limited.wait_s, 1)
    return 0.0


def test_normal_calls_leave_the_reserved_share_to_urgent_ones(limiter: RedisRateLimiter) -> None:
    limit = RateLimit(requests=4, period_s=10)
    assert [outcome(limiter, limit, waiter=f"n{i}") for i in range(4)] == [0.0, 0.0, 0.0, 10.0]
    assert outcome(limiter, limit, urgent=True) == 0.0, "the reserved quarter is there for urgent work"
    assert outcome(limiter, limit, urgent=True) == 10.0, "but no more than the limit"


def test_tokens_count_the_estimate_until_the_real_usage_corrects_it(
    limiter: RedisRateLimiter, redis_client: redis_lib.Redis
) -> None:
    limit = RateLimit(tokens=100, period_s=10)
    grant = limiter.acquire("p", "m", limit, 60, urgent=True, reserve=0.25, waiter="a")
    with pytest.raises(RateLimited) as limited:
        limiter.acquire("p", "m", limit, 60, urgent=True, reserve=0.25, waiter="b")
    assert limited.value.limit == "tokens"
    limiter.settle(grant, 20)  # the provider reported 20 tokens: 80 are left
    limiter.acquire("p", "m", limit, 60, urgent=True, reserve=0.25, waiter="b")
    assert int(redis_client.get(f"{limiter.namespace}:ratelimit:{{p/m}}:tokens") or 0) == 80


def test_a_request_bigger_than_its_token_limit_is_refused_for_good(limiter: RedisRateLimiter) -> None:
    with pytest.raises(RequestOverLimit, match="could never be sent"):
        limiter.acquire("p", "m", RateLimit(tokens=100), 101, urgent=False, reserve=0.2, waiter="w")
    # A normal call over the normal share but within the limit still goes, alone in its window.
    limiter.acquire("p", "m", RateLimit(tokens=100), 90, urgent=False, reserve=0.2, waiter="w")


def test_deferred_calls_are_spread_over_the_next_windows_in_their_order(limiter: RedisRateLimiter) -> None:
    limit = RateLimit(requests=2, period_s=5)
    assert outcome(limiter, limit, urgent=True) == outcome(limiter, limit, urgent=True) == 0.0
    waits = [outcome(limiter, limit, waiter=f"w{i}") for i in range(6)]
    # Normal work may use 1 of the 2 per window (the reserve is a quarter, at least one is always left).
    assert waits == [5.0, 10.0, 15.0, 20.0, 25.0, 30.0]
    assert outcome(limiter, limit, waiter="w0") == 5.0, "asking again keeps its place in line"


def test_windows_slide_and_their_keys_are_namespaced_and_expire(
    limiter: RedisRateLimiter, redis_client: redis_lib.Redis
) -> None:
    limit = RateLimit(requests=1, period_s=0.3)
    assert outcome(limiter, limit, urgent=True) == 0.0
    assert outcome(limiter, limit, urgent=True) != 0.0
    time.sleep(0.31)  # the window's length itself: the limiter promises nothing shorter
    assert outcome(limiter, limit, urgent=True) == 0.0
    keys = {k.decode() for k in redis_client.scan_iter(f"{limiter.namespace}:*")}
    assert keys == {f"{limiter.namespace}:ratelimit:{{p/m}}:log", f"{limiter.namespace}:ratelimit:{{p/m}}:tokens"}
    # Each key expires within a second; -2 is a key that already has (a slow machine between the scan and
    # here: seen once in CI). -1, a key that never expires, is what this guards against.
    ttls = {k: redis_client.pttl(k) for k in keys}
    assert all(ttl == -2 or 0 < ttl <= 1000 for ttl in ttls.values()), ttls


def request() -> CompletionRequest:
    return CompletionRequest(messages=(ChatMessage(role="user", content="hello"),))


def test_an_unreachable_limiter_defers_the_call_unless_told_to_fail_open() -> None:
    dead = RedisRateLimiter(redis_lib.Redis(port=1, socket_connect_timeout=0.5), "rl")
    limits = RateLimits(limits={"offline/offline-echo": RateLimit(requests=1)}, redis_url="redis://127.0.0.1:1/0")
    closed = RateLimitedProvider(OfflineProvider(), dead, limits, urgent=False, waiter="t")
    with pytest.raises(RateLimited) as limited:
        closed.complete(request())
    assert (limited.value.limit, limited.value.wait_s) == ("unavailable", None)
    opened = RateLimitedProvider(OfflineProvider(), dead, limits.model_copy(update={"fail_open": True}),
                                 urgent=False, waiter="t")
    assert opened.complete(request()).text


def test_a_model_without_a_limit_is_called_without_asking_redis() -> None:
    dead = RedisRateLimiter(redis_lib.Redis(port=1, socket_connect_timeout=0.5), "rl")
    limits = RateLimits(limits={"openai/other": RateLimit(requests=1)}, redis_url="redis://127.0.0.1:1/0")
    assert RateLimitedProvider(OfflineProvider(), dead, limits, urgent=False, waiter="t").complete(request()).text


def test_a_pause_holds_every_call_of_its_model_urgent_ones_too_and_the_longer_pause_stands(
    limiter: RedisRateLimiter,
) -> None:
    limit = RateLimit(requests=100, period_s=1.0)
    assert limiter.pause("p", "m", 0.5) == pytest.approx(0.5, abs=0.05)
    assert limiter.pause("p", "m", 0.1) == pytest.approx(0.5, abs=0.05), "a shorter pause does not cut a longer"
    with pytest.raises(RateLimited) as limited:
        limiter.acquire("p", "m", limit, 10, urgent=True, reserve=0.25, waiter="w")
    assert limited.value.limit == "provider" and 0 < (limited.value.wait_s or 0) <= 0.5
    time.sleep(0.55)
    assert outcome(limiter, limit) == 0.0, "the pause is over"


class _Overloaded:
    """A provider that answers 429 (or another status), counting the requests that reach it."""

    name = "p"
    model = "m"

    def __init__(self, status: int, retry_after: float | None) -> None:
        self.status, self.retry_after, self.calls = status, retry_after, 0

    def complete(self, _request: CompletionRequest) -> None:
        self.calls += 1
        raise ProviderOverloaded(f"HTTP {self.status}", self.status, self.retry_after)


def test_a_429_pauses_the_model_for_every_caller_and_defers_the_call_without_a_retry(
    limiter: RedisRateLimiter,
) -> None:
    limits = RateLimits(limits={"p/m": RateLimit(requests=100, period_s=1.0)}, redis_url="redis://unused/0")
    inner = _Overloaded(429, retry_after=0.6)
    with pytest.raises(RateLimited) as limited:
        RateLimitedProvider(inner, limiter, limits, urgent=False, waiter="a").complete(request())
    assert limited.value.limit == "provider" and limited.value.wait_s == pytest.approx(0.6, abs=0.05)
    assert isinstance(limited.value.__cause__, ProviderOverloaded)
    # Another worker's call of the same model waits too, without reaching the provider.
    other = _Overloaded(429, retry_after=None)
    with pytest.raises(RateLimited) as waiting:
        RateLimitedProvider(other, limiter, limits, urgent=True, waiter="b").complete(request())
    assert waiting.value.limit == "provider" and other.calls == 0
    time.sleep(0.65)
    with pytest.raises(RateLimited) as again:  # no Retry-After: the default pause
        RateLimitedProvider(other, limiter, limits, urgent=False, waiter="b").complete(request())
    assert other.calls == 1 and again.value.wait_s == pytest.approx(PAUSE_WITHOUT_RETRY_AFTER_S, abs=0.05)


def test_a_5xx_is_the_providers_failure_not_a_pause(limiter: RedisRateLimiter) -> None:
    limits = RateLimits(limits={"p/m": RateLimit(requests=100, period_s=1.0)}, redis_url="redis://unused/0")
    with pytest.raises(ProviderOverloaded):
        RateLimitedProvider(_Overloaded(503, retry_after=5.0), limiter, limits, urgent=False, waiter="a").complete(
            request()
        )
    assert outcome(limiter, RateLimit(requests=100, period_s=1.0)) == 0.0


def test_a_redelivered_original_whose_copy_was_published_is_not_run_again(app: Celery) -> None:
    task = app.tasks["agents.probe"]

    def call(redelivered: bool, deferrals: int = 0) -> SimpleNamespace:
        request = SimpleNamespace(id=task_id, retries=0, headers={"x_deferrals": deferrals} if deferrals else {},
                                  delivery_info={"redelivered": redelivered})
        return SimpleNamespace(task=task, request=request, recorder=NullRecorder())

    task_id = str(uuid.uuid4())
    assert not already_deferred(call(True))  # type: ignore[arg-type]
    mark_done(app, f"deferred:{task_id}:0:0")  # what a deferral leaves once its copy is published
    assert already_deferred(call(True))  # type: ignore[arg-type]
    assert not already_deferred(call(False)), "a first delivery never asks"  # type: ignore[arg-type]
    assert not already_deferred(call(True, deferrals=1)), "the copy itself runs"  # type: ignore[arg-type]
