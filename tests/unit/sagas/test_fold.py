"""The fold: duplicates are harmless, late results are facts, impossible events are refused."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest

from relaybus.sagas import (
    CompensationStarted,
    InvalidTransition,
    RunCompensation,
    RunStep,
    SagaCompensated,
    SagaCompensationFailed,
    SagaCompleted,
    SagaEvent,
    SagaStarted,
    StepStarted,
    StepSucceeded,
    fold,
    resume,
)
from tests.unit.sagas.harness import T0, Saga, fail_at, linear, with_parallel


def _eventful_saga() -> Saga:
    """A parallel saga that fails, times out, fails a compensation, and is resumed to compensated."""
    saga = Saga(with_parallel())
    saga.run(fail_at("s3", vanish=("p/b",), refuse=("s1",)))
    saga.record(resume(saga.state))
    saga.run(fail_at())
    return saga


def test_every_event_delivered_twice_in_a_row_gives_the_same_state() -> None:
    saga = _eventful_saga()
    doubled = [e for event in saga.events for e in (event, event)]
    assert fold(saga.definition, doubled) == saga.state
    assert saga.state.status == "compensated"


def test_the_whole_log_redelivered_after_the_end_changes_nothing() -> None:
    saga = _eventful_saga()
    assert fold(saga.definition, saga.events + saga.events) == saga.state


def test_every_prefix_redelivered_at_every_later_point_changes_nothing() -> None:
    saga = _eventful_saga()
    events = saga.events
    for i, event in enumerate(events):
        for j in range(i + 1, len(events) + 1):
            with_copy = [*events[:j], event, *events[j:]]
            assert fold(saga.definition, with_copy) == saga.state, (event, j)


def test_a_redelivered_compensation_failure_after_resume_does_not_undo_the_resume() -> None:
    saga = Saga(linear(2))
    saga.run(fail_at("s2", refuse=("s1",)))
    failure = saga.events[-2]
    stale_finish = saga.events[-1]
    assert isinstance(stale_finish, SagaCompensationFailed)
    saga.record(resume(saga.state))
    state = saga.state
    assert saga.record(failure) == state
    assert saga.record(stale_finish) == state
    assert state.member("s1", "s1").compensation.status == "pending"  # type: ignore[union-attr]


# -- late results --------------------------------------------------------------------------------


def _timed_out(saga: Saga) -> RunStep:
    """Start the last step of ``saga`` and let the sweep mark it timed out."""
    while True:
        (command,) = saga.decide()
        assert isinstance(command, RunStep)
        saga.record(command.event())
        if command.step == saga.definition.steps[-1].name:
            break
        saga.record(command.succeeded(f"{command.step}-out"))
    saga.now = command.deadline + timedelta(seconds=1)
    (mark,) = saga.decide()
    saga.record(mark.event())
    return command


def test_a_late_success_after_a_timeout_turns_unknown_into_succeeded_and_the_compensation_gets_its_output() -> None:
    saga = Saga(linear(2))
    late = _timed_out(saga)
    assert saga.state.member("s2", "s2").outcome == "unknown"
    saga.record(late.succeeded("s2-late"))
    assert saga.state.member("s2", "s2").outcome == "succeeded"
    assert saga.state.status == "compensating"  # the saga already gave up on it; a late answer does not revive it
    undo = saga.decide()[0]
    assert isinstance(undo, RunCompensation)
    assert (undo.step, undo.step_output, undo.step_outcome) == ("s2", "s2-late", "succeeded")


def test_a_late_success_after_the_compensation_started_changes_nothing() -> None:
    saga = Saga(linear(2))
    late = _timed_out(saga)
    (undo,) = saga.decide()
    saga.record(undo.event())
    state = saga.state
    assert saga.record(late.succeeded("s2-late")) == state


def test_a_late_failure_after_a_timeout_keeps_the_outcome_unknown() -> None:
    saga = Saga(linear(2))
    late = _timed_out(saga)
    saga.record(late.failed("boom"))
    assert saga.state.member("s2", "s2").outcome == "unknown"


def test_a_result_that_beat_the_sweep_wins_over_the_timeout() -> None:
    saga = Saga(linear(1))
    (run,) = saga.decide()
    assert isinstance(run, RunStep)
    saga.record(run.event())
    saga.now = run.deadline + timedelta(seconds=1)
    (mark,) = saga.decide()
    saga.record(run.succeeded("on time after all"))
    saga.record(mark.event())
    assert saga.state.member("s1", "s1").outcome == "succeeded"
    assert saga.state.status == "running"


# -- impossible events ---------------------------------------------------------------------------


def _started(step: str, attempt: int = 1) -> StepStarted:
    return StepStarted(saga_id="saga-1", step=step, member=step, attempt=attempt, deadline=T0)


def _succeeded(step: str, attempt: int = 1) -> StepSucceeded:
    return StepSucceeded(saga_id="saga-1", step=step, member=step, attempt=attempt, data=f"{step}-out")


def _undo(step: str, attempt: int = 1) -> CompensationStarted:
    return CompensationStarted(saga_id="saga-1", step=step, member=step, attempt=attempt)


def _s1_succeeded(saga: Saga) -> None:
    saga.record(_started("s1"))
    saga.record(_succeeded("s1"))


def _failing_at_s3(saga: Saga) -> None:
    """s1 and s2 succeeded, s3 failed: the saga is compensating, nothing undone yet."""
    _s1_succeeded(saga)
    saga.record(_started("s2"))
    saga.record(_succeeded("s2"))
    (s3,) = saga.decide()
    assert isinstance(s3, RunStep)
    saga.record(s3.event())
    saga.record(s3.failed("boom"))


_restarted = SagaStarted(saga_id="saga-1", saga="linear3")
Setup = Callable[[Saga], object]
IMPOSSIBLE: list[tuple[str, Setup, SagaEvent, str]] = [
    ("a result for a step that never started", lambda s: None, _succeeded("s1"), "never started"),
    ("a result for an attempt that never started", lambda s: s.record(_started("s1")), _succeeded("s1", 2), "never"),
    ("a step started before the previous one succeeded", lambda s: s.record(_started("s1")), _started("s2"), "s1"),
    ("a step started after the saga began compensating", _failing_at_s3, _started("s4"), "compensating"),
    ("a compensation for a step that never ran", _failing_at_s3, _undo("s4"), "pending"),
    ("a compensation for a step that failed cleanly", _failing_at_s3, _undo("s3"), "failed"),
    ("a compensation out of reverse order", _failing_at_s3, _undo("s1"), "later step 's2'"),
    ("a compensation while the saga runs", _s1_succeeded, _undo("s1"), "running"),
    ("a saga completed before every step succeeded", lambda s: None, SagaCompleted(saga_id="saga-1"), "not every step"),
    ("a saga compensated before its compensations ran", _failing_at_s3, SagaCompensated(saga_id="saga-1"), "not ended"),
    ("an event for a step the saga does not have", lambda s: None, _started("nope"), "no step 'nope'"),
    ("an event of another saga", lambda s: None, SagaCompleted(saga_id="saga-2"), "another saga"),
    ("the saga started again as another saga", lambda s: None, _restarted, "already started as 'linear4'"),
]  # fmt: skip


@pytest.mark.parametrize(("setup", "event", "reason"), [c[1:] for c in IMPOSSIBLE], ids=[c[0] for c in IMPOSSIBLE])
def test_an_impossible_event_raises_invalid_transition_naming_it(setup: Setup, event: SagaEvent, reason: str) -> None:
    saga = Saga(linear(4))
    setup(saga)
    with pytest.raises(InvalidTransition, match=reason) as raised:
        saga.record(event)
    assert raised.value.event == event
    assert event.type in str(raised.value)


def test_a_success_contradicting_a_clean_failure_of_the_same_step_is_refused() -> None:
    saga = Saga(linear(1))
    (run,) = saga.decide()
    assert isinstance(run, RunStep)
    saga.record(run.event())
    saga.record(run.failed("boom"))
    with pytest.raises(InvalidTransition, match="failed cleanly"):
        saga.record(run.succeeded("surprise"))


def test_a_compensation_for_a_step_without_one_is_refused() -> None:
    saga = Saga(linear(2, compensable=False))
    saga.run(fail_at("s2"))
    with pytest.raises(InvalidTransition, match="no compensation"):
        saga.record(_undo("s1"))


def test_folding_no_events_or_not_starting_with_saga_started_is_refused() -> None:
    with pytest.raises(InvalidTransition, match=r"begin with saga\.started"):
        fold(linear(1), [])
    with pytest.raises(InvalidTransition, match=r"first event is saga\.started"):
        fold(linear(1), [_started("s1")])
    with pytest.raises(InvalidTransition, match="the definition is 'linear1'"):
        fold(linear(1), [SagaStarted(saga_id="saga-1", saga="other")])


def test_a_redelivered_start_keeps_the_first_input_even_if_the_stored_copy_was_redacted() -> None:
    saga = Saga(linear(1), input={"access_token": "s3cret"})
    state = saga.record(SagaStarted(saga_id="saga-1", saga="linear1", data={"access_token": "[REDACTED]"}))
    assert state.input == {"access_token": "s3cret"}
