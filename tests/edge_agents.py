"""An agent that misbehaves on request, for the edge tests of issue 13 (tests/chaos/test_recording_edges.py).

Workers import this module (``RELAYBUS_EXTRA_MODULES``; its agent ``edgy`` in ``RELAYBUS_EXTRA_AGENTS``).
Each call notes its start in the test Redis (``tests.agents.note``), so a test counts how often it ran.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Literal

from celery.backends.redis import RedisBackend
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import task_postrun
from pydantic import Field

from relaybus.tasks.errors import PermanentError
from relaybus.tasks.pipelines.definition import Pipeline
from relaybus.tasks.pipelines.registry import FAIL_TASK
from relaybus.tasks.runtime.task import AgentContext, AgentModel, agent
from tests.agents import note, r

SURROGATE_TEXT = b"caf\xe9".decode("utf-8", "surrogateescape")
SOFT_LIMIT_S = 6.0
HARD_LIMIT_S = 9.0

Mode = Literal[
    "ok", "nan", "surrogate_out", "surrogate_error", "permanent", "swallow_soft_limit", "exit", "exit_after_success",
    "exit_after_record", "permanent_exit_after_record",
]


class EdgyInput(AgentModel):
    key: str
    mode: Mode = "ok"
    sleep_s: float = Field(default=0.0, ge=0, le=120)


class EdgyOutput(AgentModel):
    value: float
    text: str


@agent("edgy", input=EdgyInput, output=EdgyOutput, soft_time_limit_s=SOFT_LIMIT_S, time_limit_s=HARD_LIMIT_S)
def edgy(inp: EdgyInput, ctx: AgentContext) -> EdgyOutput:
    note(inp.key, ctx, event="start", mode=inp.mode)
    if inp.mode == "swallow_soft_limit":
        # Agent code that swallows the soft limit: only the hard limit ends it.
        deadline = time.monotonic() + max(inp.sleep_s, HARD_LIMIT_S * 3)
        while time.monotonic() < deadline:
            try:
                time.sleep(0.2)
            except SoftTimeLimitExceeded:
                note(inp.key, ctx, event="soft-limit-swallowed")
    elif inp.sleep_s:
        time.sleep(inp.sleep_s)
    if inp.mode == "exit":
        os._exit(1)  # the pool child dies with the message unacknowledged, every time
    if inp.mode in ("permanent", "permanent_exit_after_record"):
        raise PermanentError(f"planned permanent failure of {inp.key}")
    if inp.mode == "surrogate_error":
        broken = b"ok-\xff".decode("utf-8", "surrogateescape")  # a lone surrogate in the message
        raise PermanentError(f"upstream sent bytes that are not UTF-8: {broken}")
    note(inp.key, ctx, event="done")
    if inp.mode == "nan":
        return EdgyOutput(value=float("nan"), text="not a number")
    if inp.mode == "surrogate_out":
        return EdgyOutput(value=1.0, text=SURROGATE_TEXT)
    return EdgyOutput(value=1.0, text="fine")


#: One step: the pipeline ends as its one ``edgy`` call does.
edgy_one: Pipeline[EdgyInput] = Pipeline("edgy-one", input=EdgyInput, description="one edgy call")
edgy_one.step("edgy")


@task_postrun.connect(weak=False)
def _kill_worker_after_success(
    task: object = None, args: tuple | None = None, kwargs: dict | None = None, state: str | None = None, **_: object
) -> None:
    """Mode ``exit_after_success``: the whole worker (its process group) is SIGKILLed once, after the task's
    success was recorded, its result stored and what follows it sent, before the ack: the broker delivers the
    message again. (A pool child that dies alone there is not enough: Celery's main process finds the stored
    success and acknowledges the message itself.)"""
    if getattr(task, "name", "") != "agents.edgy" or state != "SUCCESS":
        return
    inp = kwargs if kwargs and "key" in kwargs else next((a for a in args or () if isinstance(a, dict)), {})
    if inp.get("mode") == "exit_after_success" and r().set(f"{inp['key']}:died", "1", nx=True):
        os.killpg(os.getpgid(0), signal.SIGKILL)


_STORE_RESULT = RedisBackend.mark_as_done


#: Set (to a pipeline name) by a test: a worker dies once as that pipeline's ``pipelines.fail`` stores its result.
KILL_AT_FAIL_RESULT = "edge:kill-at-fail-result"


def _kill_worker_before_the_result_is_stored(self: RedisBackend, task_id: str, result: object,
                                             request: object = None, *args: object, **kwargs: object) -> object:
    """Mode ``exit_after_record``: the whole worker is SIGKILLed once, after the task's success was recorded
    (and what follows it sent: Celery sends a chain's next task first) but before its result is stored: the
    broker delivers the message again, and the result backend has nothing for it. The same for the system task
    ``pipelines.fail`` of the pipeline named in :data:`KILL_AT_FAIL_RESULT`."""
    inp = getattr(request, "kwargs", None) or {}
    if (getattr(request, "task", "") == "agents.edgy" and inp.get("mode") == "exit_after_record"
            and r().set(f"{inp['key']}:died", "1", nx=True)):
        os.killpg(os.getpgid(0), signal.SIGKILL)
    if (getattr(request, "task", "") == FAIL_TASK and inp.get("pipeline")
            and r().eval(_TAKE_IF_EQUAL, 1, KILL_AT_FAIL_RESULT, str(inp["pipeline"]))):
        os.killpg(os.getpgid(0), signal.SIGKILL)
    return _STORE_RESULT(self, task_id, result, request, *args, **kwargs)


# Delete the key if it holds this value: one worker dies, once, for the pipeline the test named.
_TAKE_IF_EQUAL = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


RedisBackend.mark_as_done = _kill_worker_before_the_result_is_stored  # type: ignore[method-assign]


_STORE_FAILURE = RedisBackend.mark_as_failure


def _kill_worker_before_the_failure_is_stored(self: RedisBackend, task_id: str, exc: object, *args: object,
                                              **kwargs: object) -> object:
    """Mode ``permanent_exit_after_record``: the task fails for good; the whole worker is SIGKILLed once, after
    its dead letter was published and its failure recorded, before its failure is stored and its error callbacks
    sent: the broker delivers the message again."""
    request = kwargs.get("request")
    inp = getattr(request, "kwargs", None) or {}
    if (getattr(request, "task", "") == "agents.edgy" and inp.get("mode") == "permanent_exit_after_record"
            and r().set(f"{inp['key']}:died", "1", nx=True)):
        os.killpg(os.getpgid(0), signal.SIGKILL)
    return _STORE_FAILURE(self, task_id, exc, *args, **kwargs)


RedisBackend.mark_as_failure = _kill_worker_before_the_failure_is_stored  # type: ignore[method-assign]
