"""Starting and following sagas from any process with the broker and the event store in reach.

::

    from relaybus.tasks.saga import saga_status, start_saga

    saga_id = start_saga("content_creation", {"topic": "sagas on Celery"}, app=app)
    saga_status(saga_id, app=app).status       # "running", ..., "completed" / "compensated"

The event log is the record: a saga's status is a fold over its stream, read on every call.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from celery import Celery, current_app
from pydantic import JsonValue

from relaybus.sagas import SagaStatus, SagaView, view_of
from relaybus.tasks.runtime.context import new_id
from relaybus.tasks.saga.dispatch import dispatch_decision
from relaybus.tasks.saga.registry import repository, saga_definition


def start_saga(
    name: str,
    input: JsonValue = None,
    saga_id: str | None = None,
    correlation_id: str | None = None,
    app: Celery | None = None,
) -> str:
    """Start the saga ``name`` with ``input`` (the first step's input); returns its id.

    ``saga_id`` makes the call idempotent: starting the same id again starts nothing new (and sends
    the first step again if it is still running). ``correlation_id`` ties the saga into a wider
    workflow's timeline (default: the saga id). Raises :class:`~sagas.UnknownSaga` for an unknown
    name, ``ValueError`` for a malformed id or an input too large for the event log.
    """
    app = app or current_app
    definition = saga_definition(name, app)
    saga_id = saga_id or new_id()
    decision = repository(app).start(
        definition, saga_id, input, now=datetime.now(UTC), correlation_id=correlation_id or saga_id
    )
    dispatch_decision(app, decision)
    return saga_id


def saga_status(saga_id: str, app: Celery | None = None) -> SagaView:
    """The saga as its log tells it: status, each step's outcome and timings, history.
    :class:`~sagas.SagaNotFound` if no saga has this id."""
    return view_of(repository(app or current_app).load(saga_id))


def resume_saga(saga_id: str, app: Celery | None = None) -> SagaView:
    """Retry the failed compensations of a ``compensation_failed`` saga, once its cause is fixed.
    :class:`~sagas.InvalidTransition` if the saga is in another state."""
    app = app or current_app
    decision = repository(app).resume(saga_id, now=datetime.now(UTC))
    dispatch_decision(app, decision)
    return saga_status(saga_id, app)


def list_sagas(status: SagaStatus | None = None, limit: int = 50, app: Celery | None = None) -> list[SagaView]:
    """The newest sagas first (optionally only those in ``status``)."""
    return [view_of(s) for s in repository(app or current_app).recent(status=status, limit=limit)]


def wait_for_saga(saga_id: str, timeout: float = 60.0, interval: float = 0.02, app: Celery | None = None) -> SagaView:
    """Poll the log until the saga ends; ``TimeoutError`` after ``timeout`` seconds. For scripts and tests:
    nothing inside a worker should ever wait on a saga."""
    deadline = time.monotonic() + timeout
    while True:
        view = saga_status(saga_id, app)
        if view.status in ("completed", "compensated", "compensation_failed"):
            return view
        if time.monotonic() >= deadline:
            raise TimeoutError(f"saga {saga_id} did not end within {timeout}s (status: {view.status})")
        time.sleep(interval)
