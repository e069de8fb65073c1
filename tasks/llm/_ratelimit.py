"""Global rate limits per provider and model, shared by every worker on every host through Redis.

A limit is a number of requests and/or tokens per period (``period_s``, a minute by default). The limiter
keeps, per provider and model, a sliding log of the calls it let through in the last period (a Redis sorted
set scored by the time of each call, each member carrying its token count) and the sum of their tokens. One
Lua script trims what fell out of the window, checks both limits and records the call, atomically, on
Redis's own clock (``TIME``), so hosts with skewed clocks still share one window. A sliding log rather than
a token bucket: a bucket of capacity N refilled at N per period lets 2N through in some windows (a full
bucket, then its refill), and the promise here is "never more than N in any window".

Tokens are the prompt's estimate (4 characters a token, a cheap and usual rule of thumb) plus the expected
completion (``max_tokens``, or ``completion_tokens`` when the request does not say); once the provider
answered, the call's entry is corrected to the usage it reported, so the window holds what was really spent,
and moved to the time the call ended: the provider saw the request somewhere between the two, and a request
slow on its way (a process's first connection) must not let another in less than a period after it arrived.
So a call counts from when it was let through until a period after it ended; when a limit is saturated, the
calls' durations are what this costs.

Urgent work gets its tokens first: calls below the urgent priority may use only ``1 - urgent_reserve`` of
each limit, so the reserved share is there for urgent calls whenever normal work has taken its own. Queue
priority alone would not do it: a deferred task comes back as a countdown message, which the worker holds
outside the queue until it is due, where the broker's priority no longer orders it.

A call over the limit raises :class:`RateLimited` with the wait until enough of the window expires; the task
base turns it into a deferral (tasks.runtime.deferral). A provider that answers 429 anyway (its own limits are
lower than configured, or shared with other clients) pauses its model for every worker: for what its
``Retry-After`` asks (:data:`PAUSE_WITHOUT_RETRY_AFTER_S` when it does not say), calls of that model are deferred
without being sent, and the call that met the 429 is deferred too, without using a retry (limit
``provider``). Deferred calls waiting for the same limit are spread
over the following windows by their number (a ``waiting`` set), so twenty tasks deferred together do not come
back together to find room for three.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

import redis
from pydantic import BaseModel, ConfigDict, Field, model_validator

from relaybus.tasks.errors import PermanentError, TransientError
from relaybus.tasks.llm._errors import ProviderOverloaded
from relaybus.tasks.llm._models import Completion, CompletionRequest
from relaybus.tasks.llm._provider import LLMProvider, model_for

logger = logging.getLogger("relaybus.tasks.llm")

#: A rough but usual rule: about four characters of English text per token.
CHARS_PER_TOKEN = 4
#: A message's framing (role, separators) costs a few tokens on top of its text.
TOKENS_PER_MESSAGE = 4
#: How long a 429 without ``Retry-After`` pauses its model; and the longest any 429 pauses it.
PAUSE_WITHOUT_RETRY_AFTER_S = 1.0
MAX_PAUSE_S = 3600.0


class RateLimit(BaseModel):
    """At most ``requests`` calls and ``tokens`` tokens in any ``period_s`` seconds (either may be left out)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    requests: int | None = Field(default=None, gt=0)
    tokens: int | None = Field(default=None, gt=0)
    period_s: float = Field(default=60.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _limits_something(self) -> RateLimit:
        if self.requests is None and self.tokens is None:
            raise ValueError("a rate limit needs requests, tokens or both")
        return self


class RateLimits(BaseModel):
    """Every rate limit of an app, by ``"<provider>/<model>"``, and how the limiter treats priorities."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    limits: dict[str, RateLimit] = Field(default_factory=dict)
    #: Where the shared windows live (required with limits).
    redis_url: str | None = None
    #: Prefix of every key (the app's namespace), so deployments sharing a Redis keep their own windows.
    namespace: str = "agents"
    #: Calls of tasks at this priority or above are urgent: they may use the reserved share.
    urgent_priority: int = 3
    urgent_reserve: float = Field(default=0.2, ge=0, lt=1)
    #: The completion a request without ``max_tokens`` is expected to spend, until its usage corrects it.
    completion_tokens: int = Field(default=512, gt=0)
    #: When Redis cannot be reached: False defers the call (nothing goes over a limit, nothing is lost);
    #: True lets it through unlimited, with the provider's own 429 handling as the only guard.
    fail_open: bool = False

    @model_validator(mode="after")
    def _limits_have_a_redis(self) -> RateLimits:
        if self.limits and not self.redis_url:
            raise ValueError("rate limits need a Redis shared by every worker (llm_rate_limit_redis_url)")
        return self

    def limit_for(self, provider: str, model: str) -> RateLimit | None:
        return self.limits.get(f"{provider}/{model}")


class RateLimited(TransientError):
    """Raised when a call would go over a rate limit; the task base defers its task by ``wait_s``.

    ``limit`` says which: ``requests``, ``tokens``, ``provider`` when the provider answered 429 (its model is
    paused for every worker), or ``unavailable`` when the limiter's Redis could not be reached (``wait_s`` is
    None then: the task base backs off).
    """

    def __init__(
        self, provider: str, model: str, limit: str, wait_s: float | None, tokens: int = 0, urgent: bool = False
    ) -> None:
        self.provider = provider
        self.model = model
        self.limit = limit
        self.wait_s = wait_s
        self.tokens = tokens
        self.urgent = urgent
        if wait_s is None:
            text = f"rate limiter for {provider}/{model} unavailable; the call waits for it"
        elif limit == "provider":
            text = f"{provider}/{model} answered 429 (too many requests); calls wait {wait_s:.3f} s"
        else:
            text = f"{provider}/{model} is at its {limit} limit; the call fits in {wait_s:.3f} s"
        super().__init__(text)

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.provider, self.model, self.limit, self.wait_s, self.tokens, self.urgent))


class RequestOverLimit(PermanentError):
    """Raised when one request is estimated at more tokens than its limit allows in a whole period."""

    def __init__(self, provider: str, model: str, tokens: int, limit: int) -> None:
        self.provider = provider
        self.model = model
        self.tokens = tokens
        self.token_limit = limit
        super().__init__(
            f"request estimated at {tokens} tokens is over the {provider}/{model} limit of {limit} tokens per "
            "period: it could never be sent; lower max_tokens or shorten the prompt"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.provider, self.model, self.tokens, self.token_limit))


def estimate_tokens(request: CompletionRequest, completion_tokens: int) -> int:
    prompt = sum(len(m.content) // CHARS_PER_TOKEN + TOKENS_PER_MESSAGE for m in request.messages)
    return prompt + (request.max_tokens or completion_tokens)


# KEYS: log (zset), tokens (sum), waiting (zset), pause (when the provider's 429 pause ends, µs). ARGV:
# period_us, request cap, token cap, cost, member, waiter ('' for urgent calls, which neither wait in line nor
# count as waiting). Caps are already reduced by the urgent reserve for normal calls; 0 means "no limit".
# Returns {admitted, wait_us, which}.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local period = tonumber(ARGV[1])
local req_cap, tok_cap, cost = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local waiter = ARGV[6]
local paused = tonumber(redis.call('GET', KEYS[4]) or '0')
if paused > now then return {0, paused - now, 'provider'} end
local function tokens_of(m) return tonumber(string.match(m, '|(%d+)$')) end
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - period)
if #expired > 0 then
  local freed = 0
  for _, m in ipairs(expired) do freed = freed + tokens_of(m) end
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - period)
  if redis.call('DECRBY', KEYS[2], freed) < 0 then redis.call('SET', KEYS[2], 0) end
end
local count = redis.call('ZCARD', KEYS[1])
local used = tonumber(redis.call('GET', KEYS[2]) or '0')
local wait, which = 0, ''
if req_cap > 0 and count + 1 > req_cap then
  local e = redis.call('ZRANGE', KEYS[1], count - req_cap, count - req_cap, 'WITHSCORES')
  wait, which = tonumber(e[2]) + period - now, 'requests'
end
if tok_cap > 0 and used + cost > tok_cap then
  local need, freed, w = used + cost - tok_cap, 0, period
  local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
  for i = 1, #entries, 2 do
    freed = freed + tokens_of(entries[i])
    if freed >= need then w = tonumber(entries[i + 1]) + period - now; break end
  end
  if w > wait then wait, which = w, 'tokens' end
end
local ttl = math.max(1000, math.floor(2 * period / 1000))
if wait <= 0 then
  redis.call('ZADD', KEYS[1], now, ARGV[5])
  redis.call('INCRBY', KEYS[2], cost)
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
  if waiter ~= '' then redis.call('ZREM', KEYS[3], waiter) end
  return {1, 0, ''}
end
if waiter ~= '' then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - period)
  -- Who is ahead in line: every waiter for a call new in line, those due before it for one asking again.
  local mine = redis.call('ZSCORE', KEYS[3], waiter)
  local ahead = mine and redis.call('ZCOUNT', KEYS[3], '-inf', '(' .. mine) or redis.call('ZCARD', KEYS[3])
  local per_window = req_cap
  if tok_cap > 0 then
    local fit = math.max(1, math.floor(tok_cap / cost))
    if per_window == 0 or fit < per_window then per_window = fit end
  end
  wait = wait + math.floor(ahead / per_window) * period
  redis.call('ZADD', KEYS[3], now + wait, waiter)
  redis.call('PEXPIRE', KEYS[3], ttl + math.floor(wait / 1000))
end
return {0, wait, which}
"""

