"""Token and cost budgets per workflow: a call that would go over its workflow's budget is refused unsent.

A workflow (a pipeline or a saga) may carry a :class:`Budget`, set when it starts and recorded in its
started event. Every completion is charged to its workflow through its correlation id: the ``llm.completed``
record holds its tokens and, when its model has a price, its cost (tasks.llm._pricing). What a workflow has
spent is a fold over those records (:class:`Ledger`, the event log), never a counter kept elsewhere.

Before a call is sent, :class:`BudgetedProvider` asks whether spent + held + this call's estimate (the prompt
at four characters a token plus ``max_tokens``, or the expected completion when the request does not say)
stays within the budget; if not, it raises :class:`BudgetExceeded` (permanent: no retry) and the provider
never sees the request. The estimate of the completion is its upper bound when ``max_tokens`` is set; the
prompt's is a rule of thumb, so a call may end a little over its estimate, never more than that.

Concurrent calls of one workflow (the branches of a chord) race the same budget: each takes a *reservation*
of its estimate under a short lock per workflow (:class:`RedisReservations`), held until its ``llm.completed``
is in the log. A call checking the budget sees every other call either as a record in the log or as a
reservation (sometimes as both, which refuses early rather than overspending). Without the reservations'
Redis (it is away), the check falls back to the log alone, and each concurrent branch can overshoot the budget
by at most the one call it has in flight.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

import redis
from pydantic import BaseModel, ConfigDict, Field, model_validator

from relaybus.tasks.errors import PermanentError
from relaybus.tasks.llm._models import Completion, CompletionRequest
from relaybus.tasks.llm._pricing import PriceTable, format_micros, to_micros
from relaybus.tasks.llm._provider import LLMProvider, model_for
from relaybus.tasks.llm._ratelimit import estimate_tokens

logger = logging.getLogger("relaybus.tasks.llm")

#: The reason a workflow ends with when a call was refused over its budget.
BUDGET_EXCEEDED = "budget-exceeded"


class Budget(BaseModel):
    """At most ``tokens`` tokens (prompt + completion) and/or ``cost`` (in the price table's currency)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tokens: int | None = Field(default=None, gt=0)
    cost: Decimal | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _limits_something(self) -> Budget:
        if self.tokens is None and self.cost is None:
            raise ValueError("a budget needs tokens, cost or both")
        return self

    @property
    def cost_micros(self) -> int | None:
        return None if self.cost is None else to_micros(self.cost)

    def record(self) -> dict[str, Any]:
        """What a started event holds: ``{"tokens": 1000, "cost": "0.05"}`` (a decimal as text, exact)."""
        return self.model_dump(mode="json", exclude_none=True)

    def tightest(self, other: Budget | None) -> Budget:
        """The smaller limit of each kind (two budgets on one correlation id: a saga inside a pipeline)."""
        if other is None:
            return self
        tokens = min((t for t in (self.tokens, other.tokens) if t is not None), default=None)
        cost = min((c for c in (self.cost, other.cost) if c is not None), default=None)
        return Budget(tokens=tokens, cost=cost)


@dataclass(frozen=True, slots=True)
class Spent:
    """Tokens and cost (micro-units) spent, held or estimated."""

    tokens: int = 0
    cost_micros: int = 0

    def __add__(self, other: Spent) -> Spent:
        return Spent(self.tokens + other.tokens, self.cost_micros + other.cost_micros)


class BudgetExceeded(PermanentError):
    """Raised before a call is sent when it would take its workflow over its budget; never retried."""

    reason = BUDGET_EXCEEDED

    def __init__(self, correlation_id: str, limit: str, spent: int, held: int, estimate: int, budget: int,
                 currency: str = "") -> None:
        self.correlation_id = correlation_id
        self.limit = limit  # "tokens" or "cost"
        self.spent = spent
        self.held = held
        self.estimate = estimate
        self.budget = budget
        self.currency = currency

        def amount(value: int) -> str:
            return f"{value} tokens" if limit == "tokens" else format_micros(value, currency)

        held_text = f" + {amount(held)} held by calls in flight" if held else ""
        super().__init__(
            f"{BUDGET_EXCEEDED}: workflow {correlation_id} has spent {amount(spent)}{held_text}; this call "
            f"(estimated {amount(estimate)}) would exceed its budget of {amount(budget)}; the call was not sent"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.correlation_id, self.limit, self.spent, self.held, self.estimate,
                                 self.budget, self.currency))


