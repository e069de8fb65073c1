"""Contract: timeline, find and agent statistics over a synthetic workflow."""

from __future__ import annotations

import json

import pytest

from relaybus.eventstore import EventStore, NewEvent, types
from tests.unit.eventstore.synthetic import at, quick_workflow, research_workflow


@pytest.fixture
def audited(store: EventStore) -> EventStore:
    store.append(research_workflow("wf-a"))
    store.append(quick_workflow("wf-b"))
    return store


def test_timeline_orders_events_and_derives_each_task_step(audited: EventStore) -> None:
    timeline = audited.timeline("wf-a")

    positions = [e.position for e in timeline.events]
    assert positions == sorted(positions) and len(positions) == 20
    assert {e.correlation_id for e in timeline.events} == {"wf-a"}
    planner, researcher, writer = timeline.steps
    assert (planner.agent, planner.status, planner.queue) == ("planner", "succeeded", "agents.planner")
    assert (planner.sent_at, planner.started_at, planner.finished_at) == (at(0), at(1), at(3))
    assert (planner.queue_wait_s, planner.run_time_s, planner.attempts) == (1.0, 2.0, 1)
    assert (researcher.status, researcher.attempts) == ("succeeded", 2)
    assert (researcher.started_at, researcher.last_started_at) == (at(5), at(8))
    assert (researcher.queue_wait_s, researcher.run_time_s) == (2.0, 4.0)
    assert (writer.status, writer.queue_wait_s, writer.run_time_s) == ("dead_lettered", 1.0, 1.0)
    assert timeline.workflow is not None and timeline.workflow.status == "failed"
    dumped = timeline.model_dump(mode="json")
    assert json.loads(json.dumps(dumped)) == dumped
    assert dumped["steps"][0]["sent_at"] == "2025-01-01T12:00:00Z"


def test_timeline_of_an_unknown_correlation_is_empty(audited: EventStore) -> None:
    timeline = audited.timeline("nobody")
    assert (timeline.events, timeline.steps, timeline.workflow) == ([], [], None)


def test_find_filters_by_exact_type_glob_agent_status_correlation_and_time(audited: EventStore) -> None:
    def types_of(**filters: object) -> list[str]:
        return [e.type for e in audited.find(**filters)]  # type: ignore[arg-type]

    assert types_of(type="task.started", agent="researcher") == ["task.started", "task.started"]
    assert set(types_of(type="task.*")) == types.TASK_TYPES - {"task.revoked", "task.rejected", "task.deferred"}
    assert types_of(type="workflow.*") == ["workflow.started", "workflow.failed"]
    assert types_of(type="*.failed") == ["task.failed", "workflow.failed"]
    assert types_of(status="dead_lettered") == ["task.dead_lettered"]
    assert types_of(status="failed", correlation_id="wf-a", agent="writer") == ["task.failed"]
    assert len(audited.find(correlation_id="wf-b")) == 4
    assert types_of(type="task.sent", since=at(3), until=at(12)) == ["task.sent", "task.sent"]
    assert types_of(type="task_sent") == []  # "_" is not a wildcard
    newest = audited.find(limit=2, newest_first=True)
    assert [e.position for e in newest] == sorted((e.position for e in newest), reverse=True)
    assert len(newest) == 2
    first_two = audited.find(limit=2)
    assert audited.find(limit=1, after_position=first_two[0].position) == first_two[1:]
    assert audited.find(newest_first=True, before_position=first_two[1].position) == first_two[:1]


def test_agent_stats_count_tasks_failures_and_percentiles(audited: EventStore) -> None:
    stats = {s.agent: s for s in audited.agent_stats()}

    assert sorted(stats) == ["planner", "researcher", "writer"]
    planner = stats["planner"]
    assert (planner.count, planner.succeeded, planner.failures) == (2, 2, 0)
    assert planner.run_time_p50_s == pytest.approx(3.0)
    assert planner.run_time_p95_s == pytest.approx(3.9)
    assert planner.queue_wait_p50_s == pytest.approx(2.0)
    assert planner.queue_wait_p95_s == pytest.approx(2.9)
    assert (stats["researcher"].count, stats["researcher"].run_time_p50_s) == (1, 4.0)
    assert (stats["writer"].failures, stats["writer"].succeeded) == (1, 0)


