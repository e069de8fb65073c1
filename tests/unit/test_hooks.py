"""The task base's hooks: run in list order at each point, a no-op point costs nothing, failures keep their order."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery
from celery.exceptions import Reject

from relaybus.eventstore import StoreUnavailable
from relaybus.tasks.errors import PermanentError
from relaybus.tasks.runtime.config import RuntimeConfig
from relaybus.tasks.runtime.hooks import (
    DEFAULT_HOOKS,
    NO_RESULT,
    Call,
    DeadLetters,
    Hook,
    Recording,
    RepairChords,
    SettleChordMembers,
    points,
)
from relaybus.tasks.runtime.task import AgentContext, AgentModel, AgentSpec, AgentTask


class In(AgentModel):
    fail: bool = False


class Out(AgentModel):
    ok: bool


def body(inp: In, ctx: AgentContext) -> Out:
    if inp.fail:
        raise PermanentError("no")
    return Out(ok=True)


class Trace(Hook):
    def __init__(self, name: str, log: list[str], result: Any = NO_RESULT) -> None:
        self.name, self.log, self.result = name, log, result

    def before_call(self, call: Call) -> None:
        self.log.append(f"{self.name}.before_call")

    def on_failure(self, call: Call, error: BaseException, reason: str) -> Any:
        self.log.append(f"{self.name}.on_failure:{reason}")
        return self.result

    def on_success(self, call: Call, result: Any) -> None:
        self.log.append(f"{self.name}.on_success")


def unused_run() -> None:
    """The body is AgentTask.__call__."""


def traced_task(*hooks: Hook) -> AgentTask:
    app = Celery("hooks-test", broker="memory://", set_as_current=False)
    app.conf.relaybus_runtime = RuntimeConfig(record_events=False)
    base = type("Traced", (AgentTask,), {"hooks": hooks})
    task: AgentTask = app.task(
        name="agents.traced", base=base, spec=AgentSpec("traced", In, Out, body), bind=False, shared=False
    )(unused_run)
    task.push_request(id="t-1", retries=0, called_directly=False, headers={}, delivery_info={})
    return task


def test_default_hooks_dead_letter_then_record_then_settle_a_failure():
    failure = [type(bound.__self__) for bound in points(DEFAULT_HOOKS).on_failure]
    assert failure == [DeadLetters, Recording, SettleChordMembers]
    # Recording clears the store-wait deadline once Celery has published what follows the task.
    assert [type(bound.__self__) for bound in points(DEFAULT_HOOKS).after_return] == [Recording, RepairChords]


def test_a_point_a_hook_does_not_override_is_left_out():
    log: list[str] = []
    indexed = points((Hook(), Trace("a", log)))
    assert len(indexed.before_call) == 1 and indexed.on_retry == () and indexed.after_return == ()


def test_hooks_run_in_list_order_around_a_successful_call():
    log: list[str] = []
    task = traced_task(Trace("a", log), Trace("b", log))
    assert task() == {"ok": True}
    assert log == ["a.before_call", "b.before_call", "a.on_success", "b.on_success"]


def test_a_failure_raises_unless_a_hook_supplies_a_result_and_the_first_one_wins():
    log: list[str] = []
    with pytest.raises(PermanentError):
        traced_task(Trace("a", log))(fail=True)
    assert log == ["a.before_call", "a.on_failure:permanent-error"]
    task = traced_task(Trace("a", log), Trace("b", log, result="first"), Trace("c", log, result="second"))
    assert task(fail=True) == "first"
    assert log[-3:] == ["a.on_failure:permanent-error", "b.on_failure:permanent-error", "c.on_failure:permanent-error"]


def test_a_record_the_store_cannot_take_gives_the_message_back():
    class Away:
        def task_succeeded(self, *args: Any) -> None:
            raise StoreUnavailable("down")

    call = Call(traced_task(), None, (), {}, 0.0, Away())  # type: ignore[arg-type]
    with pytest.raises(Reject) as excinfo:
        Recording().on_success(call, {})
    assert excinfo.value.requeue and isinstance(excinfo.value.__cause__, StoreUnavailable)
