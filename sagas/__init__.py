"""Sagas: ordered agent steps with compensations, as pure logic over events.

A definition says what the saga is, the fold (:func:`fold`) turns its events into a
:class:`SagaState`, and :func:`decide` says what to do next. No Celery: the executor runs the
commands and records the events (see :mod:`sagas.commands` for the loop), through
:class:`SagaRepository`, which keeps each saga in the event store under optimistic concurrency.
"""

if __name__ != "relaybus.sagas":  # imported by its folder name from the repository root
    raise ImportError(
        f"the sagas/ folder is installed as relaybus.sagas: import relaybus.sagas, not {__name__}"
        " (a second copy of its modules would bring a second registry and app)"
    )

from relaybus.sagas.commands import (
    Command,
    FinalStatus,
    Finish,
    MarkTimedOut,
    RunCompensation,
    RunStep,
    idempotency_key,
)
from relaybus.sagas.decide import decide, resume, start
from relaybus.sagas.definition import (
    APPROVAL_TASK,
    Approval,
    OnTimeout,
    ParallelStep,
    SagaDefinition,
    SagaRegistry,
    Step,
    approval_step,
    members_of,
)
from relaybus.sagas.dispatches import InFlight, dispatch_id, dispatch_id_of, in_flight, still_running
from relaybus.sagas.errors import DefinitionError, InvalidTransition, SagaError, SagaNotFound, UnknownEvent, UnknownSaga
from relaybus.sagas.events import (
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
    record_id,
    to_record,
)
from relaybus.sagas.reference import CONTENT_CREATION
from relaybus.sagas.repository import Decision, LoadedSaga, PlannedStart, SagaRepository, check_saga_id, saga_stream
from relaybus.sagas.state import (
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
from relaybus.sagas.views import CompensationView, HistoryEntry, SagaView, StepView, view_of

# Grouped by concept, as dramatiq's __init__ is, rather than sorted.
__all__ = [  # noqa: RUF022
    # Definitions
    "CONTENT_CREATION",
    "APPROVAL_TASK",
    "Approval",
    "approval_step",
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
    "record_id",
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
    "PlannedStart",
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
