"""What crosses the broker for a saga: the call a step or compensation task receives, and the
reference its callback carries back.

A saga step is an agent task whose input is a :class:`StepCall` (the kwargs of the message); the
step's own input model parses ``call.input``. The idempotency key travels in the call, so a
redelivered or retried step can find what its first execution did. A compensation receives a
:class:`CompensationCall`: the step's recorded output, whether the step's outcome is known, and
both keys (the step's, to find the effect; its own, to mark the undo).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, JsonValue

from relaybus.sagas import (
    CompensationFailed,
    CompensationSucceeded,
    RunCompensation,
    RunStep,
    StepFailed,
    StepSucceeded,
)
from relaybus.tasks.runtime.task import AgentModel


class StepCall(AgentModel):
    """The kwargs of a saga step's message."""

    saga_id: str
    saga: str
    step: str
    member: str
    attempt: int = Field(ge=1)
    idempotency_key: str
    input: JsonValue = None

    @classmethod
    def of(cls, saga: str, command: RunStep) -> StepCall:
        return cls(
            saga_id=command.saga_id,
            saga=saga,
            step=command.step,
            member=command.member,
            attempt=command.attempt,
            idempotency_key=command.idempotency_key,
            input=command.input,
        )


class CompensationCall(AgentModel):
    """The kwargs of a compensation's message.

    ``step_outcome="unknown"``: the step timed out, ``step_output`` is ``None``, and there may be
    nothing to undo; find the effect, if any, by ``step_idempotency_key``, and leave a marker under
    it so that a step execution still stuck in a queue does nothing when it finally runs.
    """

    saga_id: str
    saga: str
    step: str
    member: str
    attempt: int = Field(ge=1)
    idempotency_key: str
    step_idempotency_key: str
    step_outcome: Literal["succeeded", "unknown"]
    step_output: JsonValue = None

    @classmethod
    def of(cls, saga: str, command: RunCompensation) -> CompensationCall:
        return cls(
            saga_id=command.saga_id,
            saga=saga,
            step=command.step,
            member=command.member,
            attempt=command.attempt,
            idempotency_key=command.idempotency_key,
            step_idempotency_key=command.step_idempotency_key,
            step_outcome=command.step_outcome,
            step_output=command.step_output,
        )


class Undone(AgentModel):
    """A compensation's result: whether it undid anything (``False``: there was nothing to undo)."""

    undone: bool
    detail: str = ""


class CallRef(AgentModel):
    """Which dispatch a callback reports on: enough to build the result event, nothing more."""

    kind: Literal["step", "compensation"]
    saga_id: str
    step: str
    member: str
    attempt: int = Field(ge=1)

    @classmethod
    def of(cls, command: RunStep | RunCompensation) -> CallRef:
        kind: Literal["step", "compensation"] = "step" if isinstance(command, RunStep) else "compensation"
        return cls(
            kind=kind, saga_id=command.saga_id, step=command.step, member=command.member, attempt=command.attempt
        )

    def succeeded(self, data: JsonValue) -> StepSucceeded | CompensationSucceeded:
        ids = {"saga_id": self.saga_id, "step": self.step, "member": self.member, "attempt": self.attempt}
        return StepSucceeded(**ids, data=data) if self.kind == "step" else CompensationSucceeded(**ids, data=data)

    def failed(self, error: JsonValue) -> StepFailed | CompensationFailed:
        ids = {"saga_id": self.saga_id, "step": self.step, "member": self.member, "attempt": self.attempt}
        return StepFailed(**ids, data=error) if self.kind == "step" else CompensationFailed(**ids, data=error)
