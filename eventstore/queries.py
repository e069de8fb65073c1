"""Audit queries: a workflow's timeline, finding events, per-agent statistics.

The shaping is pure (:func:`task_steps`, :func:`timeline_of`, :func:`stats_of`) so that replay and
tests use it on events held in memory; the store only selects the rows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict
from sqlalchemy import ColumnElement, and_

from relaybus.eventstore import types as t
from relaybus.eventstore.models import RecordedEvent
from relaybus.eventstore.projections import WorkflowStatus, fold
from relaybus.eventstore.schema import events


class TaskEvent(Protocol):
    """What step-building reads of an event (a RecordedEvent has it all)."""

    @property
    def position(self) -> int: ...
    @property
    def type(self) -> str: ...
    @property
    def task_id(self) -> str | None: ...
    @property
    def agent(self) -> str | None: ...
    @property
    def queue(self) -> str | None: ...
    @property
    def attempt(self) -> int | None: ...
    @property
    def occurred_at(self) -> datetime: ...


class TaskStep(BaseModel):
    """One task of a workflow, from its lifecycle events.

    ``queue_wait_s`` = first start - first send (time in the queue before any worker took it);
    ``run_time_s`` = finish - start of the last attempt (``last_started_at``), so retries' back-off
    does not count as running. ``status`` is that of the task's latest lifecycle event.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    task_id: str
    agent: str | None
    queue: str | None
    status: str
    sent_at: datetime | None
    started_at: datetime | None
    last_started_at: datetime | None
    finished_at: datetime | None
    queue_wait_s: float | None
    run_time_s: float | None
    attempts: int


class Timeline(BaseModel):
    """A workflow's events in log order, its task steps, and its folded status."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    correlation_id: str
    workflow: WorkflowStatus | None
    steps: list[TaskStep]
    events: list[RecordedEvent]


class AgentStats(BaseModel):
    """Per agent, over the tasks seen in a time range (percentiles interpolate linearly)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    agent: str
    count: int
    succeeded: int
    failures: int
    run_time_p50_s: float | None
    run_time_p95_s: float | None
    queue_wait_p50_s: float | None
    queue_wait_p95_s: float | None


class RateLimitWaits(BaseModel):
    """Per agent, provider and model: how often tasks were deferred over a rate limit, and for how long."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    agent: str
    provider: str
    model: str
    count: int
    total_wait_s: float
    max_wait_s: float


def rate_limit_waits(deferrals: Iterable[RecordedEvent]) -> list[RateLimitWaits]:
    """Fold ``task.deferred`` events into waits per agent, provider and model (sorted by them)."""
    waits: dict[tuple[str, str, str], list[float]] = {}
    for event in deferrals:
        if event.type != t.TASK_DEFERRED:
            continue
        payload = event.payload if isinstance(event.payload, dict) else {}
        if payload.get("reason") == t.DEFERRED_REQUEUED:
            continue  # given back by its own code, not waiting for a rate limit
        key = (event.agent or "?", str(payload.get("provider", "?")), str(payload.get("model", "?")))
        wait = payload.get("wait_s")
        waits.setdefault(key, []).append(float(wait) if isinstance(wait, int | float) else 0.0)
    return [
        RateLimitWaits(agent=agent, provider=provider, model=model, count=len(values),
                       total_wait_s=round(sum(values), 3), max_wait_s=max(values))
        for (agent, provider, model), values in sorted(waits.items())
    ]


class _Step:
    __slots__ = (
        "agent",
        "attempts",
        "finished",
        "first_start",
        "last_start",
        "queue",
        "sent",
        "starts",
        "status",
        "task_id",
    )

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.agent: str | None = None
        self.queue: str | None = None
        self.status: str | None = None
        self.sent: datetime | None = None
        self.first_start: datetime | None = None
        self.last_start: datetime | None = None
        self.finished: datetime | None = None
        self.starts = 0
        self.attempts = 0

    def add(self, event: TaskEvent) -> None:
        self.agent = self.agent or event.agent
        self.queue = self.queue or event.queue
        self.attempts = max(self.attempts, event.attempt or 0)
        at = event.occurred_at
        if event.type == t.TASK_SENT and self.last_start is not None and at < self.last_start:
            # The send of a run that has already started, recorded after it: the sender records
            # ``task.sent`` once the broker confirmed, and a worker can start (even finish) the task
            # before that commit lands. It dates the step; it is not a re-drive (those are sent after
            # the run they repeat started), so status and finish stay.
            self.sent = at if self.sent is None else min(self.sent, at)
            return
        if event.type == t.TASK_SENT and (self.sent is None or at < self.sent):
            self.sent = at
        elif event.type == t.TASK_STARTED:
            self.starts += 1
            self.first_start = at if self.first_start is None else min(self.first_start, at)
            self.last_start = at if self.last_start is None else max(self.last_start, at)
        self.status = t.next_task_status(self.status, event.type)
        if event.type in t.TERMINAL_TASK_TYPES:
            self.finished = at
        elif event.type in t.TASK_TYPES:
            self.finished = None  # sent again after finishing (a redrive): running once more

    def queue_wait_s(self) -> float | None:
        return _seconds(self.sent, self.first_start)

    def run_time_s(self) -> float | None:
        return _seconds(self.last_start, self.finished)

    def freeze(self) -> TaskStep:
        return TaskStep(
            task_id=self.task_id,
            agent=self.agent,
            queue=self.queue,
            status=self.status or "unknown",
            sent_at=self.sent,
            started_at=self.first_start,
            last_started_at=self.last_start,
            finished_at=self.finished,
            queue_wait_s=self.queue_wait_s(),
            run_time_s=self.run_time_s(),
            attempts=max(self.attempts, self.starts),
        )


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max((end - start).total_seconds(), 0.0)


def _steps(events_: Iterable[TaskEvent]) -> list[_Step]:
    steps: dict[str, _Step] = {}
    for event in events_:
        if event.task_id is None or event.type not in t.TASK_TYPES:
            continue
        step = steps.get(event.task_id)
        if step is None:
            step = steps[event.task_id] = _Step(event.task_id)
        step.add(event)
    return list(steps.values())


def task_steps(events_: Iterable[TaskEvent]) -> list[TaskStep]:
    """One step per task id that has lifecycle events, in order of each task's first event."""
    return [step.freeze() for step in _steps(events_)]


