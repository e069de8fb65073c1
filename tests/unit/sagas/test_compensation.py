"""What gets undone, in which order, when a step fails, times out, or a compensation fails."""

from __future__ import annotations

from datetime import timedelta

import pytest

from relaybus.sagas import (
    CONTENT_CREATION,
    Finish,
    InvalidTransition,
    MarkTimedOut,
    RunCompensation,
    RunStep,
    SagaDefinition,
    Step,
    resume,
)
from tests.unit.sagas.harness import Answer, Saga, Script, fail_at, label, linear, with_parallel


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_a_failure_at_step_k_compensates_exactly_the_steps_before_it_in_reverse(k: int) -> None:
    saga = Saga(linear(4))
    finish = saga.run(fail_at(f"s{k}"))
    assert finish.status == "compensated"
    assert saga.steps_run() == [f"s{i}" for i in range(1, k + 1)]
    assert saga.compensations() == [f"s{i}" for i in range(k - 1, 0, -1)]


def test_the_naive_reversed_walk_bug_does_not_happen_undoing_what_ran_and_nothing_that_did_not() -> None:
    # The seed's snippet would undo s4 (never ran) and stop at s3, leaving s1 and s2 in place.
    saga = Saga(linear(4))
    saga.run(fail_at("s3"))
    assert saga.compensations() == ["s2", "s1"]


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_a_step_that_times_out_is_compensated_too_because_it_may_have_had_effects(k: int) -> None:
    saga = Saga(linear(4))
    finish = saga.run(fail_at(vanish=(f"s{k}",)))
    assert finish.status == "compensated"
    assert saga.compensations() == [f"s{i}" for i in range(k, 0, -1)]
    first = next(c for c in saga.issued if isinstance(c, RunCompensation))
    assert (first.step_outcome, first.step_output) == ("unknown", None)
    assert [c for c in saga.issued if isinstance(c, MarkTimedOut)] == [
        MarkTimedOut(saga_id="saga-1", step=f"s{k}", member=f"s{k}", attempt=1)
    ]


def test_a_saga_whose_steps_all_succeed_completes_with_the_last_output_and_undoes_nothing() -> None:
    saga = Saga(linear(3))
    finish = saga.run(fail_at())
    assert (finish.status, finish.output) == ("completed", "s3-out")
    assert saga.compensations() == []
    assert saga.state.status == "completed"


def test_steps_without_a_compensation_are_skipped() -> None:
    saga = Saga(linear(3, compensable=False))
    assert saga.run(fail_at("s3")).status == "compensated"
    assert saga.compensations() == []


def test_each_compensation_receives_the_output_the_step_recorded_and_both_idempotency_keys() -> None:
    saga = Saga(linear(2))
    saga.run(fail_at("s2"))
    (undo,) = [c for c in saga.issued if isinstance(c, RunCompensation)]
    assert undo.task == "agents.undo_s1"
    assert (undo.step_output, undo.step_outcome) == ("s1-out", "succeeded")
    assert undo.step_idempotency_key == "saga-1:s1:s1:step"
    assert undo.idempotency_key == "saga-1:s1:s1:compensation"
    assert undo.attempt == 1


def test_the_reference_saga_failing_at_publishing_cancels_the_review_then_discards_the_draft() -> None:
    saga = Saga(CONTENT_CREATION)
    saga.run(fail_at("publishing"))
    tasks = [c.task for c in saga.issued if isinstance(c, RunCompensation)]
    # research is read-only: nothing to undo
    assert tasks == ["agents.reviewer.cancel_review", "agents.writer.discard_draft"]


def test_the_reference_saga_unpublishes_when_publishing_times_out() -> None:
    saga = Saga(CONTENT_CREATION)
    saga.run(fail_at(vanish=("publishing",)))
    tasks = [c.task for c in saga.issued if isinstance(c, RunCompensation)]
    assert tasks == ["agents.publisher.unpublish", "agents.reviewer.cancel_review", "agents.writer.discard_draft"]