# KEYS: log, tokens. ARGV: the member as recorded, the member with the real token count, period_us. The call's
# entry moves to now, its end: the provider saw the request somewhere between its admission and now, and a
# request slow on its way (a first connection) must not let the next one in less than a period after it arrived.
# A call whose entry already left the window is not corrected: the window it counted in is over.
_SETTLE = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function tokens_of(m) return tonumber(string.match(m, '|(%d+)$')) end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], math.max(tonumber(score), now), ARGV[2])
if redis.call('INCRBY', KEYS[2], tokens_of(ARGV[2]) - tokens_of(ARGV[1])) < 0 then redis.call('SET', KEYS[2], 0) end
local ttl = math.max(1000, math.floor(2 * tonumber(ARGV[3]) / 1000))
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
return 1
"""


# KEYS: pause. ARGV: wait_us. The model's pause ends wait_us from now, or later if it already did; returns how
# long it has left (µs).
_PAUSE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ends = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if ends > current then
  redis.call('SET', KEYS[1], ends, 'PX', math.max(1, math.ceil(tonumber(ARGV[1]) / 1000)))
  return ends - now
end
return current - now
"""


@dataclass(frozen=True, slots=True)
class Grant:
    """A call the limiter let through: its entry in the window, to correct with the real usage and end time."""

    key: str
    member: str
    tokens: int
    period_us: int


