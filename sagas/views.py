"""What a person (or a client) reads of a saga: its status, each step's outcome and timings, its history.

A read model built from the stored records of one saga (:class:`~sagas.repository.LoadedSaga`):
the state comes from the fold, the times from the records' ``occurred_at``. Frozen pydantic models,
so the CLI prints them as JSON and a client gets them from :func:`tasks.saga.saga_status`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, JsonValue

from relaybus.eventstore.types import (
    SAGA_COMPENSATION_FAILED,
    SAGA_COMPENSATION_STARTED,
    SAGA_COMPENSATION_SUCCEEDED,
    SAGA_RESUMED,
    SAGA_STEP_FAILED,
    SAGA_STEP_STARTED,
    SAGA_STEP_SUCCEEDED,
    SAGA_STEP_TIMED_OUT,
    TERMINAL_SAGA_STATUS,
)
from relaybus.sagas.events import from_record
from relaybus.sagas.repository import LoadedSaga
from relaybus.sagas.state import CompensationStatus, Outcome, SagaStatus

_STEP_ENDS = frozenset({SAGA_STEP_SUCCEEDED, SAGA_STEP_FAILED, SAGA_STEP_TIMED_OUT})
_COMPENSATION_ENDS = frozenset({SAGA_COMPENSATION_SUCCEEDED, SAGA_COMPENSATION_FAILED})


class _View(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


#: ``not_needed``: the saga ended or is compensating and this compensation will never run: its step had no
#: effects to undo (it failed or never ran), or the saga completed.
CompensationViewStatus = CompensationStatus | Literal["not_needed"]


class CompensationView(_View):
    task: str
    status: CompensationViewStatus
    attempt: int
    started_at: datetime | None = None
    ended_at: datetime | None = None
    error: JsonValue = None


class StepView(_View):
    """One member of a step (a plain step is its own single member)."""

    step: str
    member: str
    task: str
    outcome: Outcome
    attempt: int
    started_at: datetime | None = None
    ended_at: datetime | None = None
    duration_s: float | None = None
    deadline: datetime | None = None
    timed_out: bool = False
    error: JsonValue = None
    compensation: CompensationView | None = None


class HistoryEntry(_View):
    version: int
    type: str
    at: datetime
    step: str | None = None
    member: str | None = None
    attempt: int | None = None


class SagaView(_View):
    saga_id: str
    saga: str
    correlation_id: str
    status: SagaStatus
    round: int
    version: int
    started_at: datetime
    updated_at: datetime
    ended_at: datetime | None = None
    duration_s: float | None = None
    input: JsonValue = None
    output: JsonValue = None
    steps: list[StepView]
    history: list[HistoryEntry]


def view_of(loaded: LoadedSaga) -> SagaView:
    state = loaded.state
    step_times: dict[tuple[str, str], dict[int, list[datetime | None]]] = {}
    undo_times: dict[tuple[str, str], dict[int, list[datetime | None]]] = {}
    history: list[HistoryEntry] = []
    ended_at: datetime | None = None
    for record in loaded.records:
        event = from_record(record.type, record.payload, record.schema_version)
        step, member, attempt = (getattr(event, name, None) for name in ("step", "member", "attempt"))
        history.append(
            HistoryEntry(
                version=record.version,
                type=record.type,
                at=record.occurred_at,
                step=step,
                member=member,
                attempt=attempt,
            )
        )
        if record.type in TERMINAL_SAGA_STATUS:
            ended_at = record.occurred_at
        elif record.type == SAGA_RESUMED:
            ended_at = None
        if step is None or member is None or not isinstance(attempt, int):
            continue
        times = step_times if record.type.startswith("saga.step.") else undo_times
        slot = times.setdefault((step, member), {}).setdefault(attempt, [None, None])
        if record.type in (SAGA_STEP_STARTED, SAGA_COMPENSATION_STARTED):
            slot[0] = slot[0] or record.occurred_at
        elif record.type in _STEP_ENDS | _COMPENSATION_ENDS:
            slot[1] = slot[1] or record.occurred_at

    steps = []
    for m in state.members:
        started, ended = step_times.get((m.step, m.member), {}).get(m.attempt, [None, None])
        if m.outcome in ("pending", "running"):
            ended = None
        compensation = None
        if m.compensation is not None:
            c = m.compensation
            c_started, c_ended = undo_times.get((m.step, m.member), {}).get(c.attempt, [None, None])
            settled = state.status != "running" and (state.status == "completed" or not m.may_have_effects)
            compensation = CompensationView(
                task=c.task,
                status="not_needed" if c.status == "pending" and settled else c.status,
                attempt=c.attempt,
                started_at=c_started,
                ended_at=c_ended if c.ended else None,
                error=c.error,
            )
        steps.append(
            StepView(
                step=m.step,
                member=m.member,
                task=loaded.definition.member(m.step, m.member).task,
                outcome=m.outcome,
                attempt=m.attempt,
                started_at=started,
                ended_at=ended,
                duration_s=_seconds(started, ended),
                deadline=m.deadline,
                timed_out=m.timed_out,
                error=m.error,
                compensation=compensation,
            )
        )
    started_at = loaded.records[0].occurred_at
    ended_at = ended_at if state.terminal else None
    return SagaView(
        saga_id=state.saga_id,
        saga=state.saga,
        correlation_id=loaded.correlation_id,
        status=state.status,
        round=state.round,
        version=loaded.version,
        started_at=started_at,
        updated_at=loaded.records[-1].occurred_at,
        ended_at=ended_at,
        duration_s=_seconds(started_at, ended_at),
        input=state.input,
        output=state.output if state.status == "completed" else None,
        steps=steps,
        history=history,
    )


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round(max((end - start).total_seconds(), 0.0), 6)
