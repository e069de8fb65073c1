"""Recording one dispatch's outcome in its saga, deciding what follows and sending it: the saga's one move.

Two places make it. A step or compensation declared with :func:`~tasks.saga.steps.saga_step` /
:func:`~tasks.saga.steps.saga_compensation` makes it itself, in the worker that ran it, once its own
terminal record is written (:mod:`tasks.saga.advance`): one message per step. Any other task a saga
names gets Celery callbacks instead, the orchestration tasks on the system queue
(:mod:`tasks.saga.orchestration`), which make the same move one hop later. Both go through
:func:`advance_saga`, so both keep the same guarantees: the outcome and the decision are appended in
one batch under optimistic concurrency on the saga's stream, and what they caused is sent after.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from celery import Celery
from celery.utils.log import get_task_logger
from kombu.exceptions import OperationalError as BrokerUnavailable
from pydantic import JsonValue

from relaybus.eventstore import ConcurrencyError, NewEvent, StoreUnavailable
from relaybus.sagas import (
    Decision,
    InvalidTransition,
    LoadedSaga,
    SagaNotFound,
    UnknownEvent,
    UnknownSaga,
    dispatch_id,
)
from relaybus.tasks.errors import TransientError
from relaybus.tasks.saga.calls import CallRef
from relaybus.tasks.saga.dispatch import dispatch_decision
from relaybus.tasks.saga.registry import repository

logger = get_task_logger(__name__)

#: Trouble that passes: the store or broker away, the saga changing under us more often than the
#: repository retries. The outcome is reported again later.
RETRYABLE = (StoreUnavailable, ConcurrencyError, TransientError, BrokerUnavailable, ConnectionError, TimeoutError)
#: An outcome that does not fit the saga (the fold refuses it), or a saga nobody started: retrying cannot help.
DROPPED = (InvalidTransition, SagaNotFound, UnknownSaga, UnknownEvent)


def advance_saga(
    app: Celery,
    ref: CallRef,
    ok: bool,
    data: JsonValue,
    *,
    redelivered: bool,
    loaded: LoadedSaga | None = None,
    also: Sequence[NewEvent] = (),
) -> dict[str, Any] | None:
    """Record ``ref``'s outcome, decide, send what follows; the summary, or None if the outcome was dropped.

    ``redelivered``: the reporter may be a second delivery of one that recorded and died before
    sending, so what this outcome caused and is still running is sent again (steps and compensations
    are idempotent under their keys). ``loaded``: the saga as the reporter read it moments ago (a
    step's fence), to decide on without reading it again. ``also``: the reporter's own records, committed
    with the outcome (:meth:`sagas.SagaRepository.record`); stored once this returns a summary. Raises one
    of :data:`RETRYABLE` for the caller to report again later; nothing of a decision that raised was sent.
    """
    event = ref.succeeded(data) if ok else ref.failed(data)
    decision: Decision
    try:
        decision = repository(app).record(
            event,
            now=datetime.now(UTC),
            causation_id=dispatch_id(ref.saga_id, ref.step, ref.member, ref.kind, ref.attempt),
            redispatch=redelivered,
            loaded=loaded,
            also=also,
        )
    except DROPPED as error:
        logger.error(
            "saga %s: %s of %s/%s attempt %s dropped: %s", ref.saga_id, event.type, ref.step, ref.member, ref.attempt,
            error,
        )
        return None
    sent = dispatch_decision(app, decision)
    return {"saga_id": ref.saga_id, "status": decision.state.status, "dispatched": sent}
