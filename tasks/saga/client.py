"""Starting and following sagas from any process with the broker and the event store in reach.

::

    from relaybus.tasks.saga import saga_status, start_saga

    saga_id = start_saga("content_creation", {"topic": "sagas on Celery"}, app=app)
    saga_status(saga_id, app=app).status       # "running", ..., "completed" / "compensated"

The event log is the record: a saga's status is a fold over its stream, read on every call.

A start records the saga and sends its first step. For a new saga (no ``saga_id`` given) whose first step is
fenced (``saga_step``'s default), the two go at once, each waiting for its own confirmation (the log's commit on
a helper thread, the broker's on the caller's), and the step's fence waits for the saga's record
(:data:`~tasks.saga.steps.SAGA_STARTING_HEADER`): 1.16x (SQLite) and 1.25x (PostgreSQL) the starts a second on a
busy two-core machine (docs/sagas.md). ``start_saga`` returns once both are confirmed, and
raises if either failed: a step whose saga was never recorded is refused by its fence and not run; a saga whose
step was not sent is timed out by the sweep at the step's deadline, as when a client dies between the two.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from celery import Celery, current_app
from pydantic import JsonValue, ValidationError

from relaybus.sagas import (
    ParallelStep,
    PlannedStart,
    SagaDefinition,
    SagaRepository,
    SagaStatus,
    SagaView,
    check_saga_id,
    view_of,
)
from relaybus.tasks.errors import InvalidInput
from relaybus.tasks.llm import Budget
from relaybus.tasks.runtime.context import new_id
from relaybus.tasks.saga.dispatch import dispatch_decision
from relaybus.tasks.saga.registry import repository, saga_definition
from relaybus.tasks.saga.steps import SAGA_STARTING_HEADER, SAGA_STARTING_WAIT_MAX_S

logger = logging.getLogger(__name__)

#: Threads that record starts while their callers send the first steps (one per concurrently starting caller).
START_RECORDERS = 8


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
    repo = repository(app)
    if saga_id is None and _first_step_fenced(app, definition):
        saga_id = new_id()  # no stream holds it: its start is decided without reading one
        planned = repo.plan_start(
            definition, saga_id, input, now=datetime.now(UTC), correlation_id=correlation_id or saga_id,
            budget=recorded_budget,
        )
        _record_while_sending(app, repo, planned)
        return saga_id
    saga_id = saga_id or new_id()
    decision = repo.start(
        definition, saga_id, input, now=datetime.now(UTC), correlation_id=correlation_id or saga_id,
        budget=recorded_budget,
    )
    dispatch_decision(app, decision)
    return saga_id


def _first_step_fenced(app: Celery, definition: SagaDefinition) -> bool:
    """Whether every member of the saga's first step is a saga step of this process that reads its saga before
    it runs (and so can wait for a saga still being recorded)."""
    first = definition.steps[0]
    members = first.members if isinstance(first, ParallelStep) else (first,)
    return all(getattr(app.tasks.get(member.task), "fenced", False) is True for member in members)


def _record_while_sending(app: Celery, repo: SagaRepository, planned: PlannedStart) -> None:
    """Record ``planned`` on a helper thread while this one sends its first step (the send stays on the caller's
    thread, where its publish hooks expect it); return once both are confirmed, or raise the send's error (once
    the record is settled) or the record's."""
    recording = _recorders().submit(repo.commit_start, planned)
    try:
        dispatch_decision(app, planned.decision, {SAGA_STARTING_HEADER: time.time() + SAGA_STARTING_WAIT_MAX_S})
    except BaseException:
        try:
            recording.result()
        except Exception as error:
            logger.warning("saga %s: neither its start was recorded (%s) nor its first step sent",
                           planned.decision.saga_id, error)
        else:
            logger.warning("saga %s is recorded but its first step was not sent: the sweep times it out at the "
                           "step's deadline", planned.decision.saga_id)
        raise
    recording.result()


_recorders_of: tuple[int, ThreadPoolExecutor] | None = None
_recorders_lock = threading.Lock()


def _recorders() -> ThreadPoolExecutor:
    """This process's start recorders (made again in a forked child: threads do not survive a fork)."""
    global _recorders_of
    with _recorders_lock:
        if _recorders_of is None or _recorders_of[0] != os.getpid():
            executor = ThreadPoolExecutor(START_RECORDERS, thread_name_prefix="relaybus-saga-start")
            _recorders_of = (os.getpid(), executor)
        return _recorders_of[1]


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