# -- parallel steps ------------------------------------------------------------------------------


def test_the_members_of_a_parallel_step_start_together_and_the_next_step_waits_for_all() -> None:
    saga = Saga(with_parallel())
    saga.run(fail_at())
    runs = [[label(c) for c in batch if isinstance(c, RunStep)] for batch in saga.batches]
    assert [r for r in runs if r] == [["s1"], ["p/a", "p/b", "p/c"], ["s3"]]


def test_a_parallel_step_passes_the_previous_output_to_each_member_and_a_dict_to_the_next_step() -> None:
    saga = Saga(with_parallel(), input={"topic": "sagas"})
    saga.run(fail_at())
    inputs = {label(c): c.input for c in saga.issued if isinstance(c, RunStep)}
    assert inputs["s1"] == {"topic": "sagas"}
    assert inputs["p/a"] == inputs["p/b"] == inputs["p/c"] == "s1-out"
    assert inputs["s3"] == {"a": "p/a-out", "b": "p/b-out", "c": "p/c-out"}


def test_a_failed_parallel_member_is_not_compensated_but_its_succeeded_siblings_and_earlier_steps_are() -> None:
    saga = Saga(with_parallel())
    assert saga.run(fail_at("p/b")).status == "compensated"
    assert saga.compensation_batches() == [{"p/a", "p/c"}, {"s1"}]


def test_a_timed_out_parallel_member_is_compensated_with_its_siblings() -> None:
    saga = Saga(with_parallel())
    assert saga.run(fail_at(vanish=("p/b",))).status == "compensated"
    assert saga.compensation_batches() == [{"p/a", "p/b", "p/c"}, {"s1"}]
    outcomes = {label(c): c.step_outcome for c in saga.issued if isinstance(c, RunCompensation)}
    assert outcomes == {"p/a": "succeeded", "p/b": "unknown", "p/c": "succeeded", "s1": "succeeded"}


def test_compensation_waits_until_no_member_is_still_running() -> None:
    saga = Saga(with_parallel())
    (s1,) = saga.decide()
    assert isinstance(s1, RunStep)
    saga.record(s1.event())
    saga.record(s1.succeeded("s1-out"))
    members = [c for c in saga.decide() if isinstance(c, RunStep)]
    for command in members:
        saga.record(command.event())
    a, b, c = members
    saga.record(a.failed("boom"))
    saga.record(c.succeeded("c-out"))
    assert saga.state.status == "compensating"
    assert saga.decide() == []  # b is still running: it may yet succeed and must be undone first
    saga.record(b.succeeded("b-out"))
    assert {label(x) for x in saga.decide() if isinstance(x, RunCompensation)} == {"p/b", "p/c"}


# -- failing compensations and resume -------------------------------------------------------------


def test_a_failed_compensation_does_not_stop_the_earlier_ones_and_the_saga_ends_compensation_failed() -> None:
    saga = Saga(linear(4))
    assert saga.run(fail_at("s4", refuse=("s2",))).status == "compensation_failed"
    assert saga.compensations() == ["s3", "s2", "s1"]
    assert saga.state.member("s2", "s2").compensation.status == "failed"  # type: ignore[union-attr]


def test_resume_reissues_only_the_failed_compensation_with_the_same_key_and_then_the_saga_is_compensated() -> None:
    saga = Saga(linear(4))
    saga.run(fail_at("s4", refuse=("s2",)))
    before = len(saga.issued)
    saga.record(resume(saga.state))
    assert saga.state.status == "compensating"
    assert saga.run(fail_at()).status == "compensated"
    reissued = [c for c in saga.issued[before:] if isinstance(c, RunCompensation)]
    assert [(label(c), c.attempt, c.idempotency_key) for c in reissued] == [("s2", 2, "saga-1:s2:s2:compensation")]


