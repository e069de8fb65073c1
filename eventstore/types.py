"""The well-known event types: stable, explicit strings, never derived from import paths.

Events are past-tense facts. A type never changes meaning; a new shape of the same fact bumps the
event's ``schema_version`` instead (upcast on read, never rewrite history).
"""

from __future__ import annotations

from typing import Final, Literal

# -- task lifecycle (recorded by the task base) ---------------------------------------------------
TASK_SENT: Final = "task.sent"
TASK_RECEIVED: Final = "task.received"
TASK_STARTED: Final = "task.started"
TASK_RETRIED: Final = "task.retried"
#: Given back to its queue with a countdown without using a retry: over a global LLM rate limit.
TASK_DEFERRED: Final = "task.deferred"
#: The ``reason`` of a ``task.deferred`` whose task gave its message back itself (Celery's ``Reject(requeue=True)``
#: from its code, or a publish inside it the broker refused): not a rate limit's wait.
DEFERRED_REQUEUED: Final = "requeued"
TASK_SUCCEEDED: Final = "task.succeeded"
TASK_FAILED: Final = "task.failed"
TASK_DEAD_LETTERED: Final = "task.dead_lettered"
TASK_REVOKED: Final = "task.revoked"
TASK_REJECTED: Final = "task.rejected"
#: A message delivered again (the worker's consumer counts them, to stop a crash or requeue loop).
#: Not a lifecycle step: it leaves the task's status as it was.
TASK_REDELIVERED: Final = "task.redelivered"

# -- domain events between agents -------------------------------------------------------------------
EVENT_PUBLISHED: Final = "event.published"
EVENT_DELIVERED: Final = "event.delivered"
EVENT_DEAD_LETTERED: Final = "event.dead_lettered"

# -- model calls ------------------------------------------------------------------------------------
LLM_COMPLETED: Final = "llm.completed"
#: A call refused before it was sent: it would have taken its workflow over its token or cost budget.
BUDGET_EXCEEDED: Final = "budget.exceeded"

# -- the log's own checks (eventstore.verifications): in the stream INTEGRITY_STREAM, part of no workflow ------
LOG_VERIFIED: Final = "log.verified"
INTEGRITY_STREAM: Final = "relaybus:integrity"
#: Types the workflow-status projection does not fold: they are about the log, not a workflow.
NOT_WORKFLOW_TYPES: Final = frozenset({LOG_VERIFIED})

# -- workflows and pipelines --------------------------------------------------------------------------
WORKFLOW_STARTED: Final = "workflow.started"
WORKFLOW_COMPLETED: Final = "workflow.completed"
WORKFLOW_FAILED: Final = "workflow.failed"
WORKFLOW_REPLAYED: Final = "workflow.replayed"
PIPELINE_STARTED: Final = "pipeline.started"
PIPELINE_COMPLETED: Final = "pipeline.completed"
PIPELINE_FAILED: Final = "pipeline.failed"
PIPELINE_TIMED_OUT: Final = "pipeline.timed_out"

# -- sagas ----------------------------------------------------------------------------------------------
SAGA_STARTED: Final = "saga.started"
SAGA_STEP_STARTED: Final = "saga.step.started"
SAGA_STEP_SUCCEEDED: Final = "saga.step.succeeded"
SAGA_STEP_FAILED: Final = "saga.step.failed"
SAGA_STEP_TIMED_OUT: Final = "saga.step.timed_out"
SAGA_COMPENSATION_STARTED: Final = "saga.compensation.started"
SAGA_COMPENSATION_SUCCEEDED: Final = "saga.compensation.succeeded"
SAGA_COMPENSATION_FAILED: Final = "saga.compensation.failed"
SAGA_COMPLETED: Final = "saga.completed"
SAGA_COMPENSATED: Final = "saga.compensated"
SAGA_COMPENSATION_FAILED_TERMINAL: Final = "saga.compensation_failed"
SAGA_RESUMED: Final = "saga.resumed"

# -- groups ---------------------------------------------------------------------------------------------
TASK_TYPES: Final = frozenset(
    {
        TASK_SENT,
        TASK_RECEIVED,
        TASK_STARTED,
        TASK_RETRIED,
        TASK_DEFERRED,
        TASK_SUCCEEDED,
        TASK_FAILED,
        TASK_DEAD_LETTERED,
        TASK_REVOKED,
        TASK_REJECTED,
    }
)
"""Every task lifecycle type."""

TERMINAL_TASK_TYPES: Final = frozenset({TASK_SUCCEEDED, TASK_FAILED, TASK_DEAD_LETTERED, TASK_REVOKED, TASK_REJECTED})
"""A task that recorded one of these has finished (for this delivery)."""

FAILED_TASK_TYPES: Final = frozenset({TASK_FAILED, TASK_DEAD_LETTERED})
"""Terminal types that count as a failure, in statistics and in a workflow's ``tasks_failed``.

A revoked task was cancelled; a rejected one refused its message: a saga step that arrived after its saga stopped
going forward (``NotRun``: nothing ran, nothing is dead-lettered), or a task whose code raised Celery's
``Reject(requeue=False)`` (the broker moves the message to the agent's dead-letter queue). Neither failed, as in
Celery's own states (``REJECTED`` and ``REVOKED`` are not ``FAILURE``); both end the task."""

TERMINAL_SAGA_STATUS: Final[dict[str, Literal["completed", "compensated", "compensation_failed"]]] = {
    SAGA_COMPLETED: "completed",
    SAGA_COMPENSATED: "compensated",
    SAGA_COMPENSATION_FAILED_TERMINAL: "compensation_failed",
}
"""The status each terminal saga type ends its saga in."""

WORKFLOW_TERMINAL_STATUS: Final = {
    WORKFLOW_COMPLETED: "completed",
    PIPELINE_COMPLETED: "completed",
    WORKFLOW_FAILED: "failed",
    PIPELINE_FAILED: "failed",
    PIPELINE_TIMED_OUT: "timed_out",
    **TERMINAL_SAGA_STATUS,
}
"""The workflow status each terminal workflow-level type leads to."""

PIPELINE_OUTCOME_TYPES: Final = frozenset({PIPELINE_COMPLETED, PIPELINE_FAILED, PIPELINE_TIMED_OUT})
"""The records that end a pipeline; a pipeline has at most one (they share one event id)."""

WORKFLOW_RESTART_TYPES: Final = frozenset({WORKFLOW_STARTED, PIPELINE_STARTED, SAGA_STARTED, SAGA_RESUMED})
"""Types that (re)open a workflow: the status goes back to ``running``.

A pipeline is ``running`` from ``pipeline.started`` to its outcome record, even when every task sent so far has
finished (between two steps, or when the outcome never came): the deadline sweep ends the latter ``timed_out``.
"""


def task_status(event_type: str) -> str:
    """The task status a task lifecycle type records: ``task.dead_lettered`` -> ``dead_lettered``."""
    return event_type.removeprefix("task.")


def next_task_status(current: str | None, event_type: str) -> str | None:
    """A task's status after one more of its events: the latest lifecycle event decides.

    Events of other kinds that carry a task id (``llm.completed``...) leave it unchanged.
    """
    if event_type in TASK_TYPES:
        return task_status(event_type)
    return current


FAILED_TASK_STATUSES: Final = frozenset(task_status(t) for t in FAILED_TASK_TYPES)
TERMINAL_TASK_STATUSES: Final = frozenset(task_status(t) for t in TERMINAL_TASK_TYPES)