class RedisRateLimiter:
    """The shared windows in Redis. Raises :class:`RateLimited` for a call over a limit; Redis's own errors
    (unreachable, timed out) propagate as redis exceptions for the caller to decide (fail open or closed)."""

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.client = client
        self.namespace = namespace
        self._acquire = client.register_script(_ACQUIRE)
        self._settle = client.register_script(_SETTLE)
        self._pause = client.register_script(_PAUSE)

    def _keys(self, provider: str, model: str) -> list[str]:
        # One hash tag per limit: a Redis Cluster keeps a limit's keys in one slot, as a script needs.
        base = f"{self.namespace}:ratelimit:{{{provider}/{model}}}"
        return [f"{base}:log", f"{base}:tokens", f"{base}:waiting", f"{base}:pause"]

    def acquire(
        self, provider: str, model: str, limit: RateLimit, tokens: int, *, urgent: bool, reserve: float,
        waiter: str,
    ) -> Grant:
        if limit.tokens is not None and tokens > limit.tokens:
            raise RequestOverLimit(provider, model, tokens, limit.tokens)
        share = 1.0 if urgent else 1.0 - reserve
        request_cap = max(1, int(limit.requests * share)) if limit.requests else 0
        # A normal call bigger than the normal share may still go, alone in its window.
        token_cap = max(tokens, int(limit.tokens * share)) if limit.tokens else 0
        member = f"{uuid.uuid4().hex}|{tokens}"
        keys = self._keys(provider, model)
        period_us = int(limit.period_s * 1_000_000)
        admitted, wait_us, which = self._acquire(
            keys=keys, args=[period_us, request_cap, token_cap, tokens, member, "" if urgent else waiter]
        )
        if not admitted:
            which = which.decode() if isinstance(which, bytes) else str(which)
            raise RateLimited(provider, model, which, int(wait_us) / 1_000_000, tokens, urgent)
        return Grant(keys[0], member, tokens, period_us)

    def pause(self, provider: str, model: str, wait_s: float) -> float:
        """The provider asked every caller of ``model`` to wait ``wait_s`` (a 429): no call of it is let through
        until then, on any worker. A longer pause already set stands. Returns the seconds the pause has left."""
        wait_us = int(min(max(wait_s, 0.001), MAX_PAUSE_S) * 1_000_000)
        left = self._pause(keys=[self._keys(provider, model)[3]], args=[wait_us])
        return int(left) / 1_000_000

    def settle(self, grant: Grant, tokens: int) -> None:
        """The call has ended having spent ``tokens``: its entry counts them, from now on."""
        head = grant.member.rpartition("|")[0]
        self._settle(keys=[grant.key, grant.key.removesuffix(":log") + ":tokens"],
                     args=[grant.member, f"{head}|{max(tokens, 0)}", grant.period_us])


