"""Declaring saga steps and compensations: agent tasks with a saga call as their input.

::

    @saga_step("writer", "saga_draft", input=ResearchNotes, output=DraftRef)
    def draft(notes: ResearchNotes, call: StepCall, ctx: AgentContext) -> DraftRef:
        ...  # write the draft under call.idempotency_key: a redelivery must find it, not write another

    @saga_compensation("writer", "discard_draft")
    def discard_draft(call: CompensationCall, ctx: AgentContext) -> Undone:
        ...  # undo what was written under call.step_idempotency_key, or leave a marker there

Each is an agent task (``agents.writer.saga_draft``, on the writer's queue), so the task base does
what it does for every agent: validation, retries of transient errors with backoff, dead-lettering
with the reason, correlation, recording. And once its outcome is recorded, it advances its saga
itself (:mod:`tasks.saga.advance`): records the outcome in the saga, decides, sends the next step.

A step is *fenced*: before it runs, it reads its saga, and if the saga no longer goes forward
(compensating or ended: the step was redelivered, re-driven from a dead-letter queue, or arrived
after its deadline) it refuses with :class:`StaleStep` instead of acting: its end is recorded as
``task.rejected`` (reason ``stale-step``), it is not dead-lettered, and its saga, which has moved on, is
told nothing. The fence narrows the window; the idempotency key and the compensation's marker close it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from celery import current_app
from pydantic import BaseModel, ValidationError

from relaybus.sagas import LoadedSaga
from relaybus.tasks.errors import InvalidInput, NotRun
from relaybus.tasks.runtime.task import AgentContext, AgentTask
from relaybus.tasks.saga.advance import remember_fenced, saga_task
from relaybus.tasks.saga.calls import CompensationCall, StepCall, Undone
from relaybus.tasks.saga.registry import repository

InputT = TypeVar("InputT", bound=BaseModel)
OutputT = TypeVar("OutputT", bound=BaseModel)


class StaleStep(NotRun):
    """Raised when a saga step arrives after its saga stopped going forward; the step does not run. Its end is
    recorded as ``task.rejected`` (reason ``stale-step``): it is not dead-lettered, and its saga, which has moved
    on, is told nothing."""

    reason = "stale-step"


def saga_step(
    agent_name: str,
    action: str,
    *,
    input: type[InputT],
    output: type[OutputT],
    max_retries: int | None = None,
    fence: bool = True,
) -> Callable[[Callable[[InputT, StepCall, AgentContext], OutputT]], AgentTask]:
    """Register ``fn`` as the saga step task ``agents.<agent_name>.<action>``.

    ``input`` parses the step's input (the saga's input for the first step, the previous step's
    output after that); a mismatch is :class:`~tasks.errors.InvalidInput`, a permanent failure.
    """

    def decorate(fn: Callable[[InputT, StepCall, AgentContext], OutputT]) -> AgentTask:
        def run(call: StepCall, ctx: AgentContext) -> OutputT:
            if fence:
                remember_fenced(ctx.task_id, check_still_wanted(call))
            try:
                data = input.model_validate(call.input)
            except ValidationError as exc:
                errors = [{"loc": ("input", *e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
                raise InvalidInput(agent_name, errors) from None
            return fn(data, call, ctx)

        run.__name__, run.__doc__ = fn.__name__, fn.__doc__
        return saga_task(
            agent_name, f"agents.{agent_name}.{action}", "step", input=StepCall, output=output, fn=run,
            max_retries=max_retries, step_input=input,
        )

    return decorate


def saga_compensation(
    agent_name: str, action: str, *, max_retries: int | None = None
) -> Callable[[Callable[[CompensationCall, AgentContext], Undone]], AgentTask]:
    """Register ``fn`` as the compensation task ``agents.<agent_name>.<action>``. It must be idempotent
    and accept that there is nothing to undo (``call.step_outcome == "unknown"``)."""

    def decorate(fn: Callable[[CompensationCall, AgentContext], Undone]) -> AgentTask:
        return saga_task(
            agent_name, f"agents.{agent_name}.{action}", "compensation", input=CompensationCall, output=Undone,
            fn=fn, max_retries=max_retries,
        )

    return decorate


def check_still_wanted(call: StepCall) -> LoadedSaga:
    """Raise :class:`StaleStep` unless the saga is still running forward; the saga as read."""
    loaded = repository(current_app).find(call.saga_id)
    if loaded is None:
        raise StaleStep(f"no saga {call.saga_id!r}: step {call.step!r} attempt {call.attempt} was not run")
    status = loaded.state.status
    if status != "running":
        raise StaleStep(
            f"saga {call.saga_id!r} is {status}: step {call.step!r} attempt {call.attempt} is stale and was not run"
        )
    return loaded
