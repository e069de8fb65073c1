"""The saga repository on a real (SQLite) event store: optimistic concurrency, duplicates, redelivery, sweeps."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from relaybus.eventstore import ConcurrencyError, EventStore, NewEvent, RecordedEvent, StoreConfig, open_store
from relaybus.sagas import (
    InvalidTransition,
    RunCompensation,
    RunStep,
    SagaNotFound,
    SagaRegistry,
    SagaRepository,
    StepSucceeded,
    dedup_key,
    view_of,
)
from tests.unit.sagas.harness import T0, linear, with_parallel

LINEAR = linear(3)
FAN_OUT = with_parallel()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EventStore]:
    store = open_store(f"sqlite:///{tmp_path / 'events.sqlite'}", config=StoreConfig(max_payload_bytes=8192))
    yield store
    store.close()


@pytest.fixture
def repo(store: EventStore) -> SagaRepository:
    return SagaRepository(store, SagaRegistry([LINEAR, FAN_OUT]))


def only_step(commands: Sequence[RunStep | RunCompensation]) -> RunStep:
    (command,) = commands
    assert isinstance(command, RunStep)
    return command


def test_start_records_the_saga_and_its_first_step_in_one_append_and_hands_back_its_dispatch(repo, store):
    decision = repo.start(LINEAR, "s-1", {"topic": "x"}, now=T0, correlation_id="corr-1")
    step = only_step(decision.dispatch)
    assert (step.step, step.task, step.input, step.idempotency_key) == (
        "s1",
        "agents.s1",
        {"topic": "x"},
        "s-1:s1:s1:step",
    )
    records = store.read_stream("saga:s-1")
    assert [r.type for r in records] == ["saga.started", "saga.step.started"]
    assert {r.correlation_id for r in records} == {"corr-1"}
    assert [r.event_id for r in records] == ["s-1:saga.started", "s-1:saga.step.started:s1:s1:1"]
    assert records[1].causation_id == records[0].event_id, "the step was started because the saga was"
    assert [e.type for e in store.timeline("corr-1").events] == ["saga.started", "saga.step.started"]


def test_starting_the_same_saga_again_records_nothing_and_sends_the_running_first_step_again(repo, store):
    first = repo.start(LINEAR, "s-1", "in", now=T0)
    again = repo.start(LINEAR, "s-1", "in", now=T0 + timedelta(seconds=1))
    assert again.recorded == ()
    assert again.dispatch == first.dispatch
    assert store.stream_version("saga:s-1") == 2


def test_a_duplicate_result_records_nothing_and_dispatches_nothing(repo, store):
    step = only_step(repo.start(LINEAR, "s-1", "in", now=T0).dispatch)
    first = repo.record(step.succeeded("out-1"), now=T0)
    assert only_step(first.dispatch).step == "s2"
    version = store.stream_version("saga:s-1")
    duplicate = repo.record(step.succeeded("out-1"), now=T0)
    assert (duplicate.recorded, duplicate.dispatch) == ((), ())
    assert store.stream_version("saga:s-1") == version


def test_a_redelivered_result_sends_again_what_it_caused_and_is_still_running(repo):
    step = only_step(repo.start(LINEAR, "s-1", "in", now=T0).dispatch)
    caused = repo.record(step.succeeded("out-1"), now=T0).dispatch
    again = repo.record(step.succeeded("out-1"), now=T0, redispatch=True)
    assert again.recorded == ()
    assert again.dispatch == caused, "a worker that died between recording and dispatching must not stall the saga"


class RacingStore:
    """An event store on which another process appends first, just before our first append."""

    def __init__(self, store: EventStore, rival: Any) -> None:
        self._store, self._rival, self.conflicts = store, rival, 0

    def append(self, events: Sequence[NewEvent], *, expected_version: int | None = None) -> list[RecordedEvent]:
        if self._rival is not None:
            rival, self._rival = self._rival, None
            rival()
            self.conflicts += 1
        return self._store.append(events, expected_version=expected_version)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_a_decision_taken_on_a_stale_state_is_refused_and_taken_again_on_the_new_one(repo, store):
    step = only_step(repo.start(LINEAR, "s-1", "in", now=T0).dispatch)
    rival = SagaRepository(store, repo.registry)
    racing = RacingStore(store, lambda: rival.record(step.succeeded("out-1"), now=T0))
    ours = SagaRepository(racing, repo.registry)  # type: ignore[arg-type]
    decision = ours.record(step.succeeded("out-1"), now=T0)
    assert racing.conflicts == 1
    assert decision.dispatch == (), "the rival already started s2; starting it again would run it twice"
    types = [r.type for r in store.read_stream("saga:s-1")]
    assert types.count("saga.step.started") == 2 and types.count("saga.step.succeeded") == 1


class CountingStore:
    """Counts the stream reads made through it."""

    def __init__(self, store: EventStore) -> None:
        self._store, self.reads = store, 0

    def read_stream(self, stream_id: str, from_version: int = 1) -> list[RecordedEvent]:
        self.reads += 1
        return self._store.read_stream(stream_id, from_version)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_a_start_reads_nothing_and_a_result_decided_on_the_fences_read_reads_nothing_more(repo, store):
    counting = CountingStore(store)
    ours = SagaRepository(counting, repo.registry)  # type: ignore[arg-type]
    step = only_step(ours.start(LINEAR, "s-1", "in", now=T0).dispatch)
    assert counting.reads == 0, "a new saga id has no stream: the append's expected_version=0 checks it"
    fenced = ours.load("s-1")
    decision = ours.record(step.succeeded("out-1"), now=T0, loaded=fenced)
    assert counting.reads == 1 and only_step(decision.dispatch).step == "s2"


class TailReadingStore(CountingStore):
    """Counts stream reads and keeps the version each began at."""

    def __init__(self, store: EventStore) -> None:
        super().__init__(store)
        self.from_versions: list[int] = []

    def read_stream(self, stream_id: str, from_version: int = 1) -> list[RecordedEvent]:
        self.from_versions.append(from_version)
        return super().read_stream(stream_id, from_version)


def test_a_saga_this_process_folded_is_read_again_from_its_next_version_and_a_rivals_events_folded_in(repo, store):
    tail = TailReadingStore(store)
    ours = SagaRepository(tail, repo.registry)  # type: ignore[arg-type]
    step = only_step(ours.start(LINEAR, "s-1", "in", now=T0).dispatch)
    first = ours.load("s-1")
    assert tail.from_versions == [1], "a saga this process never read is read whole"
    s2 = only_step(ours.record(step.succeeded("out-1"), now=T0, loaded=first).dispatch)
    assert ours.load("s-1").version == store.stream_version("saga:s-1")
    assert tail.from_versions == [1, first.version + 3], "after its own append, only what follows is read"
    repo.record(s2.succeeded("out-2"), now=T0)  # a rival process (its own cache) moves the saga on
    seen = ours.load("s-1")
    fresh = SagaRepository(store, repo.registry).load("s-1")
    assert (seen.version, seen.state, seen.records) == (fresh.version, fresh.state, fresh.records)
    assert seen.state.status == "running" and seen.records[-1].type == "saga.step.started"


def test_a_saga_folded_from_a_stale_cache_is_refused_by_the_append_and_read_whole_again(repo, store):
    step = only_step(repo.start(LINEAR, "s-1", "in", now=T0).dispatch)
    tail = TailReadingStore(store)
    ours = SagaRepository(tail, repo.registry)  # type: ignore[arg-type]
    stale = ours.load("s-1")
    racing = RacingStore(store, lambda: repo.record(step.succeeded("out-1"), now=T0))
    ours.store = racing  # type: ignore[assignment]
    decision = ours.record(step.succeeded("out-1"), now=T0, loaded=stale)
    assert racing.conflicts == 1 and decision.dispatch == (), "the rival started s2; ours must not again"
    assert ours.folded.get("s-1") is not None and ours.load("s-1").version == store.stream_version("saga:s-1")


def test_a_stale_guess_is_refused_by_the_append_and_the_decision_taken_again_on_the_stream(repo, store):
    step = only_step(repo.start(LINEAR, "s-1", "in", now=T0).dispatch)
    stale = repo.load("s-1")
    repo.record(step.succeeded("out-1"), now=T0)  # a rival records the same result first and starts s2
    decision = repo.record(step.succeeded("out-1"), now=T0, loaded=stale)
    assert (decision.recorded, decision.dispatch) == ((), ()), "s2 was started once, by the rival"
    types = [r.type for r in store.read_stream("saga:s-1")]
    assert types.count("saga.step.started") == 2 and types.count("saga.step.succeeded") == 1


def test_a_guess_that_leaves_nothing_to_append_is_not_trusted_the_stream_is_read(repo, store):
    step = only_step(repo.start(LINEAR, "s-1", "in", now=T0).dispatch)
    caused = repo.record(step.succeeded("out-1"), now=T0).dispatch
    fenced = repo.load("s-1")
    counting = CountingStore(store)
    ours = SagaRepository(counting, repo.registry)  # type: ignore[arg-type]
    again = ours.record(step.succeeded("out-1"), now=T0, loaded=fenced, redispatch=True)
    assert counting.reads == 1, "no append checked the guess, so the stream was read"
    assert again.recorded == () and again.dispatch == caused


def test_starting_a_taken_saga_id_is_a_conflict_for_the_guess_then_a_read_and_nothing_twice(repo, store):
    first = repo.start(LINEAR, "s-1", "in", now=T0)
    repo.record(only_step(first.dispatch).succeeded("out-1"), now=T0)
    again = repo.start(LINEAR, "s-1", "in", now=T0 + timedelta(seconds=1))
    assert again.recorded == () and again.dispatch == ()
    assert [r.type for r in store.read_stream("saga:s-1")].count("saga.started") == 1


def test_members_of_a_parallel_step_finishing_at_once_start_the_next_step_exactly_once(repo, store):
    s1 = only_step(repo.start(FAN_OUT, "s-p", "in", now=T0).dispatch)
    members = repo.record(s1.succeeded("s1-out"), now=T0).dispatch
    assert sorted(m.member for m in members) == ["a", "b", "c"]
    dispatched: list[RunStep | RunCompensation] = []
    barrier = threading.Barrier(len(members))

    def finish(command: RunStep | RunCompensation) -> None:
        barrier.wait()
        dispatched.extend(SagaRepository(store, repo.registry).record(command.succeeded("ok"), now=T0).dispatch)

    threads = [threading.Thread(target=finish, args=(m,)) for m in members]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [c.step for c in dispatched] == ["s3"]
    assert repo.load("s-p").state.step("p").succeeded


def test_a_sweep_past_the_deadline_times_the_step_out_and_starts_compensating_in_the_same_append(repo, store):
    s1 = only_step(repo.start(LINEAR, "s-1", "in", now=T0).dispatch)
    s2 = only_step(repo.record(s1.succeeded("out-1"), now=T0).dispatch)
    assert repo.tick("s-1", now=T0 + timedelta(seconds=59)).recorded == ()
    decision = repo.tick("s-1", now=s2.deadline + timedelta(seconds=1))
    assert [e.type for e in decision.recorded] == ["saga.step.timed_out", "saga.compensation.started"]
    (undo_s2,) = decision.dispatch
    assert isinstance(undo_s2, RunCompensation)
    assert (undo_s2.step, undo_s2.step_outcome) == ("s2", "unknown"), "a step that timed out may have had effects"
    late = repo.record(s2.succeeded("late"), now=T0)  # the step answers after all: a fact, but too late to matter
    assert late.dispatch == () and repo.load("s-1").state.member("s2", "s2").outcome == "unknown"


def test_a_failed_compensation_does_not_stop_the_earlier_ones_and_resume_reissues_only_it(repo):
    s1 = only_step(repo.start(LINEAR, "s-1", "in", now=T0).dispatch)
    s2 = only_step(repo.record(s1.succeeded("o1"), now=T0).dispatch)
    s3 = only_step(repo.record(s2.succeeded("o2"), now=T0).dispatch)
    (undo_s2,) = repo.record(s3.failed("boom"), now=T0).dispatch
    (undo_s1,) = repo.record(undo_s2.failed("refused"), now=T0).dispatch
    assert undo_s1.step == "s1"
    ended = repo.record(undo_s1.succeeded(), now=T0)
    assert ended.state.status == "compensation_failed" and ended.dispatch == ()
    (again,) = repo.resume("s-1", now=T0).dispatch
    assert isinstance(again, RunCompensation)
    assert (again.step, again.attempt, again.idempotency_key) == ("s2", 2, undo_s2.idempotency_key)
    with pytest.raises(InvalidTransition):
        repo.resume("s-1", now=T0)  # a second person resuming meanwhile: the saga is compensating already
    assert repo.record(again.succeeded(), now=T0).state.status == "compensated"


def test_resume_of_a_compensation_failed_saga_reissues_its_failed_compensation(repo):
    s1 = only_step(repo.start(LINEAR, "s-1", "in", now=T0).dispatch)
    s2 = only_step(repo.record(s1.succeeded("o1"), now=T0).dispatch)
    (undo_s1,) = repo.record(s2.failed("boom"), now=T0).dispatch
    assert repo.record(undo_s1.failed("refused"), now=T0).state.status == "compensation_failed"
    (again,) = repo.resume("s-1", now=T0).dispatch
    assert isinstance(again, RunCompensation)
    assert (again.step, again.attempt, again.idempotency_key) == ("s1", 2, undo_s1.idempotency_key)
    assert repo.record(again.succeeded(), now=T0).state.status == "compensated"


def test_unknown_sagas_and_results_that_do_not_fit_are_refused_and_nothing_is_recorded(repo, store):
    with pytest.raises(SagaNotFound):
        repo.load("nope")
    with pytest.raises(SagaNotFound):
        repo.record(StepSucceeded(saga_id="nope", step="s1", member="s1", attempt=1), now=T0)
    only_step(repo.start(LINEAR, "s-1", "in", now=T0).dispatch)
    with pytest.raises(InvalidTransition):
        repo.record(StepSucceeded(saga_id="s-1", step="s2", member="s2", attempt=1), now=T0)
    assert store.stream_version("saga:s-1") == 2
    with pytest.raises(ValueError, match="saga id"):
        repo.start(LINEAR, "bad:id", "in", now=T0)


def test_an_input_too_large_for_the_log_is_refused_and_a_large_output_is_kept_as_its_size_and_hash(repo):
    with pytest.raises(ValueError, match="reference"):
        repo.start(LINEAR, "s-big", "x" * 10_000, now=T0)
    s1 = only_step(repo.start(LINEAR, "s-1", "in", now=T0).dispatch)
    s2 = only_step(repo.record(s1.succeeded("y" * 10_000), now=T0).dispatch)
    assert s2.input == "y" * 10_000, "the next step is sent the full output, from memory"
    stored = repo.load("s-1").state.member("s1", "s1").output
    assert isinstance(stored, dict) and stored["_too_large"] and stored["size"] == 10_002


def test_open_sagas_listing_by_status_and_the_view_of_a_saga(repo):
    s1 = only_step(repo.start(LINEAR, "done", "in", now=T0).dispatch)
    s2 = only_step(repo.record(s1.succeeded("o1"), now=T0).dispatch)
    s3 = only_step(repo.record(s2.succeeded("o2"), now=T0).dispatch)
    repo.record(s3.succeeded("o3"), now=T0)
    repo.start(LINEAR, "open", "in", now=T0)
    assert repo.open_saga_ids() == ["open"]
    assert [s.saga_id for s in repo.recent()] == ["open", "done"]
    assert [s.saga_id for s in repo.recent(status="completed")] == ["done"]
    assert [s.saga_id for s in repo.recent(status="running")] == ["open"]

    view = view_of(repo.load("done"))
    assert view.status == "completed" and view.output == "o3"
    assert [(s.step, s.outcome, s.attempt) for s in view.steps] == [
        ("s1", "succeeded", 1),
        ("s2", "succeeded", 1),
        ("s3", "succeeded", 1),
    ]
    assert all(s.started_at is not None and s.duration_s is not None for s in view.steps)
    assert view.ended_at is not None and view.history[-1].type == "saga.completed"
    assert view.history[1].step == "s1" and dedup_key(s1.event()).endswith(":1")


@pytest.mark.parametrize("definition", [LINEAR, FAN_OUT], ids=["one-step", "parallel-first"])
def test_a_planned_start_decides_what_start_records_and_sends_without_the_store_and_commits_it(
    repo, store, tmp_path, definition
):
    planned = repo.plan_start(definition, "s-p", {"topic": "x"}, now=T0, correlation_id="corr-p")
    assert store.read_stream("saga:s-p") == [], "planning reads and writes nothing"
    repo.commit_start(planned)
    other = open_store(f"sqlite:///{tmp_path / 'other.sqlite'}", config=StoreConfig(max_payload_bytes=8192))
    try:
        started = SagaRepository(other, repo.registry).start(
            definition, "s-p", {"topic": "x"}, now=T0, correlation_id="corr-p"
        )

        def kept(log: EventStore) -> list[tuple[Any, ...]]:
            records = log.read_stream("saga:s-p")
            return [(r.type, r.event_id, r.causation_id, r.correlation_id, r.payload) for r in records]

        assert kept(store) == kept(other)
    finally:
        other.close()
    assert planned.decision.dispatch == started.dispatch and planned.decision.recorded == started.recorded
    assert planned.decision.state == started.state and planned.decision.correlation_id == "corr-p"
    assert repo.load("s-p").state == started.state


def test_a_planned_start_of_a_taken_id_is_refused_and_records_nothing_and_bad_input_is_refused_unplanned(repo, store):
    first = repo.start(LINEAR, "s-1", "in", now=T0)
    repo.record(only_step(first.dispatch).succeeded("out-1"), now=T0)
    with pytest.raises(ConcurrencyError):
        repo.commit_start(repo.plan_start(LINEAR, "s-1", "in", now=T0))
    assert [r.type for r in store.read_stream("saga:s-1")].count("saga.started") == 1
    with pytest.raises(ValueError, match="reference"):
        repo.plan_start(LINEAR, "s-big", "x" * 10_000, now=T0)
    with pytest.raises(ValueError, match="saga id"):
        repo.plan_start(LINEAR, "bad:id", "in", now=T0)