class RateLimitedProvider:
    """Delegates to ``inner`` within the limit of its provider and model, if it has one.

    ``urgent`` says whether the calling task may use the reserved share; ``waiter`` (the task id) holds its
    place among the deferred calls. Limits are looked up by the provider's configured name and the model the
    request will be served by (:func:`model_for`).
    """

    def __init__(
        self, inner: LLMProvider, limiter: RedisRateLimiter, limits: RateLimits, *, urgent: bool, waiter: str
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.model = inner.model
        self._limiter = limiter
        self._limits = limits
        self._urgent = urgent
        self._waiter = waiter

    def __repr__(self) -> str:
        return f"RateLimitedProvider(inner={self.inner!r}, urgent={self._urgent})"

    def complete(self, request: CompletionRequest) -> Completion:
        model = model_for(self.inner, request)
        limit = self._limits.limit_for(self.name, model)
        if limit is None:
            return self.inner.complete(request)
        tokens = estimate_tokens(request, self._limits.completion_tokens)
        try:
            grant = self._limiter.acquire(self.name, model, limit, tokens, urgent=self._urgent,
                                          reserve=self._limits.urgent_reserve, waiter=self._waiter)
        except redis.RedisError as exc:
            if self._limits.fail_open:
                logger.warning("rate limiter unavailable, %s/%s called unlimited: %s", self.name, model, exc)
                return self.inner.complete(request)
            raise RateLimited(self.name, model, "unavailable", None, tokens, self._urgent) from exc
        try:
            completion = self.inner.complete(request)
        except ProviderOverloaded as exc:
            self._settle(grant, grant.tokens, model)  # a failed call keeps its estimate: the provider may count it
            if exc.status_code != 429:
                raise
            raise RateLimited(self.name, model, "provider", self._paused(model, exc.retry_after), tokens,
                              self._urgent) from exc
        except BaseException:
            self._settle(grant, grant.tokens, model)  # a failed call keeps its estimate: the provider may count it
            raise
        used = completion.usage.prompt_tokens + completion.usage.completion_tokens
        self._settle(grant, used or grant.tokens, model)  # no usage reported: the estimate stands
        return completion

    def _paused(self, model: str, retry_after: float | None) -> float:
        """Pause ``model`` for every worker as the 429 asks; the seconds this call waits."""
        wait = retry_after if retry_after is not None else PAUSE_WITHOUT_RETRY_AFTER_S
        try:
            return self._limiter.pause(self.name, model, wait)
        except redis.RedisError as exc:  # this call still waits; the others learn from their own 429
            logger.warning("could not pause %s/%s after a 429: %s", self.name, model, exc)
            return min(max(wait, 0.001), MAX_PAUSE_S)

    def _settle(self, grant: Grant, tokens: int, model: str) -> None:
        try:
            self._limiter.settle(grant, tokens)
        except redis.RedisError as exc:  # the call happened; only its correction is lost
            logger.warning("could not correct the %s/%s window after a call: %s", self.name, model, exc)
