"""Agents used only by the integration tests. Workers import this module (RELAYBUS_EXTRA_MODULES).

Each agent writes what it saw to a Redis list named by its input, so a test can read, from outside
the worker, which tasks ran, in what order, with which ids and on which attempt.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis
from celery.exceptions import Reject
from pydantic import Field

from relaybus.tasks.errors import TransientError
from relaybus.tasks.runtime.task import AgentContext, AgentModel, agent

_redis: redis.Redis | None = None


def r() -> redis.Redis:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(os.environ.get("RELAYBUS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    return _redis


def note(key: str, ctx: AgentContext, **extra: Any) -> None:
    r().rpush(
        key,
        json.dumps(
            {
                "agent": ctx.agent,
                "task_id": ctx.task_id,
                "correlation_id": ctx.correlation_id,
                "causation_id": ctx.causation_id,
                "attempt": ctx.attempt,
                "priority": ctx.priority,
                "pid": os.getpid(),
                **extra,
            }
        ),
    )


class ProbeInput(AgentModel):
    key: str
    label: str = ""
    sleep_s: float = Field(default=0.0, ge=0, le=60)
    #: A wall-clock instant (``time.time()``) to wait for, so that the tasks running then finish together.
    until: float = 0.0
    fail_first: int = Field(default=0, ge=0)
    value: int = 0
    api_key: str | None = None  # a secret that must never reach the event log
    #: Raise Celery's ``Reject(reject, requeue=False)``: the task refuses its message.
    reject: str = ""
    #: Raise ``Reject(requeue=True)`` on the first delivery only: the task gives its message back once.
    give_back_once: bool = False
    #: Raise ``Reject(requeue=True)`` on every delivery: the task always gives its message back.
    give_back: bool = False

    @classmethod
    def from_upstream(cls, upstream: Any, kwargs: dict[str, Any]) -> ProbeInput:
        values = upstream if isinstance(upstream, list) else [upstream]
        total = sum(int(v.get("value", 0)) for v in values if isinstance(v, dict))
        return cls.model_validate({**kwargs, "value": kwargs.get("value", 0) + total})


class ProbeOutput(AgentModel):
    label: str
    value: int


@agent("probe", input=ProbeInput, output=ProbeOutput)
def probe(inp: ProbeInput, ctx: AgentContext) -> ProbeOutput:
    note(inp.key, ctx, label=inp.label, event="start")
    if inp.sleep_s:
        time.sleep(inp.sleep_s)
    if inp.until:
        time.sleep(min(60.0, max(0.0, inp.until - time.time())))
    if inp.reject:
        raise Reject(inp.reject, requeue=False)
    if inp.give_back or (inp.give_back_once and r().set(f"{inp.key}:given-back", 1, nx=True, ex=600)):
        raise Reject("not now", requeue=True)
    if inp.fail_first and ctx.attempt <= inp.fail_first:
        raise TransientError(f"planned transient failure on attempt {ctx.attempt}")
    note(inp.key, ctx, label=inp.label, event="done")
    return ProbeOutput(label=inp.label, value=inp.value + 1)


class FlakyInput(AgentModel):
    key: str


class FlakyOutput(AgentModel):
    ok: bool


@agent("flaky", input=FlakyInput, output=FlakyOutput, max_retries=2)
def flaky(inp: FlakyInput, ctx: AgentContext) -> FlakyOutput:
    note(inp.key, ctx, event="start")
    raise TransientError(f"upstream unavailable (attempt {ctx.attempt})")
