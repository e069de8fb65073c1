"""The next action of a saga, decided by pure functions of its definition, state and the time.

Forward, while the saga is ``running``: steps run in order, the members of a parallel step start
together, the next step starts once every member succeeded. A member timed out under
``on_timeout="retry"`` is dispatched again with the same idempotency key.

Backward, once anything failed for good (a clean failure, a timeout under ``"compensate"``, or the
last allowed attempt timing out): no step starts any more; when no member is still running, the
members that may have had effects (``succeeded`` or ``unknown``) are compensated in strict reverse
order. The compensations of one step start together, and only once every compensation of every
later step has ended; a failed compensation does not stop the earlier ones. A member that never
ran or failed cleanly is not compensated, nor is a step without a compensation task.

The failing step itself is undone only when its outcome is unknown. Temporal's saga tutorial
registers each undo before its activity runs, so it always undoes the failing step too. A clean
failure is known to have had no effect, so we skip it; a timeout is not, so we undo it.

This avoids the naive-saga bug (research/peers.md section 3): walking ``reversed(all_steps)`` and
stopping at the failed step visits only steps that never ran and none that did.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from pydantic import JsonValue

from relaybus.sagas.commands import (
    Command,
    FinalStatus,
    Finish,
    MarkTimedOut,
    RunCompensation,
    RunStep,
    idempotency_key,
)
from relaybus.sagas.definition import SagaDefinition, members_of
from relaybus.sagas.errors import InvalidTransition
from relaybus.sagas.events import SagaResumed, SagaStarted
from relaybus.sagas.state import MemberState, SagaState, output_of


def start(
    definition: SagaDefinition, saga_id: str, input: JsonValue = None, budget: dict[str, JsonValue] | None = None
) -> SagaStarted:
    """The first event of a new saga; its first step receives ``input``; ``budget`` caps its LLM calls."""
    return SagaStarted(saga_id=saga_id, saga=definition.name, data=input, budget=budget)


def resume(state: SagaState) -> SagaResumed:
    """The event a person records once they fixed what made compensations fail.

    Folding it puts the failed compensations back to pending; :func:`decide` then re-issues those
    and only those, in reverse step order, with the next attempt number and the same keys.
    """
    event = SagaResumed(saga_id=state.saga_id, attempt=state.round + 1)
    if state.status != "compensation_failed":
        raise InvalidTransition(event, f"only a compensation_failed saga resumes, it is {state.status}")
    return event


def decide(definition: SagaDefinition, state: SagaState, now: datetime) -> list[Command]:
    """The commands to carry out now; an empty list means wait for a result (or the next sweep).

    Call it again after recording the events of its commands, after every task result, and from a
    periodic sweep: a running member past its deadline yields :class:`MarkTimedOut` and nothing
    else, because what comes next depends on that timeout.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if state.saga != definition.name:
        raise ValueError(f"state of saga {state.saga!r} decided with definition {definition.name!r}")
    if state.terminal:
        return []
    overdue: list[Command] = [
        MarkTimedOut(saga_id=state.saga_id, step=m.step, member=m.member, attempt=m.attempt)
        for m in state.running
        if m.deadline is not None and now > m.deadline
    ]
    if overdue:
        return overdue
    if state.status == "running":
        return _forward(definition, state, now)
    return _backward(state)


def _forward(definition: SagaDefinition, state: SagaState, now: datetime) -> list[Command]:
    for index, (spec, step) in enumerate(zip(definition.steps, state.steps, strict=True)):
        if step.succeeded:
            continue
        step_input = state.input if index == 0 else output_of(state.steps[index - 1])
        commands: list[Command] = []
        for member_spec, m in zip(members_of(spec), step.members, strict=True):
            # While the saga runs, an unknown member is one whose timeout policy allows another try.
            if m.outcome not in ("pending", "unknown"):
                continue
            commands.append(
                RunStep(
                    saga_id=state.saga_id,
                    step=m.step,
                    member=m.member,
                    task=member_spec.task,
                    input=step_input,
                    idempotency_key=idempotency_key(state.saga_id, m.step, m.member, "step"),
                    attempt=m.attempt + 1,
                    deadline=now + timedelta(seconds=member_spec.timeout_s),
                )
            )
        return commands
    return [Finish(saga_id=state.saga_id, status="completed", output=state.output)]


def _backward(state: SagaState) -> list[Command]:
    if state.running:
        return []  # a running member may still succeed and need undoing first; the sweep bounds the wait
    for step in reversed(state.steps):
        undo = [m for m in step.members if m.needs_compensation]
        if any(m.compensation and not m.compensation.ended for m in undo):
            return [_compensate(state, m) for m in undo if m.compensation and m.compensation.status == "pending"]
    failed = any(m.compensation and m.compensation.status == "failed" for m in state.members if m.needs_compensation)
    status: FinalStatus = "compensation_failed" if failed else "compensated"
    return [Finish(saga_id=state.saga_id, status=status, attempt=state.round)]


def _compensate(state: SagaState, m: MemberState) -> RunCompensation:
    assert m.compensation is not None
    outcome: Literal["succeeded", "unknown"] = "unknown" if m.outcome == "unknown" else "succeeded"
    return RunCompensation(
        saga_id=state.saga_id,
        step=m.step,
        member=m.member,
        task=m.compensation.task,
        step_output=m.output,
        step_outcome=outcome,
        step_idempotency_key=idempotency_key(state.saga_id, m.step, m.member, "step"),
        idempotency_key=idempotency_key(state.saga_id, m.step, m.member, "compensation"),
        attempt=m.compensation.attempt + 1,
    )
