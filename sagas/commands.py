"""What :func:`~sagas.decide.decide` asks the executor to do, and the events that record it.

The executor's loop, for one saga::

    state = fold(definition, events)
    for command in decide(definition, state, now):
        append(command.event())          # folded first: a refused event means "do not dispatch"
    dispatch the RunStep / RunCompensation commands whose events were appended
    ...later, from the task's callback: append(command.succeeded(output)) or command.failed(error)

Record every event of one decision before dispatching any of its commands, with the event store's
optimistic concurrency check, so a decision taken on a stale state is refused rather than acted on.
(A new saga's start has no state to be stale: its first step may go out while it is recorded, to a step
that waits for its saga before it acts; see :meth:`~sagas.repository.SagaRepository.plan_start`.)

Commands are frozen models with a ``kind`` discriminator, so they can travel inside a Celery
signature (``model_dump(mode="json")``) and be read back with ``TypeAdapter(Command)``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, JsonValue

from relaybus.sagas.events import (
    CompensationFailed,
    CompensationStarted,
    CompensationSucceeded,
    SagaCompensated,
    SagaCompensationFailed,
    SagaCompleted,
    StepFailed,
    StepStarted,
    StepSucceeded,
    StepTimedOut,
)

FinalStatus = Literal["completed", "compensated", "compensation_failed"]


def idempotency_key(saga_id: str, step: str, member: str, kind: Literal["step", "compensation"]) -> str:
    """Deterministic and attempt-free: a retried or redelivered call reuses the key of the first."""
    return f"{saga_id}:{step}:{member}:{kind}"


class _Command(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    saga_id: str


class RunStep(_Command):
    """Dispatch ``task`` with ``input`` under ``idempotency_key``.

    The task remembers its first outcome under the key, success output or clean failure, and a
    redelivery or retry replays it instead of acting again: a success followed by a clean failure
    of the same attempt (or the reverse) is a contradiction the fold refuses.
    """

    kind: Literal["run_step"] = "run_step"
    step: str
    member: str
    task: str
    input: JsonValue
    idempotency_key: str
    attempt: int = Field(ge=1)
    deadline: AwareDatetime

    def event(self) -> StepStarted:
        return StepStarted(
            saga_id=self.saga_id,
            step=self.step,
            member=self.member,
            attempt=self.attempt,
            data=self.input,
            deadline=self.deadline,
        )

    def succeeded(self, output: JsonValue = None) -> StepSucceeded:
        return StepSucceeded(
            saga_id=self.saga_id, step=self.step, member=self.member, attempt=self.attempt, data=output
        )

    def failed(self, error: JsonValue) -> StepFailed:
        """The step failed *cleanly*: it had no effect. If that is not certain, let it time out instead."""
        return StepFailed(saga_id=self.saga_id, step=self.step, member=self.member, attempt=self.attempt, data=error)


class RunCompensation(_Command):
    """Dispatch ``task`` to undo one member, with the output that member recorded.

    ``step_outcome="unknown"`` means the step timed out: ``step_output`` is ``None`` and there may
    be nothing to undo, so the task finds the effect (if any) by ``step_idempotency_key``.
    Compensations must be idempotent; the executor retries them with backoff and records
    ``failed`` only when the retries are spent. A compensation should leave a marker under the
    step's key, so that a step execution still stuck in a queue does nothing when it finally runs.
    """

    kind: Literal["run_compensation"] = "run_compensation"
    step: str
    member: str
    task: str
    step_output: JsonValue
    step_outcome: Literal["succeeded", "unknown"]
    step_idempotency_key: str
    idempotency_key: str
    attempt: int = Field(ge=1)

    def event(self) -> CompensationStarted:
        return CompensationStarted(
            saga_id=self.saga_id, step=self.step, member=self.member, attempt=self.attempt, data=self.step_output
        )

    def succeeded(self, result: JsonValue = None) -> CompensationSucceeded:
        return CompensationSucceeded(
            saga_id=self.saga_id, step=self.step, member=self.member, attempt=self.attempt, data=result
        )

    def failed(self, error: JsonValue) -> CompensationFailed:
        return CompensationFailed(
            saga_id=self.saga_id, step=self.step, member=self.member, attempt=self.attempt, data=error
        )


class MarkTimedOut(_Command):
    """The sweep's finding: this attempt is past its deadline, its outcome is now unknown."""

    kind: Literal["mark_timed_out"] = "mark_timed_out"
    step: str
    member: str
    attempt: int = Field(ge=1)

    def event(self) -> StepTimedOut:
        return StepTimedOut(saga_id=self.saga_id, step=self.step, member=self.member, attempt=self.attempt)


class Finish(_Command):
    """The saga is over; ``attempt`` is the compensation round, ``output`` the last step's output."""

    kind: Literal["finish"] = "finish"
    status: FinalStatus
    attempt: int = Field(default=1, ge=1)
    output: JsonValue = None

    def event(self) -> SagaCompleted | SagaCompensated | SagaCompensationFailed:
        if self.status == "completed":
            return SagaCompleted(saga_id=self.saga_id, attempt=self.attempt, data=self.output)
        if self.status == "compensated":
            return SagaCompensated(saga_id=self.saga_id, attempt=self.attempt)
        return SagaCompensationFailed(saga_id=self.saga_id, attempt=self.attempt)


Command = Annotated[RunStep | RunCompensation | MarkTimedOut | Finish, Field(discriminator="kind")]
