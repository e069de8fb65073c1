"""The saga's events: every transition is a past-tense fact, recorded in the event store.

Member events (``saga.step.*``, ``saga.compensation.*``) carry the saga id, the step, the member
(equal to the step for a plain step), the attempt and ``data``:

=============================  ======================================================
``saga.step.started``          the step's input (and the ``deadline`` the sweep watches)
``saga.step.succeeded``        the step's output
``saga.step.failed``           the error
``saga.step.timed_out``        nothing: the outcome is unknown
``saga.compensation.started``  the step output the compensation received
``saga.compensation.succeeded``  the compensation's result, if any
``saga.compensation.failed``   the error
=============================  ======================================================

Saga events carry the saga id and, except ``saga.started``, the compensation *round*
(``attempt``: 1, then one more per ``saga.resumed``), so a stale terminal event from before a
resume is recognised as such. ``saga.started`` names the definition and holds the saga's input;
``saga.completed`` holds the last step's output.

The executor stores an event as a generic event-store row: ``to_record(event) -> (type, payload)``
with ``schema_version=EVENT_SCHEMA_VERSION`` and ``event_id=record_id(event)``, and reads it back
with ``from_record(type, payload, schema_version)``. ``dedup_key`` names the fact an event records:
a redelivered event has the same key, so the same ``record_id``, and the store's unique ``event_id``
drops the second copy (and the fold would ignore it anyway). The type strings are those of
:mod:`eventstore.types`.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, JsonValue, TypeAdapter, ValidationError

from relaybus.eventstore import types as t
from relaybus.eventstore.ids import derived_event_id, uuid7_ms
from relaybus.sagas.errors import UnknownEvent

EVENT_SCHEMA_VERSION = 1
"""The event store's ``schema_version`` of every saga event; when a shape changes, upcast in :func:`from_record`."""


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    saga_id: str = Field(min_length=1)


class _MemberEvent(_Event):
    step: str
    member: str
    attempt: int = Field(ge=1)


class _RoundEvent(_Event):
    attempt: int = Field(default=1, ge=1)


class SagaStarted(_Event):
    type: Literal["saga.started"] = "saga.started"
    saga: str
    data: JsonValue = None
    #: What the saga's LLM calls may spend (``{"tokens": 2000, "cost": "0.05"}``, tasks.llm.Budget); the
    #: task layer checks it, this package only records it. Absent from the record when the saga has none.
    budget: dict[str, JsonValue] | None = None


class StepStarted(_MemberEvent):
    type: Literal["saga.step.started"] = "saga.step.started"
    data: JsonValue = None
    deadline: AwareDatetime


class StepSucceeded(_MemberEvent):
    type: Literal["saga.step.succeeded"] = "saga.step.succeeded"
    data: JsonValue = None


class StepFailed(_MemberEvent):
    type: Literal["saga.step.failed"] = "saga.step.failed"
    data: JsonValue = None


class StepTimedOut(_MemberEvent):
    type: Literal["saga.step.timed_out"] = "saga.step.timed_out"
    data: JsonValue = None


class CompensationStarted(_MemberEvent):
    type: Literal["saga.compensation.started"] = "saga.compensation.started"
    data: JsonValue = None


class CompensationSucceeded(_MemberEvent):
    type: Literal["saga.compensation.succeeded"] = "saga.compensation.succeeded"
    data: JsonValue = None


class CompensationFailed(_MemberEvent):
    type: Literal["saga.compensation.failed"] = "saga.compensation.failed"
    data: JsonValue = None


class SagaCompleted(_RoundEvent):
    type: Literal["saga.completed"] = "saga.completed"
    data: JsonValue = None


class SagaCompensated(_RoundEvent):
    type: Literal["saga.compensated"] = "saga.compensated"
    data: JsonValue = None


class SagaCompensationFailed(_RoundEvent):
    type: Literal["saga.compensation_failed"] = "saga.compensation_failed"
    data: JsonValue = None


class SagaResumed(_RoundEvent):
    type: Literal["saga.resumed"] = "saga.resumed"
    data: JsonValue = None


MemberEvent = (
    StepStarted
    | StepSucceeded
    | StepFailed
    | StepTimedOut
    | CompensationStarted
    | CompensationSucceeded
    | CompensationFailed
)
SagaEvent = Annotated[
    SagaStarted | MemberEvent | SagaCompleted | SagaCompensated | SagaCompensationFailed | SagaResumed,
    Field(discriminator="type"),
]

EVENT_TYPES: tuple[str, ...] = (
    t.SAGA_STARTED,
    t.SAGA_STEP_STARTED,
    t.SAGA_STEP_SUCCEEDED,
    t.SAGA_STEP_FAILED,
    t.SAGA_STEP_TIMED_OUT,
    t.SAGA_COMPENSATION_STARTED,
    t.SAGA_COMPENSATION_SUCCEEDED,
    t.SAGA_COMPENSATION_FAILED,
    t.SAGA_COMPLETED,
    t.SAGA_COMPENSATED,
    t.SAGA_COMPENSATION_FAILED_TERMINAL,
    t.SAGA_RESUMED,
)

_ADAPTER: TypeAdapter[SagaEvent] = TypeAdapter(SagaEvent)


def to_record(event: SagaEvent) -> tuple[str, dict[str, Any]]:
    """The event as an event-store row: its type string and a JSON-ready payload."""
    unset = {"budget"} if isinstance(event, SagaStarted) and event.budget is None else set()
    return event.type, event.model_dump(mode="json", exclude={"type", *unset})


def from_record(type: str, payload: dict[str, Any], schema_version: int = EVENT_SCHEMA_VERSION) -> SagaEvent:
    """Read a stored row back; :class:`~sagas.errors.UnknownEvent` if it is not a saga event we know."""
    if type not in EVENT_TYPES:
        raise UnknownEvent(type, "not a saga event type")
    if schema_version != EVENT_SCHEMA_VERSION:
        raise UnknownEvent(type, f"schema_version {schema_version} is not {EVENT_SCHEMA_VERSION}")
    try:
        return _ADAPTER.validate_python({**payload, "type": type})
    except ValidationError as error:
        raise UnknownEvent(type, str(error)) from error


_RECORD_IDS = uuid.UUID("9d3e6a51-0c7b-4f28-a1e4-5b8c2d7f0e93")


def record_id(event: SagaEvent) -> str:
    """The event id ``event`` is stored under. A saga whose id is time-ordered (a UUIDv7, as ``new_id`` makes
    them) gets a UUIDv7 of its :func:`dedup_key`, ordered by the saga id's time, so its events append at the
    index's right edge; any other saga id (given by the caller, or made before) keeps the key itself."""
    key = dedup_key(event)
    at = uuid7_ms(event.saga_id)
    return key if at is None else derived_event_id(_RECORD_IDS, (key,), at)


def dedup_key(event: SagaEvent) -> str:
    """The fact an event records; a redelivered event has the same key as the original."""
    if isinstance(event, SagaStarted):
        return f"{event.saga_id}:{event.type}"
    if isinstance(event, _MemberEvent):
        return f"{event.saga_id}:{event.type}:{event.step}:{event.member}:{event.attempt}"
    return f"{event.saga_id}:{event.type}:{event.attempt}"