def test_a_compensation_that_fails_again_after_resume_ends_compensation_failed_again_and_can_be_resumed() -> None:
    saga = Saga(linear(3))
    saga.run(fail_at("s3", refuse=("s1", "s2")))
    saga.record(resume(saga.state))
    assert saga.run(fail_at(refuse=("s1",))).status == "compensation_failed"
    saga.record(resume(saga.state))
    assert saga.run(fail_at()).status == "compensated"
    assert saga.compensations() == ["s2", "s1", "s2", "s1", "s1"]
    assert saga.state.resumes == 2


def test_a_failed_compensation_of_a_parallel_member_does_not_stop_its_siblings_or_earlier_steps() -> None:
    saga = Saga(with_parallel())
    finish = saga.run(fail_at("s3", refuse=("p/a",)))
    assert finish.status == "compensation_failed"
    assert saga.compensation_batches() == [{"p/a", "p/b", "p/c"}, {"s1"}]


def test_resume_is_refused_unless_the_saga_ended_compensation_failed() -> None:
    saga = Saga(linear(2))
    with pytest.raises(InvalidTransition, match="only a compensation_failed saga resumes"):
        resume(saga.state)
    saga.run(fail_at("s2"))
    with pytest.raises(InvalidTransition):
        resume(saga.state)


# -- timeouts and retries ------------------------------------------------------------------------


def _retrying(max_attempts: int) -> SagaDefinition:
    return SagaDefinition(
        name="retrying",
        steps=(
            Step(name="s1", task="agents.s1", compensation="agents.undo_s1", timeout_s=60),
            Step(
                name="s2",
                task="agents.s2",
                compensation="agents.undo_s2",
                timeout_s=60,
                on_timeout="retry",
                max_attempts=max_attempts,
            ),
        ),
    )


def _attempts(answers: dict[int, Answer]) -> Script:
    def script(command: RunStep | RunCompensation) -> Answer:
        if isinstance(command, RunStep) and command.step == "s2":
            return answers.get(command.attempt, "ok")
        return "ok"

    return script


def test_a_step_timing_out_under_the_retry_policy_is_dispatched_again_with_the_same_key() -> None:
    saga = Saga(_retrying(3))
    assert saga.run(_attempts({1: "vanish"})).status == "completed"
    runs = [c for c in saga.issued if isinstance(c, RunStep) and c.step == "s2"]
    assert [c.attempt for c in runs] == [1, 2]
    assert {c.idempotency_key for c in runs} == {"saga-1:s2:s2:step"}
    assert runs[0].input == runs[1].input == "s1-out"
    assert runs[1].deadline > runs[0].deadline
    assert saga.compensations() == []


def test_a_step_that_times_out_on_every_allowed_attempt_is_compensated_after_the_last() -> None:
    saga = Saga(_retrying(2))
    assert saga.run(_attempts({1: "vanish", 2: "vanish"})).status == "compensated"
    assert [c.attempt for c in saga.issued if isinstance(c, MarkTimedOut)] == [1, 2]
    assert saga.compensations() == ["s2", "s1"]


def test_a_retry_that_fails_cleanly_after_a_timed_out_attempt_is_still_compensated() -> None:
    # The failed retry proves nothing about the attempt that timed out: it may have had effects.
    saga = Saga(_retrying(3))
    assert saga.run(_attempts({1: "vanish", 2: "fail"})).status == "compensated"
    assert saga.state.member("s2", "s2").outcome == "unknown"
    assert saga.compensations() == ["s2", "s1"]


def test_the_sweep_marks_a_step_timed_out_only_once_its_deadline_has_passed() -> None:
    saga = Saga(linear(1))
    (run,) = saga.decide()
    assert isinstance(run, RunStep)
    saga.record(run.event())
    assert saga.state.next_deadline == run.deadline
    saga.now = run.deadline
    assert saga.decide() == []
    saga.now = run.deadline + timedelta(microseconds=1)
    assert saga.decide() == [MarkTimedOut(saga_id="saga-1", step="s1", member="s1", attempt=1)]


def test_a_finished_saga_decides_nothing() -> None:
    saga = Saga(linear(1))
    finish = saga.run(fail_at())
    assert isinstance(finish, Finish)
    assert saga.decide() == []
