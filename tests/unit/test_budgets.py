"""Budgets and prices without a broker: exact costs, the check before a call, reservations, settings, the fold."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from pydantic import ValidationError
from redis.backoff import NoBackoff
from redis.retry import Retry

from relaybus.eventstore.usage import call_usage, llm_usage, spending_summary
from relaybus.settings import Settings
from relaybus.tasks.llm import (
    Budget,
    BudgetedProvider,
    BudgetExceeded,
    BudgetPolicy,
    Completion,
    CompletionRequest,
    OfflineProvider,
    Price,
    PriceTable,
    RedisReservations,
    Spent,
    UnpricedModel,
    complete,
    format_micros,
    to_micros,
)

PRICES = PriceTable(prices={"offline-echo": Price(prompt_per_1k=Decimal("0.15"), completion_per_1k=Decimal("0.6"))})


class Counting:
    """The offline provider, counting the requests that reach it."""

    def __init__(self) -> None:
        self.inner = OfflineProvider()
        self.name, self.model = self.inner.name, self.inner.model
        self.requests: list[CompletionRequest] = []
        self.during: Any = None

    def complete(self, request: CompletionRequest) -> Completion:
        self.requests.append(request)
        if self.during is not None:
            self.during()
        return self.inner.complete(request)


class Ledger:
    def __init__(self, budget: Budget | None, spent: Spent | None = None) -> None:
        self.budget, self.spent_so_far = budget, spent or Spent()

    def budget_of(self, correlation_id: str) -> Budget | None:
        return self.budget

    def spent(self, correlation_id: str) -> Spent:
        return self.spent_so_far


class Held:
    """Reservations in memory: the protocol BudgetedProvider needs, as RedisReservations keeps it."""

    def __init__(self) -> None:
        self.items: dict[str, Spent] = {}

    @contextlib.contextmanager
    def locked(self, correlation_id: str) -> Iterator[None]:
        yield

    def held(self, correlation_id: str) -> Spent:
        return sum(self.items.values(), Spent())

    def reserve(self, correlation_id: str, estimate: Spent, ttl_s: float) -> str:
        key = str(len(self.items))
        self.items[key] = estimate
        return key

    def release(self, correlation_id: str, reservation: str) -> None:
        self.items.pop(reservation)


def budgeted(inner: Counting, budget: Budget, ledger: Ledger, held: Any, refusals: list[dict[str, Any]]) -> Any:
    return BudgetedProvider(inner, correlation_id="wf-1", budget=budget, ledger=ledger, reservations=held,
                            policy=BudgetPolicy(prices=PRICES), refused=refusals.append)


def test_costs_are_exact_integer_micro_units_rounded_up_and_sum_without_drift() -> None:
    price = Price(prompt_per_1k=Decimal("0.00015"), completion_per_1k=Decimal("0.0006"))
    assert price.cost_micros(1000, 1000) == 750
    assert price.cost_micros(1, 0) == 1  # 0.15 micro-units, rounded up: a budget is never undercharged
    assert sum(price.cost_micros(3, 7) for _ in range(10_000)) == 10_000 * price.cost_micros(3, 7)
    assert (format_micros(9300, "USD"), format_micros(1), to_micros("0.015")) == ("0.0093 USD", "0.000001", 15000)
    table = PriceTable(prices={"p/m": price, "m": Price(prompt_per_1k=1, completion_per_1k=1)})
    assert table.price_of("p", "m") == price  # "<provider>/<model>" wins over the model alone


def test_a_budget_needs_a_limit_and_records_its_cost_as_exact_text() -> None:
    with pytest.raises(ValidationError, match="tokens, cost or both"):
        Budget()
    with pytest.raises(ValidationError):
        Budget(tokens=0)
    assert Budget(tokens=50, cost=Decimal("0.015")).record() == {"tokens": 50, "cost": "0.015"}
    assert Budget(tokens=50).tightest(Budget(tokens=40, cost=Decimal("1"))) == Budget(tokens=40, cost=Decimal("1"))


def test_a_call_over_the_budget_is_refused_before_the_provider_sees_it_and_the_refusal_is_recorded() -> None:
    inner, refusals = Counting(), []
    provider = budgeted(inner, Budget(tokens=50), Ledger(Budget(tokens=50), Spent(32, 0)), Held(), refusals)
    with pytest.raises(BudgetExceeded) as refused:
        complete(provider, user="go", max_tokens=16)  # estimated 4 + 16 = 20: 52 > 50
    assert inner.requests == []
    assert (refused.value.limit, refused.value.spent, refused.value.estimate, refused.value.budget) == (
        "tokens", 32, 20, 50)
    assert str(refused.value).startswith("budget-exceeded: workflow wf-1 has spent 32 tokens")
    assert refusals[0]["spent"] == {"tokens": 32, "cost": "0"} and refusals[0]["limit"] == "tokens"
    assert BudgetExceeded(*refused.value.__reduce__()[1]).budget == 50  # survives the result backend


def test_a_call_within_the_budget_is_sent_and_its_reservation_released() -> None:
    inner, held = Counting(), Held()
    provider = budgeted(inner, Budget(tokens=50), Ledger(Budget(tokens=50), Spent(30, 0)), held, [])
    complete(provider, user="go", max_tokens=16)
    assert len(inner.requests) == 1 and held.items == {}


def test_a_call_in_flight_holds_its_estimate_so_a_concurrent_call_cannot_overspend() -> None:
    inner, held, refusals = Counting(), Held(), []
    ledger = Ledger(Budget(tokens=50))
    first = budgeted(inner, Budget(tokens=50), ledger, held, refusals)
    second = budgeted(Counting(), Budget(tokens=50), ledger, held, refusals)
    seen: list[BaseException] = []

    def race() -> None:  # while the first call is with the provider, a second branch asks for 20 + 20 more
        with pytest.raises(BudgetExceeded) as caught:
            complete(second, user="go", max_tokens=36)
        seen.append(caught.value)

    inner.during = race
    complete(first, user="go", max_tokens=16)
    assert len(seen) == 1 and refusals[0]["held"]["tokens"] == 20


def test_a_cost_budget_refuses_a_model_without_a_price() -> None:
    inner = Counting()
    provider = BudgetedProvider(inner, correlation_id="wf-1", budget=Budget(cost=Decimal("1")), ledger=Ledger(None),
                                reservations=None, policy=BudgetPolicy(), refused=lambda _: None)
    with pytest.raises(UnpricedModel, match="offline/offline-echo has no price"):
        complete(provider, user="go")
    assert inner.requests == []


def test_without_the_reservations_redis_the_check_falls_back_to_the_log() -> None:
    unreachable = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, socket_timeout=0.2,
                              retry=Retry(NoBackoff(), 0))  # as tasks.runtime.budgets builds it
    inner = Counting()
    provider = budgeted(inner, Budget(tokens=50), Ledger(Budget(tokens=50), Spent(40, 0)),
                        RedisReservations(unreachable, "t"), [])
    with pytest.raises(BudgetExceeded):
        complete(provider, user="go", max_tokens=16)
    complete(provider, user="go", max_tokens=5)  # 40 + 9 fits
    assert len(inner.requests) == 1


def test_prices_come_from_the_environment_as_json_and_go_back_to_it_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    text = '{"gpt-4o-mini": {"prompt_per_1k": "0.00015", "completion_per_1k": "0.0006"}}'
    settings = Settings(llm_prices=text, llm_price_currency="EUR")
    assert settings.llm_prices["gpt-4o-mini"].prompt_per_1k == Decimal("0.00015")
    assert Settings(llm_prices=settings.to_env()["RELAYBUS_LLM_PRICES"]).llm_prices == settings.llm_prices
    with pytest.raises(ValidationError):
        Settings(llm_price_currency="dollars")


def _completed(agent: str, correlation: str, usage: tuple[int, int], micros: int | None) -> Any:
    payload: dict[str, Any] = {"completion": {"provider": "openai", "model": "m",
                                              "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1]}}}
    if micros is not None:
        payload["cost"] = {"micros": micros, "amount": format_micros(micros), "currency": "USD"}
    return SimpleNamespace(type="llm.completed", agent=agent, task_id=None, correlation_id=correlation,
                           payload=payload)


def test_one_decoder_reads_a_call_and_reads_a_malformed_record_as_nothing_spent() -> None:
    call = call_usage(_completed("a", "w1", (11, 5), 4650))
    assert (call.agent, call.provider, call.model, call.tokens, call.cost_micros, call.cost, call.currency) == (
        "a", "openai", "m", 16, 4650, "0.00465", "USD")
    for payload in (None, "text", {"completion": "x"}, {"completion": {"usage": {"prompt_tokens": True,
                                                                                 "completion_tokens": -3}},
                                                          "cost": {"micros": "12"}}):
        odd = call_usage(SimpleNamespace(type="llm.completed", agent=None, task_id=None, correlation_id=None,
                                         payload=payload))
        assert (odd.provider, odd.model, odd.tokens, odd.cost_micros, odd.cost) == (None, None, 0, None, "")


def test_usage_folds_tokens_and_cost_per_agent_and_workflow_and_says_what_was_unpriced() -> None:
    events = [_completed("a", "w1", (11, 5), 4650), _completed("a", "w2", (11, 5), None),
              _completed("b", "w1", (1, 1), 1),
              SimpleNamespace(type="pipeline.started", agent="system", correlation_id="w1",
                              task_id=None, payload={"budget": {"tokens": 50}})]
    by_agent = llm_usage(events)
    assert [(u.agent, u.calls, u.tokens, u.cost_micros, u.priced_calls) for u in by_agent] == [
        ("a", 2, 32, 4650, 1), ("b", 1, 2, 1, 1)]
    by_workflow = {u.correlation_id: u for u in llm_usage(events, by=("correlation_id",))}
    assert by_workflow["w1"].cost == "0.004651"
    w1 = [e for e in events if e.correlation_id == "w1"]
    assert spending_summary(w1) == "llm: 2 calls, 18 tokens, 0.004651 USD of budget 50 tokens"
