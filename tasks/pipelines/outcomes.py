"""How pipelines end: the outcome subscriber and the error callback that turns a failed step into an outcome.

* ``events.system.record_outcome`` subscribes to ``pipeline.completed``, ``pipeline.failed`` and
  ``pipeline.timed_out``: it records the outcome in the event log (the record a status fold reads) and
  stores it in the result backend under the pipeline id (so a client can block on it; Redis is the
  cache, not the record). The outcome records of a pipeline share one event id, so the log keeps the
  first one recorded; the backend gets *that* one, whichever event this delivery carried, so a late
  completion racing the deadline sweep (or a failure) cannot leave the log and the client disagreeing.
* ``pipelines.fail`` is the error callback pipelines link to their steps (chains, chords, event
  handlers): it reads why the step failed and publishes :class:`~tasks.pipelines.PipelineFailed`.
  Chords call it once per failed member and once for the body; the outcome's id is one per
  pipeline, so all but the first are duplicates.
"""

from __future__ import annotations

import socket
from typing import Any

from celery import Celery, shared_task, signature, states
from celery.canvas import Signature
from celery.utils.log import get_task_logger

from relaybus.eventstore import RecordedEvent, StoreUnavailable
from relaybus.tasks.bus.bus import publish, subscribe
from relaybus.tasks.bus.events import derived_id
from relaybus.tasks.errors import TransientError
from relaybus.tasks.llm import BUDGET_EXCEEDED, BudgetExceeded
from relaybus.tasks.pipelines.registry import (
    FAIL_TASK,
    PIPELINE_COMPLETED,
    PIPELINE_FAILED,
    PIPELINE_TIMED_OUT,
    PipelineCompleted,
    PipelineFailed,
    PipelineOutcome,
    PipelineTimedOut,
    stage_of,
)
from relaybus.tasks.runtime import recording
from relaybus.tasks.runtime.context import current_correlation_id
from relaybus.tasks.runtime.recording import agent_for_task
from relaybus.tasks.runtime.system import SystemTask
from relaybus.tasks.runtime.task import AgentContext

logger = get_task_logger(__name__)

_RECORD_KEYS = {PIPELINE_COMPLETED: "outcome", PIPELINE_FAILED: "outcome", PIPELINE_TIMED_OUT: "outcome"}


def fail_on_error(pipeline: str) -> Signature:
    """The error callback a pipeline links to its steps: a failed step fails ``pipeline``."""
    return signature(FAIL_TASK, kwargs={"pipeline": pipeline})


def record_id(pipeline_id: str, type_: str) -> str:
    """The event id of a pipeline-level record; the outcome records share one: the log keeps one outcome."""
    return derived_id(pipeline_id, "pipeline-record", _RECORD_KEYS.get(type_, type_))


def log_store(app: Celery) -> Any:
    """The recorder's event store (an ``EventStore``), or None when recording is off.

    The recorder protocol (``tasks.runtime.recording``) offers two narrow queries; reading a record back
    by id and the deadline sweep's queries go to its store, opened once per process.
    """
    return getattr(recording.recorder_for(app), "store", None)


def started_budget(budget: Any) -> dict[str, Any]:
    """``{"budget": {...}}`` for a ``pipeline.started`` payload when the run has a budget (a dict from the
    client, or the entry task's ``x_budget`` header), else nothing: unbudgeted runs record what they did."""
    return {"budget": dict(budget)} if isinstance(budget, dict) and budget else {}


def record_pipeline_event(
    app: Celery, type_: str, pipeline_id: str, payload: dict[str, Any], *, causation_id: str | None = None,
    task_id: str | None = None,
) -> RecordedEvent | None:
    """Append a pipeline-level record (``pipeline.started``, ``pipeline.completed``...) to the event log.

    For an outcome record, returns the record the log holds under its id: the first outcome recorded,
    which may be another one than ``type_``. None for other records, and when recording is off.
    """
    from relaybus.eventstore import NewEvent

    recorder = recording.recorder_for(app)
    if not recorder.enabled:
        return None
    event_id = record_id(pipeline_id, type_)
    recorder.append(
        [
            NewEvent(
                event_id=event_id,
                stream_id=pipeline_id,
                correlation_id=pipeline_id,
                causation_id=causation_id,
                type=type_,
                task_id=task_id,
                agent="system",
                worker_host=socket.gethostname(),
                payload=payload,
            )
        ]
    )
    if type_ not in _RECORD_KEYS:
        return None  # only an outcome record can have lost to another one
    store = log_store(app)
    return store.get(event_id) if store is not None else None


