"""The saga's orchestration tasks, on the system queue: each records one outcome and takes the next decision.

``relaybus.saga.step_done`` / ``step_failed`` / ``compensation_done`` / ``compensation_failed`` are the
callbacks linked to a dispatch whose task does not advance the saga itself (see :mod:`tasks.saga.dispatch`:
steps declared with ``saga_step`` do, so they need none); ``relaybus.saga.outcome`` takes the outcome
such a step could not record itself; ``relaybus.saga.sweep`` is the periodic sweep. None of them waits
on anything: read the saga, append the outcome and the decision under optimistic concurrency,
dispatch, return.

Failures: the event store being unreachable, or the saga changing under us more often than the
repository retries, is retried here with the runtime's backoff. A result that does not fit the saga
(the fold refuses it), or a saga nobody started, is logged and dropped: retrying cannot help.
A redelivered callback (its worker died after recording, maybe before dispatching) dispatches again
what its outcome caused and is still running; steps and compensations are idempotent, so at worst
one runs twice and replays its first result.
"""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task
from celery.utils.log import get_task_logger
from pydantic import JsonValue

from relaybus.tasks.runtime.config import runtime_config
from relaybus.tasks.runtime.system import SystemTask
from relaybus.tasks.saga.calls import CallRef
from relaybus.tasks.saga.dispatch import (
    COMPENSATION_DONE,
    COMPENSATION_FAILED,
    OUTCOME,
    STEP_DONE,
    STEP_FAILED,
    SWEEP,
)
from relaybus.tasks.saga.outcomes import RETRYABLE, advance_saga
from relaybus.tasks.saga.sweep import DEFAULT_HORIZON_S, DEFAULT_STUCK_COMPENSATION_S, sweep_sagas

logger = get_task_logger(__name__)

_MAX_RETRIES = 12
_OPTIONS: dict[str, Any] = {
    "bind": True, "acks_late": True, "reject_on_worker_lost": True, "ignore_result": True,
    "base": SystemTask,  # their transitions are recorded, so a saga's timeline shows them ended
}


def report(
    task: Task, ref: dict[str, Any], ok: bool, data: JsonValue, *, again: bool = False
) -> dict[str, Any] | None:
    """Record a dispatch's outcome, decide, dispatch what follows (:func:`~tasks.saga.outcomes.advance_saga`).

    ``again``: the outcome may have been recorded already by a reporter that died or failed before
    sending what it caused (as on a redelivery or a retry of this task): send that again if it still runs."""
    request = task.request
    redelivered = again or bool((request.delivery_info or {}).get("redelivered")) or bool(request.retries)
    try:
        return advance_saga(task.app, CallRef.model_validate(ref), ok, data, redelivered=redelivered)
    except RETRYABLE as error:
        countdown = runtime_config(task.app).backoff(request.retries)
        raise task.retry(exc=error, countdown=countdown, max_retries=_MAX_RETRIES) from None


def failure_of(task: Task, failed_task_id: str) -> dict[str, Any]:
    """Why a task failed, from the result backend (a cache: if it cannot be read, the failure is still a fact)."""
    try:
        meta = task.app.backend.get_task_meta(failed_task_id)
    except Exception as error:  # any backend trouble: record the failure, without its reason
        return {"task_id": failed_task_id, "error_type": "Unknown", "error_message": f"result backend: {error}"}
    result = meta.get("result")
    if isinstance(result, BaseException):
        return {"task_id": failed_task_id, "error_type": type(result).__name__, "error_message": str(result)[:2000]}
    return {"task_id": failed_task_id, "error_type": str(meta.get("status")), "error_message": str(result)[:2000]}


# Errbacks run as tasks with the failed task's id (bind=True keeps Celery from calling them inline
# in the failing worker with (request, exc, traceback)); callbacks get the return value.


@shared_task(name=STEP_DONE, **_OPTIONS)  # type: ignore[untyped-decorator]
def step_done(self: Task, result: JsonValue = None, *, ref: dict[str, Any]) -> dict[str, Any] | None:
    return report(self, ref, True, result)


@shared_task(name=STEP_FAILED, **_OPTIONS)  # type: ignore[untyped-decorator]
def step_failed(self: Task, failed_task_id: str, *, ref: dict[str, Any]) -> dict[str, Any] | None:
    return report(self, ref, False, failure_of(self, failed_task_id))


@shared_task(name=COMPENSATION_DONE, **_OPTIONS)  # type: ignore[untyped-decorator]
def compensation_done(self: Task, result: JsonValue = None, *, ref: dict[str, Any]) -> dict[str, Any] | None:
    return report(self, ref, True, result)


@shared_task(name=COMPENSATION_FAILED, **_OPTIONS)  # type: ignore[untyped-decorator]
def compensation_failed(self: Task, failed_task_id: str, *, ref: dict[str, Any]) -> dict[str, Any] | None:
    return report(self, ref, False, failure_of(self, failed_task_id))


@shared_task(name=OUTCOME, **_OPTIONS)  # type: ignore[untyped-decorator]
def outcome(self: Task, *, ref: dict[str, Any], ok: bool, data: JsonValue = None) -> dict[str, Any] | None:
    """An outcome a self-advancing step could not record itself (the store or broker was away): recorded
    here, with this task's backoff, instead of running the step again. The step may have recorded it
    and failed to send the next step: what it caused and still runs is sent again."""
    return report(self, ref, ok, data, again=True)


@shared_task(name=SWEEP, bind=True, acks_late=True, base=SystemTask)  # type: ignore[untyped-decorator]
def sweep(
    self: Task,
    horizon_s: float | None = DEFAULT_HORIZON_S,
    stuck_compensation_after_s: float = DEFAULT_STUCK_COMPENSATION_S,
) -> dict[str, Any]:
    report_ = sweep_sagas(self.app, horizon_s=horizon_s, stuck_compensation_after_s=stuck_compensation_after_s)
    if report_.timed_out or report_.redispatched or report_.errors:
        logger.warning("saga sweep: %s", report_.model_dump_json())
    return report_.model_dump(mode="json")
