"""The workflow-status fold, pure: ``apply(state, event) -> state`` and :func:`fold` over many, and which
workflows are still open (:func:`open_workflows_of`).

The live projection (:mod:`eventstore.projections`), a dry-run replay and a rebuild all use it, so they
cannot disagree.
"""

from __future__ import annotations

from collections.abc import Collection, Container, Iterable, Mapping
from datetime import datetime
from typing import Any, NamedTuple, Protocol

from pydantic import BaseModel, ConfigDict, Field

from relaybus.eventstore import types as t
from relaybus.eventstore.models import RecordedEvent


class FoldEvent(Protocol):
    """What the fold reads of an event (a RecordedEvent has it all)."""

    @property
    def position(self) -> int: ...
    @property
    def correlation_id(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def task_id(self) -> str | None: ...
    @property
    def occurred_at(self) -> datetime: ...
    @property
    def payload(self) -> Mapping[str, Any] | None: ...


#: The types that say what a workflow is, the kind they give it and the payload key naming it. A pipeline
#: outranks a saga (a pipeline's step may run a saga in the same correlation id); of two of one kind the
#: first names it.
OPENED_AS: dict[str, tuple[str, str]] = {t.PIPELINE_STARTED: ("pipeline", "pipeline"), t.SAGA_STARTED: ("saga", "saga")}
_KIND_RANK = {None: 0, "saga": 1, "pipeline": 2}
NAME_LENGTH = 255


class EventHead(NamedTuple):
    """The columns the fold needs, read without the payloads (fast rebuilds) but an opener's (its name)."""

    position: int
    correlation_id: str
    type: str
    task_id: str | None
    occurred_at: datetime
    payload: Mapping[str, Any] | None = None


class WorkflowStatus(BaseModel):
    """The state of one workflow (all events sharing a correlation id).

    ``status``: an explicit workflow-level event decides (``workflow.completed`` -> ``completed``,
    ``saga.compensated`` -> ``compensated``...; ``workflow.started``/``saga.started`` -> ``running``
    until one arrives). Without any, it follows the tasks: ``running`` while one is unfinished,
    then ``failed`` if any failed, ``succeeded`` if every one succeeded, else ``cancelled`` (a task was revoked
    or refused its message, and none failed).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    correlation_id: str
    status: str = "running"
    declared_status: str | None = None
    first_event_at: datetime
    last_event_at: datetime
    tasks_succeeded: int = 0
    tasks_failed: int = 0
    task_status: dict[str, str] = Field(default_factory=dict)
    last_position: int = 0
    #: ``pipeline`` or ``saga`` (:data:`OPENED_AS`), ``None`` for tasks outside either; and its declared name.
    kind: str | None = None
    name: str | None = None


def _derived_status(declared: str | None, tasks: dict[str, str]) -> str:
    if declared is not None:
        return declared
    statuses = tasks.values()
    if not tasks or any(s not in t.TERMINAL_TASK_STATUSES for s in statuses):
        return "running"
    if any(s in t.FAILED_TASK_STATUSES for s in statuses):
        return "failed"
    # Every task ended and none failed: succeeded only if every one did; a revoked task, or one that refused its
    # message, did not run to its end.
    return "succeeded" if all(s == "succeeded" for s in statuses) else "cancelled"


def apply(state: WorkflowStatus | None, event: FoldEvent) -> WorkflowStatus:
    """The workflow's state after ``event`` (pure: ``state`` is not modified)."""
    if state is None:
        state = WorkflowStatus(
            correlation_id=event.correlation_id,
            first_event_at=event.occurred_at,
            last_event_at=event.occurred_at,
        )
    update: dict[str, Any] = {
        "last_position": event.position,
        "first_event_at": min(state.first_event_at, event.occurred_at),
        "last_event_at": max(state.last_event_at, event.occurred_at),
    }
    declared = state.declared_status
    tasks = state.task_status
    opened = OPENED_AS.get(event.type)
    if opened is not None and _KIND_RANK[opened[0]] > _KIND_RANK.get(state.kind, 0):
        payload = event.payload or {}
        name = payload.get(opened[1]) or payload.get("name")
        update["kind"], update["name"] = opened[0], str(name)[:NAME_LENGTH] if name else None
    if event.type in t.WORKFLOW_TERMINAL_STATUS:
        declared = update["declared_status"] = t.WORKFLOW_TERMINAL_STATUS[event.type]
    elif event.type in t.WORKFLOW_RESTART_TYPES:
        declared = update["declared_status"] = "running"
    elif event.task_id is not None and event.type in t.TASK_TYPES:
        before = tasks.get(event.task_id)
        after = t.next_task_status(before, event.type)
        if after is not None and after != before:
            tasks = update["task_status"] = {**tasks, event.task_id: after}
            update["tasks_succeeded"] = state.tasks_succeeded + _delta(before, after, {"succeeded"})
            update["tasks_failed"] = state.tasks_failed + _delta(before, after, t.FAILED_TASK_STATUSES)
    update["status"] = _derived_status(declared, tasks)
    return state.model_copy(update=update)


def _delta(before: str | None, after: str, counted: Container[str]) -> int:
    return int(after in counted) - int(before in counted)


def fold(events_: Iterable[FoldEvent], states: dict[str, WorkflowStatus] | None = None) -> dict[str, WorkflowStatus]:
    """Apply ``events_`` in order to ``states`` (a new dict; per correlation id)."""
    result = dict(states or {})
    for event in events_:
        if event.type in t.NOT_WORKFLOW_TYPES:
            continue
        result[event.correlation_id] = apply(result.get(event.correlation_id), event)
    return result


# -- open workflows: what a deadline sweep reads ----------------------------------------------------


class OpenWorkflow(BaseModel):
    """A workflow opened by an event of one type and not closed yet, with its last event (its progress)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    correlation_id: str
    opened_at: datetime
    #: The position of the opening event (page on with ``after_position=`` the last one seen).
    opened_position: int
    #: The payload of the event that opened it (a pipeline's name and deadline: ``pipeline.started``).
    opened_payload: dict[str, Any]
    last_position: int
    last_event_at: datetime
    last_event_type: str
    last_event_agent: str | None = None


class _Head(Protocol):
    @property
    def position(self) -> int: ...
    @property
    def correlation_id(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def agent(self) -> str | None: ...
    @property
    def occurred_at(self) -> datetime: ...


def open_workflow(opener: RecordedEvent, last: _Head) -> OpenWorkflow:
    """The open workflow ``opener`` began, its progress being ``last``."""
    return OpenWorkflow(
        correlation_id=opener.correlation_id,
        opened_at=opener.occurred_at,
        opened_position=opener.position,
        opened_payload=dict(opener.payload),
        last_position=last.position,
        last_event_at=last.occurred_at,
        last_event_type=last.type,
        last_event_agent=last.agent,
    )


def open_workflows_of(
    events_: Iterable[RecordedEvent], *, opened_by: str, closed_by: Collection[str]
) -> list[OpenWorkflow]:
    """The workflows among ``events_`` (in position order) opened by ``opened_by`` and closed by none of
    ``closed_by``, in the order they were opened: the fold :meth:`WorkflowStatusProjection.open_workflows`
    computes in SQL (a test holds the two together)."""
    opened: dict[str, RecordedEvent] = {}
    closed: set[str] = set()
    last: dict[str, RecordedEvent] = {}
    for event in events_:
        last[event.correlation_id] = event
        if event.type == opened_by:
            opened[event.correlation_id] = event
        elif event.type in closed_by:
            closed.add(event.correlation_id)
    ordered = sorted(opened.values(), key=lambda e: e.position)
    return [open_workflow(e, last[e.correlation_id]) for e in ordered if e.correlation_id not in closed]