class UnpricedModel(PermanentError):
    """Raised when a workflow with a cost budget calls a model the price table does not price."""

    def __init__(self, provider: str, model: str) -> None:
        self.provider = provider
        self.model = model
        super().__init__(
            f"{provider}/{model} has no price in RELAYBUS_LLM_PRICES, so a cost budget cannot be kept: price it "
            f"(as {model!r} or {provider + '/' + model!r}) or give the workflow a token budget only"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.provider, self.model))


class Ledger(Protocol):
    """The event log's side: a workflow's budget (its started event) and what it spent (``llm.completed``)."""

    def budget_of(self, correlation_id: str) -> Budget | None: ...

    def spent(self, correlation_id: str) -> Spent: ...


class Reservations(Protocol):
    """Estimates of the calls in flight, per workflow, and a lock to check and reserve under."""

    def locked(self, correlation_id: str) -> contextlib.AbstractContextManager[None]: ...

    def held(self, correlation_id: str) -> Spent: ...

    def reserve(self, correlation_id: str, estimate: Spent, ttl_s: float) -> str: ...

    def release(self, correlation_id: str, reservation: str) -> None: ...


class RedisReservations:
    """Reservations in a Redis sorted set per workflow (members ``id|tokens|micros``, scored by expiry, so a
    call whose worker died stops holding its share after ``ttl_s``), under a Redis lock per workflow."""

    def __init__(self, client: redis.Redis, namespace: str, lock_timeout_s: float = 10.0) -> None:
        self.client = client
        self.namespace = namespace
        self.lock_timeout_s = lock_timeout_s

    def _key(self, correlation_id: str) -> str:
        return f"{self.namespace}:budget:{{{correlation_id}}}"

    @contextlib.contextmanager
    def locked(self, correlation_id: str) -> Iterator[None]:
        lock = self.client.lock(self._key(correlation_id) + ":lock", timeout=self.lock_timeout_s,
                                blocking_timeout=self.lock_timeout_s)
        if not lock.acquire():
            raise redis.exceptions.LockError(f"budget lock of {correlation_id} not acquired")
        try:
            yield
        finally:
            with contextlib.suppress(redis.exceptions.LockError):
                lock.release()

    def held(self, correlation_id: str) -> Spent:
        key = self._key(correlation_id)
        self.client.zremrangebyscore(key, "-inf", time.time())
        total = Spent()
        for member in self.client.zrange(key, 0, -1):
            _, tokens, micros = (member.decode() if isinstance(member, bytes) else str(member)).split("|")
            total = total + Spent(int(tokens), int(micros))
        return total

    def reserve(self, correlation_id: str, estimate: Spent, ttl_s: float) -> str:
        key = self._key(correlation_id)
        member = f"{uuid.uuid4().hex}|{estimate.tokens}|{estimate.cost_micros}"
        self.client.zadd(key, {member: time.time() + ttl_s})
        self.client.expire(key, int(ttl_s) + 60)
        return member

    def release(self, correlation_id: str, reservation: str) -> None:
        self.client.zrem(self._key(correlation_id), reservation)


