"""Sagas: ordered agent steps with compensations, as pure logic over events.

A definition says what the saga is, the fold (:func:`fold`) turns its events into a
:class:`SagaState`, and :func:`decide` says what to do next. No Celery: the executor runs the
commands and records the events (see :mod:`sagas.commands` for the loop), through
:class:`SagaRepository`, which keeps each saga in the event store under optimistic concurrency.
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
from sagas.dispatches import InFlight, dispatch_id, dispatch_id_of, in_flight, still_running
from sagas.errors import DefinitionError, InvalidTransition, SagaError, SagaNotFound, UnknownEvent, UnknownSaga
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
from sagas.repository import Decision, LoadedSaga, SagaRepository, check_saga_id, saga_stream
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
from sagas.views import CompensationView, HistoryEntry, SagaView, StepView, view_of

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
    # Persistence (the event store) and the read model
    "Decision",
    "InFlight",
    "LoadedSaga",
    "SagaRepository",
    "check_saga_id",
    "dispatch_id",
    "dispatch_id_of",
    "in_flight",
    "still_running",
    "saga_stream",
    "CompensationView",
    "HistoryEntry",
    "SagaView",
    "StepView",
    "view_of",
    # Errors
    "DefinitionError",
    "InvalidTransition",
    "SagaError",
    "SagaNotFound",
    "UnknownEvent",
    "UnknownSaga",
]
