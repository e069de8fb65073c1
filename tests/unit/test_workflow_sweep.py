"""The deadline sweep's decisions, without a broker: which pipelines are open, which are stuck at a given now,
what the status fold and a client make of a timed-out pipeline."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from relaybus.eventstore import RecordedEvent, fold
from relaybus.eventstore import types as t
from relaybus.eventstore.projections import open_workflows_of
from relaybus.settings import Settings
from relaybus.tasks.pipelines.deadline import SWEEP_TASK, deadline_of, overdue
from relaybus.tasks.pipelines.definition import Pipeline
from relaybus.tasks.pipelines.registry import PipelineOutcome, PipelineTimedOut

T0 = datetime(2026, 12, 4, 6, 0, tzinfo=UTC)


class Log:
    """Records in position order, as the store would hand them back."""

    def __init__(self) -> None:
        self.events: list[RecordedEvent] = []

    def add(self, correlation_id: str, type_: str, at_s: float, *, agent: str | None = None, **payload: Any) -> None:
        self.events.append(
            RecordedEvent(
                event_id=str(uuid.uuid4()), stream_id=correlation_id, correlation_id=correlation_id, type=type_,
                occurred_at=T0 + timedelta(seconds=at_s), agent=agent, task_id=f"{correlation_id}-{type_}",
                payload=payload, position=len(self.events) + 1, version=1, recorded_at=T0, hash="0" * 64,
            )
        )

    def open_pipelines(self) -> list[Any]:
        return open_workflows_of(self.events, opened_by=t.PIPELINE_STARTED, closed_by=t.PIPELINE_OUTCOME_TYPES)

    def stuck_at(self, at_s: float, default_deadline_s: float = 50.0) -> list[str]:
        found = overdue(self.open_pipelines(), now=T0 + timedelta(seconds=at_s), default_deadline_s=default_deadline_s)
        return [o.pipeline_id for o in found]


@pytest.fixture
def log() -> Log:
    log = Log()
    log.add("short", t.PIPELINE_STARTED, 0, pipeline="p", deadline_s=10)
    log.add("long", t.PIPELINE_STARTED, 0, pipeline="p", deadline_s=100)
    log.add("done", t.PIPELINE_STARTED, 0, pipeline="p", deadline_s=1)
    log.add("legacy", t.PIPELINE_STARTED, 0, pipeline="p")  # recorded before pipelines had deadlines
    log.add("short", t.TASK_SENT, 1, agent="researcher")
    log.add("long", t.TASK_SENT, 1, agent="researcher")
    log.add("done", t.PIPELINE_COMPLETED, 2, pipeline="p", status="completed", output={})
    log.add("plain", t.TASK_SENT, 0, agent="writer")  # a workflow that is no pipeline
    return log


def test_a_pipeline_is_stuck_once_its_last_record_is_older_than_its_own_deadline(log):
    assert log.stuck_at(11) == []  # idle exactly 10 s: not yet past it
    assert log.stuck_at(11.5) == ["short"]
    assert log.stuck_at(60) == ["short", "legacy"]  # legacy: the default deadline (50 s)
    assert log.stuck_at(102) == ["short", "long", "legacy"]


def test_a_pipeline_with_an_outcome_record_and_a_workflow_that_is_no_pipeline_are_never_stuck(log):
    assert "done" not in log.stuck_at(10_000) and "plain" not in log.stuck_at(10_000)
    for outcome in (t.PIPELINE_FAILED, t.PIPELINE_TIMED_OUT):
        log.add("short", outcome, 3, pipeline="p")
        assert "short" not in log.stuck_at(10_000)
        log.events.pop()


def test_progress_pushes_the_deadline_back_and_the_reason_names_the_last_record(log):
    log.add("short", t.TASK_SUCCEEDED, 30, agent="researcher")
    assert "short" not in log.stuck_at(39) and "short" in log.stuck_at(41)
    [item] = overdue([w for w in log.open_pipelines() if w.correlation_id == "short"],
                     now=T0 + timedelta(seconds=41), default_deadline_s=50)
    assert (item.pipeline, item.deadline_s, item.last_event_type) == ("p", 10, t.TASK_SUCCEEDED)
    assert item.stage == "researcher"
    assert round(item.idle_s) == 11
    assert item.reason == (
        "no progress for 10 s (its deadline); last record task.succeeded (agent researcher) "
        "at 2026-12-04T06:00:30.000+00:00"
    )


def test_the_deadline_is_read_from_the_started_record_with_the_default_for_older_records():
    assert deadline_of({"deadline_s": 7.5}, 3600) == 7.5
    for recorded in ({}, {"deadline_s": None}, {"deadline_s": 0}):
        assert deadline_of(recorded, 3600) == 3600


def test_the_status_fold_keeps_a_pipeline_running_until_its_outcome_and_ends_it_timed_out():
    log = Log()
    log.add("p1", t.PIPELINE_STARTED, 0, pipeline="p", deadline_s=5)
    log.add("p1", t.TASK_SENT, 0)
    log.add("p1", t.TASK_SUCCEEDED, 1)  # every task sent so far finished, but no outcome yet
    assert fold(log.events)["p1"].status == "running"
    log.add("p1", t.PIPELINE_TIMED_OUT, 9, pipeline="p")
    assert fold(log.events)["p1"].status == "timed_out"


def test_a_timed_out_outcome_reads_as_timed_out_from_the_event_and_from_the_log_record():
    event = PipelineTimedOut(pipeline="p", reason="no progress", stage="researcher", deadline_s=5, last_event_at=T0)
    outcome = PipelineOutcome.of("id1", event)
    assert (outcome.status, outcome.reason, outcome.stage) == ("timed_out", "no progress", "researcher")
    type_, payload = outcome.record()
    assert type_ == t.PIPELINE_TIMED_OUT
    payload.update(deadline_s=5, last_event_at=T0.isoformat())  # what record_outcome adds
    assert PipelineOutcome.from_record("id1", type_, payload) == outcome


class Order(BaseModel):
    sku: str


def test_a_pipeline_takes_a_positive_deadline_or_none_for_the_default():
    name = f"deadline_{uuid.uuid4().hex[:8]}"
    assert Pipeline(name, input=Order, deadline_s=2.5).deadline_s == 2.5
    assert Pipeline(f"{name}_default", input=Order).deadline_s is None
    with pytest.raises(ValueError, match="deadline_s must be positive"):
        Pipeline(f"{name}_zero", input=Order, deadline_s=0)


def test_the_app_registers_the_sweep_task_that_beat_schedules(tmp_path):
    from relaybus.celery import create_app

    app = create_app(Settings(eventstore_url=f"sqlite:///{tmp_path / 'e.sqlite'}", namespace="unitsweep"))
    schedule = {entry["task"] for entry in app.conf.beat_schedule.values()}
    assert SWEEP_TASK in schedule
    assert SWEEP_TASK in app.tasks
    app.close()
