"""Every pipeline ends: the sweep that ends a pipeline which made no progress within its deadline, ``timed_out``.

Run by beat (``relaybus.workflows.sweep``, every 60 s, see ``project.celery``) and by ``relaybus sweep``.
It is the safety net for the faults nobody foresaw: a lost message, a step on a queue no worker consumes,
an event that never comes, an outcome never recorded.

* **Open** pipelines are those with a ``pipeline.started`` record (within ``horizon_s``) and no outcome
  record (``pipeline.completed``, ``.failed``, ``.timed_out``), read from the log in two indexed queries
  (``WorkflowStatusProjection.open_workflows``).
* **No progress** means that the last record of the pipeline's correlation id is older than the
  pipeline's deadline, which ``pipeline.started`` carries (``Pipeline(deadline_s=)``, or the setting
  ``RELAYBUS_PIPELINE_DEADLINE_S`` of the process that started it). :func:`overdue` decides, purely.
* **Ending** goes the way every outcome goes: :class:`PipelineTimedOut` is published (under the pipeline's
  one outcome event id) and ``record_outcome`` records ``pipeline.timed_out`` with the reason and stores
  the outcome for the client, whose ``handle.wait()`` wakes with status ``timed_out``.

**Approvals** come first: every pending approval past its own deadline (``tasks.runtime.approvals``) is
ended ``expired`` (a conditional UPDATE: one decision wins), which fails its pipeline with the reason
``approval-expired`` or compensates its saga. A pipeline parked on a pending approval is not timed out:
the approval's deadline bounds the wait.

Idempotent: the outcome event and the outcome record have one id per pipeline, so two sweeps racing
publish one fact, and the sweep skips a pipeline whose outcome is already published and on its way
(unless it has been on its way for a whole deadline: then it is published again under the same id,
which heals a crash between the log and the broker). **The first outcome recorded wins**: a step that
completes after its pipeline timed out runs (its message was only late), but its ``pipeline.completed``
is a duplicate the log drops, and the client keeps ``timed_out``; a completion recorded first makes the
sweep's outcome the duplicate instead. Late steps are not revoked: revoking lives in worker memory, and
a late step is as idempotent as any redelivered one.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import Celery, Task, shared_task
from celery.utils.log import get_task_logger
from pydantic import BaseModel, ConfigDict, Field

from relaybus.eventstore import EventStore
from relaybus.eventstore.projections import OpenWorkflow, WorkflowStatus
from relaybus.eventstore.types import PIPELINE_OUTCOME_TYPES, PIPELINE_STARTED
from relaybus.tasks.bus.bus import publish
from relaybus.tasks.bus.events import derived_id
from relaybus.tasks.pipelines.outcomes import log_store
from relaybus.tasks.pipelines.registry import OUTCOME_KEY, PipelineTimedOut
from relaybus.tasks.runtime.approval_resume import resume_stalled
from relaybus.tasks.runtime.approvals import expire_due
from relaybus.tasks.runtime.config import runtime_config
from relaybus.tasks.runtime.system import SystemTask

logger = get_task_logger(__name__)

SWEEP_TASK = "relaybus.workflows.sweep"
#: Pipelines started longer ago than this are not looked at (as for the saga sweep).
DEFAULT_HORIZON_S = 30 * 24 * 3600.0
_PAGE = 1000


class Overdue(BaseModel):
    """A pipeline past its deadline: what the sweep ends and ``relaybus workflows list --stuck`` shows."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pipeline_id: str
    pipeline: str
    deadline_s: float
    idle_s: float
    last_position: int
    last_event_at: datetime
    last_event_type: str
    last_event_agent: str | None = None

    @property
    def stage(self) -> str | None:
        """Where it stopped, as far as the log says: the agent of its last record (not relaybus's own)."""
        return self.last_event_agent if self.last_event_agent not in (None, "system") else None

    @property
    def reason(self) -> str:
        """Why it was ended; a function of the log alone, so two sweeps give the same one."""
        by = f" (agent {self.last_event_agent})" if self.last_event_agent else ""
        return (
            f"no progress for {self.deadline_s:g} s (its deadline); last record {self.last_event_type}{by} "
            f"at {self.last_event_at.isoformat(timespec='milliseconds')}"
        )


def deadline_of(started: dict[str, Any], default_s: float) -> float:
    """The deadline a ``pipeline.started`` payload records; ``default_s`` for records from before deadlines."""
    value = started.get("deadline_s")
    return float(value) if isinstance(value, int | float) and value > 0 else default_s


def overdue(open_: Iterable[OpenWorkflow], *, now: datetime, default_deadline_s: float) -> list[Overdue]:
    """The open pipelines whose last record is older than their deadline at ``now`` (pure)."""
    found = []
    for w in open_:
        deadline = deadline_of(w.opened_payload, default_deadline_s)
        idle = (now - w.last_event_at).total_seconds()
        if idle > deadline:
            found.append(
                Overdue(
                    pipeline_id=w.correlation_id,
                    pipeline=str(w.opened_payload.get("pipeline") or ""),
                    deadline_s=deadline,
                    idle_s=idle,
                    last_position=w.last_position,
                    last_event_at=w.last_event_at,
                    last_event_type=w.last_event_type,
                    last_event_agent=w.last_event_agent,
                )
            )
    return found


def open_pipelines(store: EventStore, *, since: datetime | None) -> list[OpenWorkflow]:
    """Every pipeline started at ``since`` or later without an outcome record, oldest first."""
    found: list[OpenWorkflow] = []
    after = 0
    while True:
        page = store.projection.open_workflows(
            opened_by=PIPELINE_STARTED, closed_by=PIPELINE_OUTCOME_TYPES, since=since, after_position=after,
            limit=_PAGE,
        )
        found += page
        if len(page) < _PAGE:
            return found
        after = max(w.opened_position for w in page)


