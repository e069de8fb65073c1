"""Backoff cap, time limit and delays against RabbitMQ's consumer_timeout (issue 13, fault 11).

Each of ``retry_backoff_max_s`` and ``time_limit_s`` was bounded below the consumer timeout on its own, but a
retried delivery is held for both (its countdown, then its run): 1500 + 1700 s passed validation and the
worker exited with PreconditionFailed 406. One check now bounds their sum, and a countdown or eta that would
be held past the timeout is refused.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from relaybus.celery import runtime_from
from relaybus.settings import Settings
from relaybus.tasks.runtime.config import RuntimeConfig

NOW = datetime(2026, 12, 4, 6, 0, tzinfo=UTC)


def test_backoff_cap_and_time_limit_that_each_fit_but_not_together_are_refused() -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(retry_backoff_max_s=1500, time_limit_s=1700, soft_time_limit_s=1600)
    message = str(refused.value)
    for named in ("retry_backoff_max_s (1500 s, RELAYBUS_RETRY_BACKOFF_MAX_S)",
                  "time_limit_s (1700 s, RELAYBUS_TIME_LIMIT_S)", "= 3200 s",
                  "consumer_timeout_s (1800 s, RELAYBUS_CONSUMER_TIMEOUT_S)"):
        assert named in message


def test_the_sum_must_stay_strictly_below_the_consumer_timeout() -> None:
    with pytest.raises(ValidationError):
        Settings(retry_backoff_max_s=1000, time_limit_s=800)
    assert Settings(retry_backoff_max_s=1000, time_limit_s=799).time_limit_s == 799


def test_a_longer_consumer_timeout_allows_longer_limits_and_a_shorter_one_refuses_the_defaults() -> None:
    assert Settings(consumer_timeout_s=7200, retry_backoff_max_s=3000, time_limit_s=3600).retry_backoff_max_s == 3000
    with pytest.raises(ValidationError, match="consumer_timeout_s \\(900 s"):
        Settings(consumer_timeout_s=900)  # defaults: 600 + 360


def config(**overrides: float) -> RuntimeConfig:
    return runtime_from(Settings(**overrides))  # type: ignore[arg-type]


def test_a_countdown_held_past_the_consumer_timeout_minus_the_time_limit_is_refused() -> None:
    runtime = config()  # 1800 s timeout, 360 s hard limit: 1440 s of delay at most
    assert runtime.check_delay(countdown=1439) is None
    problem = runtime.check_delay(countdown=1440)
    assert problem is not None
    assert "countdown 1440 s" in problem and "consumer_timeout_s 1800 s" in problem and "1440 s" in problem
    assert runtime.check_delay(countdown=3600) is not None


def test_an_eta_is_measured_from_now_and_a_naive_one_is_utc() -> None:
    runtime = config()
    assert runtime.check_delay(eta=NOW + timedelta(minutes=20), now=NOW) is None
    assert runtime.check_delay(eta=NOW + timedelta(minutes=25), now=NOW) is not None
    assert runtime.check_delay(eta=(NOW + timedelta(hours=2)).replace(tzinfo=None), now=NOW) is not None
    assert runtime.check_delay(eta=(NOW + timedelta(hours=2)).isoformat(), now=NOW) is not None
    assert runtime.check_delay(eta=NOW - timedelta(days=1), now=NOW) is None  # overdue: runs at once
    assert runtime.check_delay(eta="next tuesday") == "eta 'next tuesday' is not an ISO 8601 date"


def test_countdown_wins_over_eta_as_in_celery_and_no_delay_is_fine() -> None:
    runtime = config()
    assert runtime.check_delay(countdown=10, eta=NOW + timedelta(days=1), now=NOW) is None
    assert runtime.check_delay() is None


def test_a_task_with_its_own_time_limit_is_checked_with_it() -> None:
    runtime = config()
    assert runtime.check_delay(countdown=1700, time_limit_s=60) is None
    assert runtime.check_delay(countdown=1000, time_limit_s=900) is not None


def test_an_agent_time_limit_is_checked_with_the_backoff_cap() -> None:
    runtime = config()  # 600 s backoff cap
    assert runtime.check_time_limit(None) is None
    assert runtime.check_time_limit(1199) is None
    problem = runtime.check_time_limit(1200)
    assert problem is not None and "time limit 1200 s + retry_backoff_max_s 600 s" in problem
