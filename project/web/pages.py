"""What each page shows, read through the library's query API (no SQL here)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import Celery

from relaybus.eventstore import EventStore, RecordedEvent, TaskStep, WorkflowStatus
from relaybus.eventstore import types as t
from relaybus.eventstore.redaction import Redactor
from relaybus.eventstore.usage import call_usage

PAGE_SIZE = 50
OPENERS = ("pipeline.started", "saga.started")
#: Records whose payload says why something failed.
FAILURE_TYPES = frozenset({
    "task.failed", "task.dead_lettered", "pipeline.failed", "pipeline.timed_out", "saga.step.failed",
    "saga.step.timed_out", "saga.compensation.failed",
})
SAGA_STREAM_PREFIX = "saga:"


@dataclass(frozen=True)
class WorkflowRow:
    correlation_id: str
    kind: str
    name: str
    status: str
    started: datetime
    last: datetime
    duration_s: float
    tasks_succeeded: int
    tasks_failed: int
    position: int


def _kind_and_name(opener: RecordedEvent | None) -> tuple[str, str]:
    if opener is None:
        return "tasks", ""
    if opener.type == "saga.started":
        return "saga", str(opener.payload.get("saga", ""))
    return "pipeline", str(opener.payload.get("pipeline", opener.payload.get("name", "")))


@dataclass(frozen=True)
class Filters:
    """The list's filters, as the form sent them (all optional)."""

    status: str | None = None
    query: str | None = None
    name: str | None = None
    #: When the workflow started: ``since`` inclusive, ``until`` exclusive (UTC).
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, w: WorkflowStatus) -> bool:
        return (self.status in (None, w.status) and self.name in (None, w.name)
                and (self.since is None or w.first_event_at >= self.since)
                and (self.until is None or w.first_event_at < self.until))


def parse_time(text: str | None, field: str) -> datetime | None:
    """``2026-12-04T10:00`` (a browser's datetime-local, read as UTC) or ISO 8601 with an offset."""
    if not text or not text.strip():
        return None
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{field} must be a date and time like 2026-12-04T10:00 (UTC), not {text!r}") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def workflow_rows(
    store: EventStore, filters: Filters, *, before: int | None, now: datetime
) -> tuple[list[WorkflowRow], int | None]:
    """One page of workflows, newest activity first, and the keyset of the next page (None: last page).

    Every filter is a column of the status projection with an index behind it (migrations 0002, 0009):
    no row of the log is read for the list, however long the log."""
    projection = store.projection
    projection.catch_up()
    if filters.query:
        query = filters.query
        found = projection.get(query)
        if found is None:  # a saga id, a task id or an event id: the workflow it belongs to
            hits = store.find(stream_id=SAGA_STREAM_PREFIX + query, limit=1) or store.find(task_id=query, limit=1)
            event = hits[0] if hits else store.get(query)
            found = projection.get(event.correlation_id) if event is not None else None
        states = [found] if found is not None and filters.matches(found) else []
        more = None
    else:
        states = projection.workflows(status=filters.status, name=filters.name, started_since=filters.since,
                                      started_until=filters.until, before_position=before, limit=PAGE_SIZE + 1)
        more = states[PAGE_SIZE - 1].last_position if len(states) > PAGE_SIZE else None
        states = states[:PAGE_SIZE]
    rows = []
    for w in states:
        ended = w.status != "running" and w.status != "compensating"
        duration = ((w.last_event_at if ended else now) - w.first_event_at).total_seconds()
        rows.append(WorkflowRow(w.correlation_id, w.kind or "tasks", w.name or "", w.status, w.first_event_at,
                                w.last_event_at, duration, w.tasks_succeeded, w.tasks_failed, w.last_position))
    return rows, more


@dataclass(frozen=True)
class Bar:
    """One step of the chart, in percent of the workflow's span: where it starts, its wait, its run."""

    step: TaskStep
    offset: float
    wait: float
    run: float


