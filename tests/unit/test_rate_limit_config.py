"""Global rate limits without a Redis: their settings, token estimates, deferral countdowns, ids and the waits fold."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from relaybus.celery import runtime_from
from relaybus.eventstore import NewEvent, open_store
from relaybus.settings import Settings
from relaybus.tasks.errors import is_transient
from relaybus.tasks.llm import (
    ChatMessage,
    CompletionRequest,
    RateLimit,
    RateLimited,
    RateLimits,
    RequestOverLimit,
    estimate_tokens,
)
from relaybus.tasks.runtime.config import RuntimeConfig
from relaybus.tasks.runtime.deferral import COUNTDOWN_SHARE, countdown_for
from relaybus.tasks.runtime.recording import records

LIMITS = {"openai/gpt-4o-mini": RateLimit(requests=500, tokens=200_000)}


def test_a_limit_needs_requests_or_tokens_and_a_sane_period() -> None:
    with pytest.raises(ValidationError, match="needs requests, tokens or both"):
        RateLimit()
    with pytest.raises(ValidationError):
        RateLimit(requests=10, period_s=0)
    assert RateLimit(tokens=1000).period_s == 60.0


def test_limits_without_a_redis_are_refused_naming_the_setting() -> None:
    with pytest.raises(ValidationError, match="RELAYBUS_LLM_RATE_LIMIT_REDIS_URL"):
        Settings(result_backend="db+sqlite:///results.sqlite", llm_rate_limits=LIMITS)
    with pytest.raises(ValidationError, match="need a Redis"):
        RateLimits(limits=LIMITS)


def test_the_result_backend_holds_the_windows_unless_another_redis_is_named() -> None:
    settings = Settings(result_backend="redis://127.0.0.1:6379/3", llm_rate_limits=LIMITS)
    assert settings.rate_limit_redis_url == "redis://127.0.0.1:6379/3"
    other = settings.model_copy(update={"llm_rate_limit_redis_url": "redis://limits:6379/0"})
    assert other.rate_limit_redis_url == "redis://limits:6379/0"


def test_the_settings_reach_the_runtime_and_survive_the_trip_through_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = Settings(namespace="prod", llm_rate_limits=LIMITS, llm_rate_limit_urgent_priority="high",
                        llm_rate_limit_urgent_reserve=0.3)
    limits = runtime_from(settings).rate_limits
    assert (limits.namespace, limits.urgent_priority, limits.urgent_reserve) == ("prod", 2, 0.3)
    assert limits.limit_for("openai", "gpt-4o-mini") == LIMITS["openai/gpt-4o-mini"]
    assert limits.limit_for("openai", "gpt-4o") is None
    env = settings.to_env()
    assert json.loads(env["RELAYBUS_LLM_RATE_LIMITS"]) == {
        "openai/gpt-4o-mini": {"requests": 500, "tokens": 200_000, "period_s": 60.0}
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings().llm_rate_limits == LIMITS


def test_a_request_is_estimated_at_its_prompt_plus_its_expected_completion() -> None:
    request = CompletionRequest(messages=(ChatMessage(role="system", content="x" * 40),
                                          ChatMessage(role="user", content="y" * 400)))
    assert estimate_tokens(request, 512) == 10 + 4 + 100 + 4 + 512
    assert estimate_tokens(request.model_copy(update={"max_tokens": 20}), 512) == 10 + 4 + 100 + 4 + 20


def test_rate_limit_errors_pickle_and_only_the_oversized_request_is_permanent() -> None:
    limited = RateLimited("openai", "m", "tokens", 1.5, 300, urgent=True)
    again = pickle.loads(pickle.dumps(limited))
    assert (again.limit, again.wait_s, again.tokens, again.urgent) == ("tokens", 1.5, 300, True)
    assert is_transient(limited)
    oversized = pickle.loads(pickle.dumps(RequestOverLimit("openai", "m", 5000, 4000)))
    assert not is_transient(oversized) and "5000 tokens" in str(oversized) and "4000" in str(oversized)


def test_a_deferral_waits_what_the_limiter_says_or_backs_off_but_never_past_the_consumer_timeout() -> None:
    config = RuntimeConfig(retry_jitter=False, retry_backoff_s=1.0, consumer_timeout_s=1800, time_limit_s=360)
    assert countdown_for(RateLimited("p", "m", "requests", 2.5), 0, config, None) == 2.5
    assert countdown_for(RateLimited("p", "m", "unavailable", None), 0, config, None) == 1.0
    assert countdown_for(RateLimited("p", "m", "unavailable", None), 3, config, None) == 8.0
    longest = (1800 - 360) * COUNTDOWN_SHARE
    assert countdown_for(RateLimited("p", "m", "tokens", 5000.0), 0, config, None) == longest
    assert config.check_delay(countdown=longest) is None
    own_limit = countdown_for(RateLimited("p", "m", "tokens", 5000.0), 0, config, 1000.0)
    assert own_limit == pytest.approx((1800 - 1000) * COUNTDOWN_SHARE)


def _request(deferrals: int | None) -> Any:
    headers = {"x_correlation_id": "wf-1"} | ({"x_deferrals": deferrals} if deferrals is not None else {})
    return SimpleNamespace(id="task-1", retries=0, delivery_info={"routing_key": "agents.asker", "priority": 2},
                           headers=headers, hostname="w@h", x_correlation_id=None, x_causation_id=None)


def test_each_run_after_a_deferral_records_its_own_start_and_earlier_ids_stay_as_they_were() -> None:
    task = SimpleNamespace(name="agents.asker", spec=SimpleNamespace(name="asker", start_records=None))
    before = records.started(task, _request(None), [], {}, "h")
    assert [e.event_id for e in before] == [e.event_id for e in records.started(task, _request(0), [], {}, "h")]
    assert before[-1].event_id == records.event_id("task-1", "started", "0:0:0")  # pinned: older logs match
    after = records.started(task, _request(1), [], {}, "h")
    assert before[-1].event_id != after[-1].event_id != records.started(task, _request(2), [], {}, "h")[-1].event_id
    deferred = records.deferred(task, _request(1), {"wait_s": 1.0}, "h")
    assert (deferred.type, deferred.priority, deferred.attempt) == ("task.deferred", 2, 1)


def test_stats_fold_the_waits_per_agent_provider_and_model(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'events.sqlite'}")
    try:
        waits = [("asker", "openai", "a", 1.0), ("asker", "openai", "a", 2.5), ("writer", "openai", "b", 0.5)]
        store.append_new([
            NewEvent(event_id=f"00000000-0000-4000-8000-00000000000{i}", stream_id="wf", type="task.deferred",
                     task_id=f"t{i}", agent=agent, payload={"provider": provider, "model": model, "wait_s": wait})
            for i, (agent, provider, model, wait) in enumerate(waits)
        ])
        rows = store.rate_limit_waits()
    finally:
        store.close()
    assert [(r.agent, r.model, r.count, r.total_wait_s, r.max_wait_s) for r in rows] == [
        ("asker", "a", 2, 3.5, 2.5), ("writer", "b", 1, 0.5, 0.5)
    ]