class BudgetPolicy(BaseModel):
    """What a budgeted call needs besides its workflow: prices, the expected completion, where reservations live."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prices: PriceTable = Field(default_factory=PriceTable)
    #: The completion a request without ``max_tokens`` is expected to spend (its estimate before the call).
    completion_tokens: int = Field(default=512, gt=0)
    #: How long a reservation holds its share when its call never reports back (a killed worker).
    reservation_ttl_s: float = Field(default=600.0, gt=0)
    #: The Redis of the reservations (the result backend's by default); None: the log alone (module docstring).
    redis_url: str | None = None
    namespace: str = "agents"


class BudgetedProvider:
    """Delegates to ``inner`` only while the call fits its workflow's ``budget`` (module docstring).

    ``refused`` records the refusal (``budget.exceeded``) before :class:`BudgetExceeded` is raised. Wrap it
    *outside* the provider that records ``llm.completed``: a reservation is released only once the call's
    record is in the log.
    """

    def __init__(
        self, inner: LLMProvider, *, correlation_id: str, budget: Budget, ledger: Ledger,
        reservations: Reservations | None, policy: BudgetPolicy, refused: Callable[[dict[str, Any]], None],
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.model = inner.model
        self.correlation_id = correlation_id
        self.budget = budget
        self._ledger = ledger
        self._reservations = reservations
        self._policy = policy
        self._refused = refused

    def __repr__(self) -> str:
        return f"BudgetedProvider(inner={self.inner!r}, budget={self.budget!r})"

    def estimate(self, request: CompletionRequest) -> Spent:
        """The most this request is expected to cost: its prompt's estimate and its whole completion allowance."""
        model = model_for(self.inner, request)
        completion = request.max_tokens or self._policy.completion_tokens
        tokens = estimate_tokens(request, self._policy.completion_tokens)
        price = self._policy.prices.price_of(self.name, model)
        if price is None:
            if self.budget.cost is not None:
                raise UnpricedModel(self.name, model)
            return Spent(tokens, 0)
        return Spent(tokens, price.cost_micros(tokens - completion, completion))

    def complete(self, request: CompletionRequest) -> Completion:
        estimate = self.estimate(request)
        reservation = self._admit(request, estimate)
        try:
            return self.inner.complete(request)
        finally:
            if reservation is not None and self._reservations is not None:
                try:
                    self._reservations.release(self.correlation_id, reservation)
                except redis.RedisError as exc:  # it expires on its own
                    logger.warning("budget reservation of %s not released: %s", self.correlation_id, exc)

    def _admit(self, request: CompletionRequest, estimate: Spent) -> str | None:
        if self._reservations is None:
            self._check(request, self._ledger.spent(self.correlation_id), Spent(), estimate)
            return None
        try:
            with self._reservations.locked(self.correlation_id):
                held = self._reservations.held(self.correlation_id)
                self._check(request, self._ledger.spent(self.correlation_id), held, estimate)
                return self._reservations.reserve(self.correlation_id, estimate, self._policy.reservation_ttl_s)
        except (redis.RedisError, redis.exceptions.LockError) as exc:
            logger.warning("budget reservations unavailable for %s (%s): checked against the log alone",
                           self.correlation_id, exc)
            self._check(request, self._ledger.spent(self.correlation_id), Spent(), estimate)
            return None

    def _check(self, request: CompletionRequest, spent: Spent, held: Spent, estimate: Spent) -> None:
        budget = self.budget
        over: tuple[str, int, int, int, int] | None = None
        if budget.tokens is not None and spent.tokens + held.tokens + estimate.tokens > budget.tokens:
            over = ("tokens", spent.tokens, held.tokens, estimate.tokens, budget.tokens)
        elif budget.cost_micros is not None and (
            spent.cost_micros + held.cost_micros + estimate.cost_micros > budget.cost_micros
        ):
            over = ("cost", spent.cost_micros, held.cost_micros, estimate.cost_micros, budget.cost_micros)
        if over is None:
            return
        limit, s, h, e, b = over
        currency = self._policy.prices.currency
        self._refused({
            "reason": BUDGET_EXCEEDED, "limit": limit, "provider": self.name, "model": model_for(self.inner, request),
            "budget": budget.record(), "currency": currency,
            "spent": {"tokens": spent.tokens, "cost": format_micros(spent.cost_micros)},
            "held": {"tokens": held.tokens, "cost": format_micros(held.cost_micros)},
            "estimate": {"tokens": estimate.tokens, "cost": format_micros(estimate.cost_micros)},
        })
        raise BudgetExceeded(self.correlation_id, limit, s, h, e, b, currency)
