"""Dispatches as the log knows them: their deterministic ids, and rebuilding the unfinished ones.

A command the executor sent is recorded as its event (``saga.step.started``...). When the sender may
have died before sending (a redelivered callback), or the step has gone silent (the sweep), the
command is rebuilt from the saga's state and the record that started it: same task, same input or
recorded step output, same idempotency keys, same attempt. Sending it again is safe because steps
and compensations are idempotent under those keys.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from relaybus.eventstore import RecordedEvent
from relaybus.sagas.commands import RunCompensation, RunStep, idempotency_key
from relaybus.sagas.definition import SagaDefinition
from relaybus.sagas.events import (
    CompensationFailed,
    CompensationStarted,
    CompensationSucceeded,
    SagaEvent,
    StepFailed,
    StepStarted,
    StepSucceeded,
    StepTimedOut,
    record_id,
)
from relaybus.sagas.state import SagaState

Dispatchable = RunStep | RunCompensation
Kind = Literal["step", "compensation"]
_TASK_IDS = uuid.UUID("3b0f7c62-31e4-4c1b-8f8e-5f0e7e1d9a27")
_STEP_EVENTS = (StepStarted, StepSucceeded, StepFailed, StepTimedOut)
_COMPENSATION_EVENTS = (CompensationStarted, CompensationSucceeded, CompensationFailed)


def dispatch_id(saga_id: str, step: str, member: str, kind: Kind, attempt: int) -> str:
    """The task id of one dispatch: the same command always gets the same id (logs, result backend, events)."""
    return str(uuid.uuid5(_TASK_IDS, f"{saga_id}:{step}:{member}:{kind}:{attempt}"))


def dispatch_id_of(command: Dispatchable) -> str:
    kind: Kind = "step" if isinstance(command, RunStep) else "compensation"
    return dispatch_id(command.saga_id, command.step, command.member, kind, command.attempt)


def task_id_of(event: SagaEvent) -> str | None:
    """The task a member event is about (``None`` for saga-level events)."""
    if isinstance(event, _STEP_EVENTS):
        return dispatch_id(event.saga_id, event.step, event.member, "step", event.attempt)
    if isinstance(event, _COMPENSATION_EVENTS):
        return dispatch_id(event.saga_id, event.step, event.member, "compensation", event.attempt)
    return None


@dataclass(frozen=True)
class InFlight:
    """A recorded, unfinished dispatch: the command rebuilt from the log, when and why it started."""

    command: Dispatchable
    started_at: datetime
    caused_by: str | None


def in_flight(definition: SagaDefinition, state: SagaState, records: Sequence[RecordedEvent]) -> list[InFlight]:
    """Every running step attempt and compensation of ``state``, rebuilt as the command that started it."""
    by_id = {r.event_id: r for r in records}
    found = []
    for m in state.members:
        step_key = idempotency_key(state.saga_id, m.step, m.member, "step")
        command: Dispatchable
        if m.outcome == "running" and m.deadline is not None:
            command = RunStep(
                saga_id=state.saga_id,
                step=m.step,
                member=m.member,
                task=definition.member(m.step, m.member).task,
                input=m.input,
                idempotency_key=step_key,
                attempt=m.attempt,
                deadline=m.deadline,
            )
        elif m.compensation is not None and m.compensation.status == "running":
            command = RunCompensation(
                saga_id=state.saga_id,
                step=m.step,
                member=m.member,
                task=m.compensation.task,
                step_output=m.output,
                step_outcome="unknown" if m.outcome == "unknown" else "succeeded",
                step_idempotency_key=step_key,
                idempotency_key=idempotency_key(state.saga_id, m.step, m.member, "compensation"),
                attempt=m.compensation.attempt,
            )
        else:
            continue
        record = by_id.get(record_id(command.event()))
        if record is not None:
            found.append(InFlight(command, record.occurred_at, record.causation_id))
    return found


def still_running(state: SagaState, command: Dispatchable) -> bool:
    """Whether ``command``'s attempt is still the running one in ``state`` (worth sending again)."""
    member = state.member(command.step, command.member)
    if isinstance(command, RunStep):
        return member.outcome == "running" and member.attempt == command.attempt
    c = member.compensation
    return c is not None and c.status == "running" and c.attempt == command.attempt
