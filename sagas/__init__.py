"""Sagas: ordered agent steps with compensations, as pure logic over events.

A definition says what the saga is, the fold (:func:`fold`) turns its events into a
:class:`SagaState`, and :func:`decide` says what to do next. No Celery, no I/O: the executor runs the
commands and records the events (see :mod:`sagas.commands` for the loop).
"""

from sagas.commands import (
    Command,
    FinalStatus,
    Finish,
    MarkTimedOut,
    RunCompensation,
    RunStep,
    idempotency_key,
)
from sagas.decide import decide, resume, start
from sagas.definition import OnTimeout, ParallelStep, SagaDefinition, SagaRegistry, Step, members_of
from sagas.errors import DefinitionError, InvalidTransition, SagaError, UnknownEvent, UnknownSaga
from sagas.events import (
    EVENT_SCHEMA_VERSION,
    EVENT_TYPES,
    CompensationFailed,
    CompensationStarted,
    CompensationSucceeded,
    SagaCompensated,
    SagaCompensationFailed,
    SagaCompleted,
    SagaEvent,
    SagaResumed,
    SagaStarted,
    StepFailed,
    StepStarted,
    StepSucceeded,
    StepTimedOut,
    dedup_key,
    from_record,
    to_record,
)
from sagas.reference import CONTENT_CREATION
from sagas.state import (
    CompensationState,
    CompensationStatus,
    MemberState,
    Outcome,
    SagaState,
    SagaStatus,
    StepState,
    evolve,
    fold,
)

# Grouped by concept, as dramatiq's __init__ is, rather than sorted.
__all__ = [  # noqa: RUF022
    # Definitions
    "CONTENT_CREATION",
    "OnTimeout",
    "ParallelStep",
    "SagaDefinition",
    "SagaRegistry",
    "Step",
    "members_of",
    # Events
    "EVENT_SCHEMA_VERSION",
    "EVENT_TYPES",
    "CompensationFailed",
    "CompensationStarted",
    "CompensationSucceeded",
    "SagaCompensated",
    "SagaCompensationFailed",
    "SagaCompleted",
    "SagaEvent",
    "SagaResumed",
    "SagaStarted",
    "StepFailed",
    "StepStarted",
    "StepSucceeded",
    "StepTimedOut",
    "dedup_key",
    "from_record",
    "to_record",
    # State
    "CompensationState",
    "CompensationStatus",
    "MemberState",
    "Outcome",
    "SagaState",
    "SagaStatus",
    "StepState",
    "evolve",
    "fold",
    # Decisions
    "Command",
    "FinalStatus",
    "Finish",
    "MarkTimedOut",
    "RunCompensation",
    "RunStep",
    "decide",
    "idempotency_key",
    "resume",
    "start",
    # Errors
    "DefinitionError",
    "InvalidTransition",
    "SagaError",
    "UnknownEvent",
    "UnknownSaga",
]