def test_agent_stats_only_cover_the_time_range(audited: EventStore) -> None:
    stats = {s.agent: s for s in audited.agent_stats(since=at(50))}
    assert list(stats) == ["planner"]
    assert (stats["planner"].count, stats["planner"].run_time_p50_s) == (1, 4.0)
    assert audited.agent_stats(until=at(-1)) == []


def test_a_pattern_over_several_types_pages_in_position_order_with_the_limit_across_types(store: EventStore) -> None:
    kinds = ["task.failed", "saga.step.failed", "pipeline.failed", "task.succeeded", "task_x.failed"]
    store.append([NewEvent(stream_id=f"s{i % 3}", type=kinds[i % len(kinds)]) for i in range(40)])
    failed = [e for e in store.read_all() if e.type.endswith(".failed")]
    assert [e.position for e in store.find(status="failed", limit=7)] == [e.position for e in failed[:7]]
    newest = store.find(status="failed", newest_first=True, limit=5)
    assert [e.position for e in newest] == [e.position for e in failed[::-1][:5]]
    after = failed[10].position
    assert [e.position for e in store.find(status="failed", after_position=after, limit=3)] == [
        e.position for e in failed[11:14]
    ]
    assert [e.type for e in store.find(type="task*.failed", limit=100)] == [
        e.type for e in failed if e.type in ("task.failed", "task_x.failed")
    ]
    assert store.find(type="nothing.*") == []
    assert store.find(type="task_.failed") == []  # "_" is no wildcard


def test_a_time_range_pages_in_position_order_whether_read_from_the_time_index_or_not(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from relaybus.eventstore import _audit as store_module

    # Times out of position order (clocks of several hosts): the range's matches are not a run of positions.
    store.append([NewEvent(stream_id=f"s{i % 4}", type="t", occurred_at=at((i * 7) % 30)) for i in range(60)])
    expected = [e.position for e in store.read_all() if at(5) <= e.occurred_at < at(20)]
    for narrow in (0, 10_000):  # never, always "narrow" (PostgreSQL reads the range from the time index)
        monkeypatch.setattr(store_module, "NARROW_TIME_RANGE", narrow)
        assert [e.position for e in store.find(since=at(5), until=at(20), limit=10)] == expected[:10]
        newest = store.find(since=at(5), until=at(20), limit=4, newest_first=True)
        assert [e.position for e in newest] == expected[::-1][:4]
        assert [e.position for e in store.find(since=at(5), until=at(20), type="t", limit=100)] == expected


def test_agent_stats_agree_with_the_steps_built_from_the_same_events(audited: EventStore) -> None:
    from relaybus.eventstore.queries import stats_of, task_steps

    task_events = [e for e in audited.read_all() if e.task_id is not None and e.type.startswith("task.")]
    assert audited.agent_stats() == stats_of(task_steps(task_events))
    assert audited.agent_stats(since=at(50)) == stats_of(task_steps(e for e in task_events if e.occurred_at >= at(50)))


def test_a_send_recorded_after_its_run_finished_dates_the_step_and_is_not_a_redrive(store: EventStore) -> None:
    """The sender records ``task.sent`` after the broker's confirm; a fast worker's records can land first.
    Appended in that order, the step is still succeeded with its times, and a later re-drive is still one."""

    def event(type_: str, seconds: float, key: str) -> NewEvent:
        return NewEvent(event_id=f"late:{key}", stream_id="wf-late", type=type_, task_id="t-late", agent="planner",
                        queue="agents.planner", attempt=1, occurred_at=at(seconds))

    store.append([event(types.TASK_STARTED, 1, "started"), event(types.TASK_SUCCEEDED, 3, "succeeded")])
    store.append([event(types.TASK_SENT, 0, "sent")])
    (step,) = store.timeline("wf-late").steps
    assert (step.status, step.sent_at, step.started_at, step.finished_at) == ("succeeded", at(0), at(1), at(3))
    assert (step.queue_wait_s, step.run_time_s) == (1.0, 2.0)

    store.append([event(types.TASK_SENT, 10, "redrive-sent")])  # a re-drive: sent after the run started
    (step,) = store.timeline("wf-late").steps
    assert (step.status, step.finished_at) == ("sent", None)