@subscribe("system", PipelineCompleted, PipelineFailed, PipelineTimedOut, name="record_outcome")
def record_outcome(event: PipelineCompleted | PipelineFailed | PipelineTimedOut, ctx: AgentContext) -> None:
    from celery import current_app

    app = current_app
    pipeline_id = ctx.correlation_id
    if app.backend.get_state(pipeline_id) == states.SUCCESS:
        return  # the first outcome wins; this one lost a race the event log already settled
    outcome = PipelineOutcome.of(pipeline_id, event)
    type_, payload = outcome.record()
    if isinstance(event, PipelineTimedOut):
        payload.update(deadline_s=event.deadline_s, last_event_at=event.last_event_at.isoformat())
    kept = record_pipeline_event(app, type_, pipeline_id, payload, causation_id=ctx.causation_id, task_id=ctx.task_id)
    if kept is not None and kept.type != type_:
        outcome = PipelineOutcome.from_record(pipeline_id, kept.type, kept.payload)  # an earlier outcome won
    app.backend.store_result(pipeline_id, outcome.model_dump(mode="json"), states.SUCCESS)


@shared_task(  # type: ignore[untyped-decorator]
    name=FAIL_TASK, bind=True, acks_late=True, autoretry_for=(TransientError, StoreUnavailable), max_retries=5,
    retry_backoff=True, retry_jitter=True, base=SystemTask,  # recorded, so the timeline shows it ended
)
def fail_pipeline(self: Any, failed_task_id: str | None = None, pipeline: str = "") -> str:
    """Error callback: publish ``pipeline.failed`` naming the step that failed, its agent and its error.

    The reason is the pipeline's first failure in the event log when there is one, whichever error
    callback runs first (a chord calls it for the failed member and again for its body, with a
    ``ChordError``), so the same failing input always gives the same reason. A call refused over the run's budget
    gives a reason that starts with ``budget-exceeded``.
    """
    failure = _first_failure(self.app, current_correlation_id())
    if failure is None:
        meta = self.app.backend.get_task_meta(failed_task_id) if failed_task_id else {}
        error = meta.get("result")
        task = str(meta.get("name") or "")
        if isinstance(error, BaseException):
            failure = (task, type(error).__name__, str(error))
        else:
            failure = (task, str(meta.get("status") or "FAILURE"), str(error))
    task, error_type, message = failure
    stage = stage_of(pipeline, task) if task else None
    agent = agent_for_task(task) if task else None
    where = f"step {stage or agent or 'unknown'!r}" + (f" (agent {agent})" if agent else "")
    # For people and for the event's JSON: text UTF-8 cannot encode is escaped (the log keeps the original).
    if error_type == BudgetExceeded.__name__:  # the reason starts with budget-exceeded, for people and for code
        text = f"{BUDGET_EXCEEDED}: {where} refused an LLM call: {message.removeprefix(BUDGET_EXCEEDED + ': ')}"
    else:
        text = f"{where} failed: {error_type}: {message}"
    reason = text.encode("utf-8", "backslashreplace").decode("utf-8")
    logger.warning("pipeline %s: %s", pipeline, reason)
    envelope = publish(PipelineFailed(pipeline=pipeline, reason=reason, stage=stage or agent), app=self.app)
    return envelope.event_id


def _first_failure(app: Celery, pipeline_id: str | None) -> tuple[str, str, str] | None:
    """``(task name, error type, error message)`` of the first task that failed for good in the pipeline."""
    failure = recording.recorder_for(app).first_failure(pipeline_id) if pipeline_id else None
    return (failure.task, failure.error_type, failure.error_message) if failure is not None else None
