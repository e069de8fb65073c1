"""The projection's fold is pure and decides statuses as documented."""

from __future__ import annotations

from datetime import UTC, datetime

from relaybus.eventstore import NewEvent, RecordedEvent, WorkflowStatus, apply, dry_run, fold, types
from relaybus.eventstore.queries import percentile, stats_of, task_steps
from tests.unit.eventstore.synthetic import at, quick_workflow, research_workflow, task_run


def recorded(events: list) -> list[RecordedEvent]:  # type: ignore[type-arg]
    """NewEvents as the store would record them (positions and versions in order)."""
    return [
        RecordedEvent(**e.model_dump(), position=i, version=i, recorded_at=datetime(2025, 1, 2, tzinfo=UTC), hash="h")
        for i, e in enumerate(events, start=1)
    ]


def test_apply_returns_a_new_state_and_leaves_the_old_one_alone() -> None:
    sent, received, *_ = recorded(quick_workflow("wf"))
    first = apply(None, sent)
    second = apply(first, received)
    assert first.task_status == {"wf-planner": "sent"}
    assert second.task_status == {"wf-planner": "received"}
    assert (first.last_position, second.last_position) == (1, 2)


def test_without_workflow_events_the_status_follows_the_tasks() -> None:
    events = recorded(quick_workflow("wf"))
    assert fold(events[:3])["wf"].status == "running"
    done = fold(events)["wf"]
    assert (done.status, done.tasks_succeeded, done.tasks_failed) == ("succeeded", 1, 0)


def test_declared_workflow_events_decide_and_failures_are_counted_once_per_task() -> None:
    events = recorded(research_workflow("wf"))
    before_end = fold(events[:-1])["wf"]
    assert before_end.status == "running"  # workflow.started was declared: tasks alone do not end it
    state = fold(events)["wf"]
    assert (state.status, state.tasks_succeeded, state.tasks_failed) == ("failed", 2, 1)
    assert state.task_status["wf-writer"] == "dead_lettered"
    assert (state.first_event_at, state.last_event_at) == (at(0), at(15))


def test_a_resumed_saga_is_running_again() -> None:
    def saga(type_: str, pos: int) -> RecordedEvent:
        return RecordedEvent(
            stream_id="saga:x",
            correlation_id="x",
            type=type_,
            position=pos,
            version=pos,
            recorded_at=at(pos),
            occurred_at=at(pos),
            hash="h",
        )

    state = fold([saga(types.SAGA_STARTED, 1), saga(types.SAGA_COMPENSATION_FAILED_TERMINAL, 2)])["x"]
    assert state.status == "compensation_failed"
    assert apply(state, saga(types.SAGA_RESUMED, 3)).status == "running"


def test_dry_run_gives_the_folded_state_and_the_timeline() -> None:
    events = recorded(research_workflow("wf"))
    result = dry_run("wf", events)
    assert result.state == fold(events)["wf"]
    assert isinstance(result.state, WorkflowStatus)
    assert [s.agent for s in result.timeline.steps] == ["planner", "researcher", "writer"]
    assert result.events_replayed == len(events)


def test_percentiles_interpolate_between_ranks() -> None:
    assert percentile([], 50) is None
    assert percentile([5.0], 95) == 5.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([4.0, 1.0], 95) == 1.0 + 0.95 * 3.0


def test_a_task_sent_again_after_dead_lettering_is_running_again() -> None:
    events = recorded(research_workflow("wf"))
    writer_sent = next(e for e in events if e.type == types.TASK_SENT and e.agent == "writer")
    redriven = writer_sent.model_copy(update={"event_id": "redrive", "position": 100, "occurred_at": at(20)})
    [*_, writer] = task_steps([*events, redriven])
    assert (writer.status, writer.finished_at, writer.sent_at) == ("sent", None, at(12))


def test_what_opened_a_workflow_names_it_and_a_pipeline_outranks_a_saga_in_it() -> None:
    from relaybus.eventstore import NewEvent

    events = recorded([
        NewEvent(stream_id="w", type=types.SAGA_STARTED, payload={"saga": "booking"}),
        NewEvent(stream_id="w", type=types.PIPELINE_STARTED, payload={"pipeline": "research"}),
        NewEvent(stream_id="w", type=types.PIPELINE_STARTED, payload={"pipeline": "again"}),
        NewEvent(stream_id="s", type=types.SAGA_STARTED, payload={"saga": "x" * 300}),
        NewEvent(stream_id="t", type=types.TASK_SENT, task_id="t-1"),
        NewEvent(stream_id=types.INTEGRITY_STREAM, type=types.LOG_VERIFIED, payload={"ok": True}),
    ])  # fmt: skip
    states = fold(events)
    assert (states["w"].kind, states["w"].name) == ("pipeline", "research")
    assert (states["s"].kind, states["s"].name) == ("saga", "x" * 255)
    assert (states["t"].kind, states["t"].name) == (None, None)
    assert types.INTEGRITY_STREAM not in states  # the log's own checks are no workflow


def test_a_rejected_or_revoked_task_ended_without_failing_and_its_workflow_is_cancelled() -> None:
    """``task.rejected`` (a stale saga step that did nothing, or a task that rejected its message) and
    ``task.revoked`` end a task as neither a success nor a failure, in the workflow's counts and in the stats; a
    workflow whose tasks all ended that way or succeeded is ``cancelled``, not ``succeeded``."""
    for end, agent_failures in ((types.TASK_REJECTED, 0), (types.TASK_REVOKED, 0)):
        stale = task_run("wf", "wf-stale", "planner", 100, [])
        ending = NewEvent(event_id=f"wf-stale:{end}", stream_id="wf", correlation_id="wf", type=end,
                          task_id="wf-stale", agent="planner", occurred_at=at(110),
                          payload={"error_type": "NotRun", "reason": "stale-step"})
        done = recorded([*quick_workflow("wf"), *stale, ending])

        state = fold(done)["wf"]

        assert state.task_status["wf-stale"] == types.task_status(end)
        assert (state.status, state.tasks_succeeded, state.tasks_failed) == ("cancelled", 1, 0)
        assert fold(done[:-1])["wf"].status == "running"  # the step was sent and had not ended
        (planner,) = stats_of(task_steps(done))
        assert (planner.count, planner.succeeded, planner.failures) == (2, 1, agent_failures)
    assert fold(recorded(quick_workflow("wf")))["wf"].status == "succeeded"  # every task succeeded