def chart(steps: list[TaskStep]) -> tuple[list[Bar], float]:
    """Horizontal bars for queue wait and run time per step, on one time axis; the span in seconds."""
    starts = [t for s in steps if (t := s.sent_at or s.started_at) is not None]
    ends = [t for s in steps if (t := s.finished_at or s.last_started_at or s.started_at or s.sent_at) is not None]
    if not starts or not ends:
        return [], 0.0
    t0, t1 = min(starts), max(ends)
    span = max((t1 - t0).total_seconds(), 1e-6)
    bars = []
    for s in steps:
        begin = s.sent_at or s.started_at or t0
        offset = (begin - t0).total_seconds() / span * 100
        wait = (s.queue_wait_s or 0.0) / span * 100
        run = (s.run_time_s or 0.0) / span * 100
        bars.append(Bar(s, round(offset, 2), round(min(wait, 100 - offset), 2),
                        round(max(min(run, 100 - offset - wait), 0.3 if s.finished_at else 0.0), 2)))
    return bars, span


def preview(redactor: Redactor, value: Any, limit: int = 400) -> str:
    """A payload as short JSON, masked again on the way out (whatever the log kept)."""
    text = json.dumps(redactor.redact(value), default=str, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class FailureLine:
    """One record that says something failed: ``what`` names it for a person (the task's name, a saga's step
    and its task's name, a pipeline's step), ``reason`` says why (masked again on the way out)."""

    event: RecordedEvent
    what: str
    reason: str


def task_names(events: list[RecordedEvent]) -> dict[str, str]:
    """Each task's name (``agents.publisher``) by task id, from its ``task.sent`` record."""
    names = {}
    for e in events:
        if e.type == t.TASK_SENT and e.task_id and isinstance(e.payload, dict) and e.payload.get("task"):
            names[e.task_id] = str(e.payload["task"])
    return names


def failure_reasons(events: list[RecordedEvent], redactor: Redactor) -> list[FailureLine]:
    names = task_names(events)
    lines = []
    for e in events:
        if e.type not in FAILURE_TYPES:
            continue
        p = e.payload if isinstance(e.payload, dict) else {}
        found = p.get("data")
        data: dict[str, Any] = found if isinstance(found, dict) else {}
        task_id = e.task_id or data.get("task_id")
        task = names.get(task_id) if isinstance(task_id, str) else None
        if p.get("step"):  # a saga's step or compensation: its step (and member), and the task that ran it
            member = f"/{p['member']}" if p.get("member") and p.get("member") != p["step"] else ""
            what = f"step {p['step']}{member}" + (f" ({task})" if task else "")
        elif e.type.startswith("pipeline.") and p.get("stage"):
            what = f"step {p['stage']}"
        else:
            what = task or e.agent or ""
        error = f"{data['error_type']}: {data.get('error_message', '')}" if data.get("error_type") else None
        reason = p.get("reason") or p.get("error") or p.get("error_message") or error or data or p
        lines.append(FailureLine(e, what, redactor.redact_text(
            reason if isinstance(reason, str) else json.dumps(reason, default=str))))
    return lines


def saga_of(app: Celery, events: list[RecordedEvent]) -> Any:
    """The saga view (steps, compensations) when this workflow is a saga, else None."""
    from relaybus.tasks.saga import saga_status

    for e in events:
        if e.type == "saga.started":
            return saga_status(e.stream_id.removeprefix(SAGA_STREAM_PREFIX), app)
    return None


def stats_window(hours: float, now: datetime) -> datetime:
    return now - timedelta(hours=hours)


def utcnow() -> datetime:
    return datetime.now(UTC)


def llm_calls(events: list[RecordedEvent]) -> list[dict[str, Any]]:
    """The workflow's LLM completions (``llm.completed``): agent, task, provider, model, tokens and cost."""
    calls = []
    for e in events:
        if e.type != t.LLM_COMPLETED:
            continue
        call = call_usage(e)
        calls.append({"agent": call.agent, "task_id": call.task_id, "provider": call.provider, "model": call.model,
                      "prompt_tokens": call.prompt_tokens, "completion_tokens": call.completion_tokens,
                      "cost": call.cost})
    return calls
