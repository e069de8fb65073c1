"""Starting and following sagas from any process with the broker and the event store in reach.

::

    from relaybus.tasks.saga import saga_status, start_saga

    saga_id = start_saga("content_creation", {"topic": "sagas on Celery"}, app=app)
    saga_status(saga_id, app=app).status       # "running", ..., "completed" / "compensated"

The event log is the record: a saga's status is a fold over its stream, read on every call.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from celery import Celery, current_app
from pydantic import JsonValue, ValidationError

from relaybus.sagas import ParallelStep, SagaDefinition, SagaStatus, SagaView, check_saga_id, view_of
from relaybus.tasks.errors import InvalidInput
from relaybus.tasks.llm import Budget
from relaybus.tasks.runtime.context import new_id
from relaybus.tasks.saga.dispatch import dispatch_decision
from relaybus.tasks.saga.registry import repository, saga_definition


def start_saga(
    name: str,
    input: JsonValue = None,
    saga_id: str | None = None,
    correlation_id: str | None = None,
    app: Celery | None = None,
    budget: Budget | Mapping[str, Any] | None = None,
) -> str:
    """Start the saga ``name`` with ``input`` (the first step's input); returns its id.

    ``budget`` (:class:`~tasks.llm.Budget`, or ``{"tokens": 2000, "cost": "0.05"}``) caps what its steps' LLM
    calls may spend; it is recorded in ``saga.started``, and a step whose call would exceed it is refused
    unsent and fails: the saga compensates (compensations are charged, never refused).

    ``saga_id`` makes the call idempotent: starting the same id again starts nothing new (and sends
    the first step again if it is still running). ``correlation_id`` ties the saga into a wider
    workflow's timeline (default: the saga id). Raises :class:`~sagas.UnknownSaga` for an unknown
    name, :class:`~tasks.errors.InvalidInput` for an input the first step's model refuses, ``ValueError``
    for a malformed id or an input too large for the event log.
    """
    app = app or current_app
    definition = saga_definition(name, app)
    if saga_id is not None:
        check_saga_id(saga_id)
    _check_first_input(app, definition, input)
    recorded_budget = None
    if budget is not None:
        try:
            checked = budget if isinstance(budget, Budget) else Budget.model_validate(dict(budget))
        except ValidationError as exc:
            errors = [{"loc": ("budget", *e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
            raise InvalidInput(definition.name, errors, kind="saga") from None
        recorded_budget = checked.record()
    saga_id = saga_id or new_id()
    decision = repository(app).start(
        definition, saga_id, input, now=datetime.now(UTC), correlation_id=correlation_id or saga_id,
        budget=recorded_budget,
    )
    dispatch_decision(app, decision)
    return saga_id


def _check_first_input(app: Celery, definition: SagaDefinition, input: JsonValue) -> None:
    """Refuse, before anything is recorded or sent, an input the saga's first step would refuse in the worker
    (:class:`~tasks.errors.InvalidInput` naming the field), as every agent call does in its caller."""
    first = definition.steps[0]
    members = first.members if isinstance(first, ParallelStep) else (first,)
    for member in members:
        model = getattr(app.tasks.get(member.task), "step_input_model", None)
        if model is None:
            continue  # not a saga_step of this process (another app's task): its worker checks it
        try:
            model.model_validate(input)
        except ValidationError as exc:
            errors = [{"loc": ("input", *e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
            raise InvalidInput(definition.name, errors, kind="saga") from None


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
