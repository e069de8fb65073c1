"""Auditing the event log after chaos: no transition missing, no side effect applied twice.

What is checked, per workflow (pipeline or saga; its events share one correlation id):

* **transitions**: every agent task and every relaybus system task that was sent (``task.sent``) has a
  terminal event (``task.succeeded``, ``task.failed``, ``task.revoked`` or ``task.rejected``, or the
  ``task.dead_lettered`` of a message the worker's consumer refused); every ``task.started`` is followed
  by a terminal event or by a later start (the first run was killed and the message redelivered); a start
  with neither must come after the task's terminal event: a message redelivered after the task had
  finished, whose second terminal event has the same id as the first and is therefore not stored twice
  (counted, not a fault).
  Orchestration tasks (``pipelines.fail``, ``relaybus.saga.*``) record their transitions too since
  issue 13 (tasks.runtime.system) and are checked like agents.
* **duplicates**: each logical step ran to success under one task id only. A second task id for the
  same step (a second chain, a second chord, a second writer) means a side effect was applied twice,
  even though each copy recorded itself correctly. Likewise each fact (``draft.written`` for a round,
  ``research.completed`` for a topic, the pipeline's outcome) is published at most once.
* **ids**: the log holds no event id twice (checked in the database, over the whole log).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text

from relaybus.eventstore import EventStore, RecordedEvent

TERMINAL = ("task.succeeded", "task.failed", "task.revoked", "task.rejected")

#: Steps that run once per pipeline, whatever its input.
ONCE_PER_PIPELINE = (
    "pipelines.research",
    "agents.intake",
    "agents.planner",
    "pipelines.research.advance",
    "pipelines.research.join",
    "agents.writer",
    "events.publisher.publish",
    "events.system.record_outcome",
)
#: Saga steps and compensations run to success once per saga (replays of the first result included).
SAGA_PREFIXES = ("agents.researcher.saga_", "agents.writer.", "agents.reviewer.", "agents.publisher.")


@dataclass
class Findings:
    """What an audit found over some workflows."""

    workflows: int = 0
    events_checked: int = 0
    tasks_checked: int = 0
    reruns_after_terminal: int = 0
    #: Which: "<task name> <task id>: <its task.* types in order>", for the figures' reader.
    reruns: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)

    def merge(self, other: Findings) -> None:
        self.workflows += other.workflows
        self.events_checked += other.events_checked
        self.tasks_checked += other.tasks_checked
        self.reruns_after_terminal += other.reruns_after_terminal
        self.reruns += other.reruns
        self.missing += other.missing
        self.duplicates += other.duplicates

    def summary(self) -> str:
        return (
            f"{self.workflows} workflows, {self.events_checked} events, {self.tasks_checked} tasks checked; "
            f"{len(self.missing)} missing transitions, {len(self.duplicates)} duplicates, "
            f"{self.reruns_after_terminal} redeliveries after a terminal event"
        )


def _task_names(events: list[RecordedEvent]) -> dict[str, str]:
    return {e.task_id: str(e.payload.get("task")) for e in events if e.type == "task.sent" and e.task_id}


def _sent_kwargs(events: list[RecordedEvent], task_id: str) -> dict[str, Any]:
    for e in events:
        if e.type == "task.sent" and e.task_id == task_id:
            kwargs = (e.payload.get("input") or {}).get("kwargs") or {}
            return kwargs if isinstance(kwargs, dict) else {}
    return {}


def check_transitions(
    correlation_id: str, events: list[RecordedEvent], agent_tasks: set[str], findings: Findings
) -> None:
    names = _task_names(events)
    per_task: dict[str, list[RecordedEvent]] = defaultdict(list)
    for e in events:
        if e.task_id and e.type.startswith("task."):
            per_task[e.task_id].append(e)
    for task_id, evs in per_task.items():
        name = names.get(task_id)
        if name is None:
            findings.missing.append(f"{correlation_id}: task {task_id} has {[e.type for e in evs]} but no task.sent")
            continue
        if name not in agent_tasks:
            continue
        findings.tasks_checked += 1
        terminals = [
            e.position for e in evs
            if e.type in TERMINAL or (e.type == "task.dead_lettered" and e.payload.get("refused_by") == "consumer")
        ]
        if not terminals:
            findings.missing.append(
                f"{correlation_id}: {name} {task_id} has no terminal event: {[e.type for e in evs]}"
            )
            continue
        starts = [e.position for e in evs if e.type == "task.started"]
        for pos in starts:
            later = [p for p in starts + terminals if p > pos]
            if later:
                continue
            if min(terminals) < pos:
                findings.reruns_after_terminal += 1  # redelivered after finishing; same terminal id
                findings.reruns.append(f"{name} {task_id}: {[e.type for e in evs]}")
            else:
                findings.missing.append(f"{correlation_id}: {name} {task_id} started at {pos} and never ended")


def _succeeded_ids(events: list[RecordedEvent], names: dict[str, str], task: str) -> list[str]:
    return sorted(
        {e.task_id for e in events if e.type == "task.succeeded" and e.task_id and names.get(e.task_id) == task}
    )


def _published(events: list[RecordedEvent], event_type: str) -> list[RecordedEvent]:
    return [e for e in events if e.type == "event.published" and e.payload.get("event_type") == event_type]


def check_pipeline_duplicates(pipeline_id: str, events: list[RecordedEvent], findings: Findings) -> None:
    names = _task_names(events)

    def at_most_once(what: str, keys: Iterable[Any]) -> None:
        for key, n in Counter(keys).items():
            if n > 1:
                findings.duplicates.append(f"{pipeline_id}: {what} {key!r} {n} times")

    for task in ONCE_PER_PIPELINE:
        ids = _succeeded_ids(events, names, task)
        if len(ids) > 1:
            findings.duplicates.append(f"{pipeline_id}: {task} succeeded under {len(ids)} task ids {ids}")
    at_most_once(
        "researcher for topic",
        (_sent_kwargs(events, t).get("index") for t in _succeeded_ids(events, names, "agents.researcher")),
    )
    for handler in ("events.reviewer.review", "events.writer.revise"):
        at_most_once(
            f"{handler} of round",
            (
                ((_sent_kwargs(events, t).get("event") or {}).get("data") or {}).get("draft", {}).get("round")
                for t in _succeeded_ids(events, names, handler)
            ),
        )
    at_most_once(
        "draft.written for round", (e.payload["data"]["draft"]["round"] for e in _published(events, "draft.written"))
    )
    at_most_once(
        "research.completed for topic", (e.payload["data"]["index"] for e in _published(events, "research.completed"))
    )
    outcomes = [e for e in events if e.type in ("pipeline.completed", "pipeline.failed")]
    if len(outcomes) > 1:
        findings.duplicates.append(f"{pipeline_id}: {len(outcomes)} outcome records")
    started = [e for e in events if e.type == "pipeline.started"]
    if len(started) > 1:
        findings.duplicates.append(f"{pipeline_id}: pipeline.started recorded {len(started)} times")


def check_saga_duplicates(saga_id: str, events: list[RecordedEvent], findings: Findings) -> None:
    names = _task_names(events)
    for task in sorted(set(names.values())):
        if not task.startswith(SAGA_PREFIXES):
            continue
        ids = _succeeded_ids(events, names, task)
        if len(ids) > 1:
            # A step re-dispatched on purpose (a timeout retry) has a new attempt: count per idempotency key.
            keys = Counter(_sent_kwargs(events, t).get("idempotency_key") or t for t in ids)
            for key, n in keys.items():
                if n > 1:
                    findings.duplicates.append(f"{saga_id}: {task} {key} succeeded under {n} task ids")


def duplicate_event_ids(store: EventStore) -> int:
    """How many stored rows repeat an event id already stored (0 unless the unique constraint is gone)."""
    with store.engine.connect() as conn:
        total, distinct = conn.execute(text("SELECT count(*), count(DISTINCT event_id) FROM events")).one()
    return int(total) - int(distinct)


def audit(
    store: EventStore,
    pipelines: Iterable[str] = (),
    sagas: Iterable[str] = (),
    *,
    agent_tasks: set[str],
) -> Findings:
    findings = Findings()
    for kind, ids in (("pipeline", list(pipelines)), ("saga", list(sagas))):
        for workflow_id in ids:
            events = store.by_correlation(workflow_id)
            findings.workflows += 1
            findings.events_checked += len(events)
            check_transitions(workflow_id, events, agent_tasks, findings)
            if kind == "pipeline":
                check_pipeline_duplicates(workflow_id, events, findings)
            else:
                check_saga_duplicates(workflow_id, events, findings)
    extra = duplicate_event_ids(store)
    if extra:
        findings.duplicates.append(f"{extra} rows repeat an event id")
    return findings
