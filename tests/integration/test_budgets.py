"""Token and cost budgets per workflow (issue 18, part 3), with real workers, RabbitMQ, Redis and both logs.

The agents (tests/budget_agents.py) make one call each to a local OpenAI-compatible server, which answers
every call with 11 prompt + 5 completion tokens; a call is estimated at 20 tokens (4 of prompt, its 16
``max_tokens``). Priced at 0.15 / 0.6 per 1,000 tokens, a call costs 0.00465 and is estimated at 0.0102.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from relaybus.eventstore import open_store
from relaybus.settings import Settings
from relaybus.tasks.llm import Budget, Price
from relaybus.tasks.pipelines.client import PipelineHandle, start
from relaybus.tasks.saga import start_saga, wait_for_saga
from relaybus.web.counting import Counters
from relaybus.web.metrics import exposition
from relaybus.web.pages import llm_calls
from tests.fake_openai import FakeOpenAI, Reply, chat_completion, serving
from tests.harness import ROOT, make_settings

pytestmark = pytest.mark.timeout(90)

CALL_TOKENS = 16
CALL_MICROS = 4650
PRICES = {"fake-model": Price(prompt_per_1k=Decimal("0.15"), completion_per_1k=Decimal("0.6"))}


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    yield from serving(Reply(body=chat_completion(text="ok", model="fake-model", usage=(11, 5))))


@pytest.fixture
def settings(tmp_path: Path, broker_url: str, redis_url: str, eventstore_url: str, fake_openai: FakeOpenAI) -> Settings:
    return make_settings(
        tmp_path, broker_url, redis_url, eventstore_url=eventstore_url,
        extra_modules=("tests.budget_agents",), extra_agents=("spender", "gatherer"),
        llm_provider="openai", llm_base_url=fake_openai.base_url, llm_model="fake-model", llm_prices=PRICES,
    )


def prompts(fake: FakeOpenAI) -> list[str]:
    return [r.body["messages"][-1]["content"] for r in fake.received]


def relaybus(settings: Settings, tmp_path: Path, *argv: str) -> str:
    env = {**os.environ, **settings.to_env(), "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    shown = subprocess.run([sys.executable, "-m", "relaybus.cli", *argv], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    return shown.stdout


def test_a_call_over_the_token_budget_is_refused_unsent_and_fails_the_pipeline_with_budget_exceeded(
    settings: Settings, app: Celery, start_worker: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    start_worker("system", "spender")
    started = relaybus(settings, tmp_path, "run", "budget-three-calls", "--input", '{"text": "go"}',
                       "--budget-tokens", "50", "--no-wait")
    handle = PipelineHandle(started.strip(), app)
    outcome = handle.wait(timeout=45)

    assert outcome.status == "failed"
    # (Its step is named by task, and the three steps share agents.spender: the pipeline names the first.)
    assert outcome.reason is not None and outcome.reason.startswith("budget-exceeded: step "), outcome.reason
    assert "has spent 32 tokens; this call (estimated 20 tokens) would exceed its budget of 50" in outcome.reason
    assert len(fake_openai.received) == 2  # 16 + 16 spent; the third call (est. 20) would reach 52: never sent
    events = handle.events()
    types = [e.type for e in events]
    started = next(e for e in events if e.type == "pipeline.started")
    assert started.payload["budget"] == {"tokens": 50}
    completed = [e for e in events if e.type == "llm.completed"]
    assert [e.payload["cost"] for e in completed] == [{"micros": CALL_MICROS, "amount": "0.00465",
                                                      "currency": "USD"}] * 2
    refused = next(e for e in events if e.type == "budget.exceeded")
    assert refused.payload["limit"] == "tokens"
    assert refused.payload["spent"]["tokens"] == 2 * CALL_TOKENS and refused.payload["estimate"]["tokens"] == 20
    dead = next(e for e in events if e.type == "task.dead_lettered")
    assert (dead.payload["reason"], dead.payload["attempts"], dead.agent) == ("budget-exceeded", 1, "spender")
    assert "task.retried" not in types  # permanent: no retry
    assert types.index("budget.exceeded") < types.index("task.failed") < types.index("pipeline.failed")

    timeline = relaybus(settings, tmp_path, "timeline", handle.id)
    print(timeline)
    assert "budget.exceeded" in timeline and "failed" in timeline
    assert f"llm: 2 calls, {2 * CALL_TOKENS} tokens, 0.0093 USD of budget 50 tokens" in timeline
    stats = relaybus(settings, tmp_path, "stats")
    print(stats)
    assert "llm usage" in stats and "0.0093 USD" in stats
    # The console's LLM calls table and /metrics read the same records.
    assert [c["cost"] for c in llm_calls(events)] == ["0.00465", "0.00465"]
    store = open_store(settings.eventstore_url)
    try:
        scraped = exposition(lambda: [], store, Counters(store)).decode()
    finally:
        store.close()
    assert 'relaybus_llm_cost_total{agent="spender",currency="USD",model="fake-model"} 0.0093' in scraped


def test_a_saga_whose_step_is_refused_over_its_cost_budget_compensates_last_first(
    settings: Settings, app: Celery, start_worker: Any, fake_openai: FakeOpenAI
) -> None:
    start_worker("system", "spender")
    # Each step costs 0.00465, estimated 0.0102: after two steps (0.0093) the third would reach 0.0195 > 0.015.
    saga_id = start_saga("budget_three_steps", {"text": "go"}, budget=Budget(cost=Decimal("0.015")), app=app)
    view = wait_for_saga(saga_id, timeout=45, app=app)

    assert view.status == "compensated"
    # Two steps were sent, the third was not; the compensations' own calls are charged but never refused.
    assert prompts(fake_openai) == ["stp", "stp", "udo", "udo"]
    store = open_store(settings.eventstore_url)
    try:
        events = list(store.by_correlation(saga_id))
    finally:
        store.close()
    saga_started = next(e for e in events if e.type == "saga.started")
    assert saga_started.payload["budget"] == {"cost": "0.015"}
    refused = next(e for e in events if e.type == "budget.exceeded")
    assert (refused.payload["limit"], refused.payload["spent"]["cost"], refused.payload["budget"]) == (
        "cost", "0.0093", {"cost": "0.015"})
    failed = next(e for e in events if e.type == "saga.step.failed")
    assert (failed.payload["step"], failed.payload["data"]["error_type"]) == ("three", "BudgetExceeded")
    undone = [e.payload["step"] for e in events if e.type == "saga.compensation.succeeded"]
    assert undone == ["two", "one"]
    assert sum(e.payload["cost"]["micros"] for e in events if e.type == "llm.completed") == 4 * CALL_MICROS


@pytest.mark.parametrize("eventstore_url", ["sqlite"], indirect=True)  # the same on both logs
def test_concurrent_branches_of_a_chord_do_not_spend_past_the_budget(
    settings: Settings, app: Celery, start_worker: Any, fake_openai: FakeOpenAI, eventstore_url: str
) -> None:
    start_worker("system", "spender", "gatherer", concurrency=4)
    # Four branches at once, 20 tokens estimated each: a budget of 50 lets two in, whatever the timing.
    handle = start("budget-fan", {"text": "go"}, budget={"tokens": 50}, app=app)
    outcome = handle.wait(timeout=45)

    assert outcome.status == "failed" and outcome.reason and outcome.reason.startswith("budget-exceeded")
    spent = sum(e.payload["completion"]["usage"]["prompt_tokens"] + e.payload["completion"]["usage"]
                ["completion_tokens"] for e in handle.events() if e.type == "llm.completed")
    assert spent <= 50
    assert len(fake_openai.received) == 2


@pytest.mark.parametrize("eventstore_url", ["sqlite"], indirect=True)  # the same on both logs
def test_without_reservations_each_concurrent_branch_overshoots_by_at_most_its_one_call(
    settings: Settings, app: Celery, start_worker: Any, fake_openai: FakeOpenAI, eventstore_url: str
) -> None:
    # The reservations' Redis is unreachable: every check reads the log alone (README, Budgets).
    away = settings.model_copy(update={"llm_budget_redis_url": "redis://127.0.0.1:1/0"})
    start_worker("system", "spender", "gatherer", concurrency=4, settings=away)
    handle = start("budget-fan", {"text": "go"}, budget={"tokens": 50}, app=app)
    outcome = handle.wait(timeout=45)

    # All four may pass their checks before any call is recorded: then nothing is refused and the run completes,
    # 14 tokens over its budget. Otherwise a late branch sees the spending and is refused.
    refused = outcome.status == "failed" and outcome.reason and outcome.reason.startswith("budget-exceeded")
    assert refused or outcome.status == "completed", outcome
    calls = len(fake_openai.received)
    print(f"without reservations: {calls} of 4 concurrent calls sent, {calls * CALL_TOKENS} tokens of 50")
    assert 2 <= calls <= 4  # the budget fits 2 (3 would be 48 + 20 > 50); up to 4 branches, one call each