def find_overdue(
    store: EventStore, *, now: datetime, default_deadline_s: float, horizon_s: float | None = DEFAULT_HORIZON_S
) -> tuple[list[OpenWorkflow], list[Overdue]]:
    """``(the open pipelines, those of them past their deadline)`` at ``now``."""
    since = now - timedelta(seconds=horizon_s) if horizon_s else None
    open_ = open_pipelines(store, since=since)
    return open_, overdue(open_, now=now, default_deadline_s=default_deadline_s)


def idle_workflows(store: EventStore, *, now: datetime, idle_s: float, limit: int = 100) -> list[WorkflowStatus]:
    """Running workflows of any kind (the status projection, caught up first) with no record for ``idle_s``."""
    store.projection.catch_up()
    return store.projection.workflows(status="running", idle_since=now - timedelta(seconds=idle_s), limit=limit)


class PipelineSweepReport(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    swept_at: datetime
    open_pipelines: int
    #: Pipeline id -> the reason it was ended with.
    timed_out: dict[str, str] = Field(default_factory=dict)
    #: Past their deadline, but an outcome is already published and on its way: left alone.
    pending: list[str] = Field(default_factory=list)
    errors: dict[str, str] = Field(default_factory=dict)
    #: Why nothing was looked at (the event log is off), if so.
    skipped: str | None = None
    #: Approvals (of pipelines and sagas) past their deadline, ended ``expired`` by this pass.
    approvals_expired: list[str] = Field(default_factory=list)
    #: Past their deadline but parked on a pending approval: its own deadline ends them, not this one.
    waiting_for_approval: list[str] = Field(default_factory=list)
    #: Decided approvals whose workflow never moved on (the decider died before resuming it), carried out again.
    approvals_resumed: list[str] = Field(default_factory=list)


def sweep_pipelines(
    app: Celery, *, now: datetime | None = None, horizon_s: float | None = DEFAULT_HORIZON_S
) -> PipelineSweepReport:
    """One pass: end every open pipeline past its deadline (started within ``horizon_s``; None: all)."""
    now = now or datetime.now(UTC)
    store: EventStore | None = log_store(app)
    if store is None:
        off = "the event log is off (RELAYBUS_RECORD_EVENTS)"
        return PipelineSweepReport(swept_at=now, open_pipelines=0, skipped=off)
    # Approvals first: an expired one fails its pipeline (or compensates its saga) with its own reason.
    expired, errors = expire_due(app, now=now)
    resumed, not_resumed = resume_stalled(app, now=now)  # a decider killed before its resume was sent
    errors = {f"approval {k}": v for k, v in {**errors, **not_resumed}.items()}
    open_, late = find_overdue(
        store, now=now, default_deadline_s=runtime_config(app).pipeline_deadline_s, horizon_s=horizon_s
    )
    parked = store.approvals.waiting(item.pipeline_id for item in late) if late else set()
    timed_out: dict[str, str] = {}
    pending: list[str] = []
    for item in late:
        if item.pipeline_id in parked:
            continue
        try:
            if _time_out(app, store, item, now):
                timed_out[item.pipeline_id] = item.reason
            else:
                pending.append(item.pipeline_id)
        except Exception as error:  # the safety net: one pipeline it cannot end must not shield the others
            errors[item.pipeline_id] = f"{type(error).__name__}: {error}"  # the next sweep tries again
    return PipelineSweepReport(
        swept_at=now, open_pipelines=len(open_), timed_out=timed_out, pending=pending, errors=errors,
        approvals_expired=expired, waiting_for_approval=sorted(parked), approvals_resumed=resumed,
    )


def outcome_event_id(pipeline_id: str) -> str:
    """The id every outcome event of the pipeline is published under (``unique_per_correlation``)."""
    return derived_id(pipeline_id, "unique", OUTCOME_KEY)


def _time_out(app: Celery, store: EventStore, item: Overdue, now: datetime) -> bool:
    """Publish the pipeline's timed-out outcome, unless it moved on or an outcome is on its way."""
    newest = store.find(correlation_id=item.pipeline_id, newest_first=True, limit=1)
    if newest and newest[0].position > item.last_position:
        return False  # progress since the query: not overdue any more
    published = store.get(outcome_event_id(item.pipeline_id))
    if published is not None and (now - published.occurred_at).total_seconds() <= item.deadline_s:
        return False
    event = PipelineTimedOut(
        pipeline=item.pipeline,
        reason=item.reason,
        stage=item.stage,
        deadline_s=item.deadline_s,
        last_event_at=item.last_event_at,
    )
    publish(event, app=app, correlation_id=item.pipeline_id)
    logger.warning("pipeline %s (%s) timed out: %s", item.pipeline_id, item.pipeline, item.reason)
    return True


@shared_task(name=SWEEP_TASK, bind=True, acks_late=True, base=SystemTask)  # type: ignore[untyped-decorator]
def sweep(self: Task, horizon_s: float | None = DEFAULT_HORIZON_S) -> dict[str, Any]:
    """Beat's pass (system queue): end the pipelines past their deadline."""
    report = sweep_pipelines(self.app, horizon_s=horizon_s)
    if report.timed_out or report.errors or report.approvals_expired or report.approvals_resumed:
        logger.warning("workflow sweep: %s", report.model_dump_json())
    return report.model_dump(mode="json")
