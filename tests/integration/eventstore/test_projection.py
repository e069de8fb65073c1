"""Contract: the workflow-status projection equals a dry-run replay and a rebuild; diff finds divergence."""

from __future__ import annotations

import threading

from relaybus.eventstore import EventStore, NewEvent, WorkflowStatusProjection, types
from tests.integration.eventstore.conftest import Database
from tests.unit.eventstore.synthetic import at, quick_workflow, research_workflow


def saga_events(correlation_id: str) -> list[NewEvent]:
    stream = f"saga:{correlation_id}"
    steps = [types.SAGA_STARTED, types.SAGA_STEP_STARTED, types.SAGA_STEP_FAILED, types.SAGA_COMPENSATED]
    return [
        NewEvent(stream_id=stream, correlation_id=correlation_id, type=type_, occurred_at=at(200 + i))
        for i, type_ in enumerate(steps)
    ]


def fill(store: EventStore) -> list[str]:
    store.append(research_workflow("wf-a"))
    store.append(quick_workflow("wf-b"))
    store.append(saga_events("wf-c") + quick_workflow("wf-c"))
    return ["wf-a", "wf-b", "wf-c"]


def test_the_live_projection_equals_a_dry_run_replay_and_a_rebuild(store: EventStore) -> None:
    correlation_ids = fill(store)

    applied = store.projection.catch_up()

    assert applied == store.last_position() == store.projection.position()
    live = {cid: store.projection.get(cid) for cid in correlation_ids}
    assert live == {cid: store.dry_run(cid).state for cid in correlation_ids}
    assert {cid: s.status for cid, s in live.items() if s} == {
        "wf-a": "failed",
        "wf-b": "succeeded",
        "wf-c": "compensated",
    }
    wf_a = live["wf-a"]
    assert wf_a is not None
    assert (wf_a.tasks_succeeded, wf_a.tasks_failed, wf_a.first_event_at, wf_a.last_event_at) == (2, 1, at(0), at(15))

    calls: list[tuple[int, int]] = []
    rebuilt = store.projection.rebuild(progress=lambda done, head: calls.append((done, head)))

    assert rebuilt == applied
    assert calls[-1] == (applied, store.last_position())
    assert {cid: store.projection.get(cid) for cid in correlation_ids} == live
    assert sorted(s.correlation_id for s in store.projection.workflows()) == correlation_ids
    assert [s.correlation_id for s in store.projection.workflows(status="compensated")] == ["wf-c"]


def test_catching_up_applies_each_event_exactly_once(store: EventStore) -> None:
    events = research_workflow("wf-a")
    store.append(events[:7])
    assert store.projection.catch_up() == 7
    assert store.projection.catch_up() == 0

    store.append(events[7:])
    store.projection.batch_size = 3
    assert store.projection.catch_up() == len(events) - 7

    assert store.projection.get("wf-a") == store.dry_run("wf-a").state


def test_processes_catching_up_at_once_share_the_work_without_repeating_it(db: Database) -> None:
    writer = db.open()
    fill(writer)
    followers = [db.open().projection for _ in range(4)]
    for follower in followers:
        follower.batch_size = 2
    counts: list[int] = []
    barrier = threading.Barrier(len(followers))

    def follow(projection: WorkflowStatusProjection) -> None:
        barrier.wait(timeout=30)
        counts.append(projection.catch_up())

    threads = [threading.Thread(target=follow, args=(f,)) for f in followers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert sum(counts) == writer.last_position()
    for cid in ("wf-a", "wf-b", "wf-c"):
        assert writer.projection.get(cid) == writer.dry_run(cid).state


def test_diff_reports_the_first_step_whose_output_differs(store: EventStore) -> None:
    store.append(research_workflow("run-1", sources=["a", "b"]))
    store.append(research_workflow("run-2", sources=["a", "c"]))

    result = store.diff("run-1", "run-2")

    assert not result.identical and (result.steps_a, result.steps_b) == (3, 3)
    difference = result.first_difference
    assert difference is not None
    assert (difference.agent, difference.ordinal, difference.field) == ("researcher", 1, "output")
    assert difference.paths == ["$.sources[1]"]
    assert difference.step_a is not None and difference.step_a.task_id == "run-1-researcher"
    assert difference.step_b is not None and difference.step_b.output == {"sources": ["a", "c"]}
    assert result.model_dump(mode="json")["first_difference"]["field"] == "output"


def test_diff_reports_an_input_divergence_and_identical_runs(store: EventStore) -> None:
    store.append(research_workflow("run-1", topic="tides"))
    store.append(research_workflow("run-2", topic="moons"))
    store.append(research_workflow("run-3", topic="tides"))

    first = store.diff("run-1", "run-2").first_difference
    assert first is not None
    assert (first.agent, first.field, first.paths) == ("planner", "input", ["$.topic"])
    same = store.diff("run-1", "run-3")
    assert same.identical and same.first_difference is None