def timeline_of(correlation_id: str, events_: Sequence[RecordedEvent]) -> Timeline:
    """The timeline of one workflow from its events (in position order)."""
    return Timeline(
        correlation_id=correlation_id,
        workflow=fold(events_).get(correlation_id),
        steps=task_steps(events_),
        events=list(events_),
    )


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) with linear interpolation between ranks; ``None`` if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def stats_of(steps: Iterable[TaskStep]) -> list[AgentStats]:
    """Per-agent statistics over task steps, sorted by agent."""
    return _stats([(s.agent, s.status, s.run_time_s, s.queue_wait_s) for s in steps])


def stats_of_events(events_: Iterable[TaskEvent]) -> list[AgentStats]:
    """:func:`stats_of` over the steps of ``events_``, without building a :class:`TaskStep` for each
    (``relaybus stats`` over a busy hour folds thousands of tasks)."""
    return _stats([(s.agent, s.status or "unknown", s.run_time_s(), s.queue_wait_s()) for s in _steps(events_)])


def _stats(steps: list[tuple[str | None, str, float | None, float | None]]) -> list[AgentStats]:
    by_agent: dict[str, list[tuple[str | None, str, float | None, float | None]]] = {}
    for step in steps:
        if step[0] is not None:
            by_agent.setdefault(step[0], []).append(step)
    result = []
    for agent, group in sorted(by_agent.items()):
        runs = [run for _, _, run, _ in group if run is not None]
        waits = [wait for _, _, _, wait in group if wait is not None]
        result.append(
            AgentStats(
                agent=agent,
                count=len(group),
                succeeded=sum(status == "succeeded" for _, status, _, _ in group),
                failures=sum(status in t.FAILED_TASK_STATUSES for _, status, _, _ in group),
                run_time_p50_s=percentile(runs, 50),
                run_time_p95_s=percentile(runs, 95),
                queue_wait_p50_s=percentile(waits, 50),
                queue_wait_p95_s=percentile(waits, 95),
            )
        )
    return result


def type_matches(type: str | None, status: str | None) -> Callable[[str], bool] | None:
    """The type filter of :func:`find_conditions` as a predicate on a type name; ``None`` when there is none.

    ``type``: exact, or a glob where ``*`` matches anything; ``status``: the last word of the type.
    """
    if type is None and status is None:
        return None
    glob = re.compile(".*".join(re.escape(part) for part in type.split("*")), re.DOTALL) if type else None
    suffix = "." + status if status is not None else None

    def matches(name: str) -> bool:
        return (glob is None or glob.fullmatch(name) is not None) and (suffix is None or name.endswith(suffix))

    return matches


def needs_type_list(type: str | None, status: str | None) -> bool:
    """Whether the type filter is a pattern (a glob or a status) rather than one exact type."""
    return status is not None or (type is not None and "*" in type)


def matching_types(type: str | None, status: str | None, known_types: Iterable[str]) -> list[str]:
    """Those of ``known_types`` (every type in the log) that ``type`` and ``status`` match, sorted."""
    matches = type_matches(type, status)
    return sorted(name for name in known_types if matches is None or matches(name))


def find_conditions(
    *,
    type: str | None = None,
    agent: str | None = None,
    status: str | None = None,
    correlation_id: str | None = None,
    stream_id: str | None = None,
    task_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    types: Sequence[str] | None = None,
) -> ColumnElement[bool]:
    """The WHERE clause of :meth:`EventStore.find` (all given filters must hold).

    ``type``: exact, or a glob where ``*`` matches anything (``task.*``, ``*.failed``).
    ``status``: the last word of the type (``failed`` matches ``task.failed`` and ``saga.step.failed``).
    ``since`` is inclusive, ``until`` exclusive, both on ``occurred_at``.

    ``types``: the types ``type`` and ``status`` match (:func:`matching_types`), which replace them by
    ``type IN (types)``, which the type index answers; a ``LIKE`` with a leading wildcard, or under a
    collation other than C, would read the whole log instead.
    """
    clauses: list[ColumnElement[bool]] = []
    if types is not None:
        clauses.append(events.c.type.in_(list(types)))
        type = status = None
    if type is not None and "*" not in type:
        clauses.append(events.c.type == type)
        type = None
    matches = type_matches(type, status)
    if matches is not None:
        if type is not None:
            clauses.append(events.c.type.like(_like_pattern(type), escape="\\"))
        if status is not None:
            clauses.append(events.c.type.endswith("." + status, autoescape=True))
    exact: dict[str, Any] = {
        "agent": agent,
        "correlation_id": correlation_id,
        "stream_id": stream_id,
        "task_id": task_id,
    }
    clauses.extend(events.c[name] == value for name, value in exact.items() if value is not None)
    if since is not None:
        clauses.append(events.c.occurred_at >= since)
    if until is not None:
        clauses.append(events.c.occurred_at < until)
    return and_(True, *clauses)


def _like_pattern(glob: str) -> str:
    escaped = glob.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%")
