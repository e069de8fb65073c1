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

A new saga's first step may be sent while its start is still being recorded (:func:`~tasks.saga.client.start_saga`
sends it and records the start at once, each waiting for its own confirmation). Its message then carries
:data:`SAGA_STARTING_HEADER`, until when its fence waits for the saga to appear before it calls the step stale:
a start whose record never came (the client died, or the log refused it) leaves a step that is refused,
recorded, and not run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from celery import current_app, current_task
from pydantic import BaseModel, ValidationError

from relaybus.sagas import LoadedSaga
from relaybus.tasks.errors import InvalidInput, NotRun
from relaybus.tasks.runtime.task import AgentContext, AgentTask
from relaybus.tasks.saga.advance import remember_fenced, saga_task
from relaybus.tasks.saga.calls import CompensationCall, StepCall, Undone
from relaybus.tasks.saga.registry import repository

#: Set by a start that sends a new saga's first step while recording its start: until when (Unix time, seconds) the
#: step's fence waits for its saga to appear. A republished copy (a retry, a redrive) inherits a time passed.
SAGA_STARTING_HEADER = "x_saga_starting_until"
#: The longest a fence waits for a starting saga, whatever the header says (a clock ahead, a hostile value).
SAGA_STARTING_WAIT_MAX_S = 30.0
#: The fence's pauses between reads of a starting saga: the first, and the longest.
_FIRST_PAUSE_S, _LONGEST_PAUSE_S = 0.0005, 0.05

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
                remember_fenced(ctx.task_id, check_still_wanted(call, _starting_until(current_task.request)))
            try:
                data = input.model_validate(call.input)
            except ValidationError as exc:
                errors = [{"loc": ("input", *e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
                raise InvalidInput(agent_name, errors) from None
            return fn(data, call, ctx)

        run.__name__, run.__doc__ = fn.__name__, fn.__doc__
        return saga_task(
            agent_name, f"agents.{agent_name}.{action}", "step", input=StepCall, output=output, fn=run,
            max_retries=max_retries, step_input=input, fenced=fence,
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


def check_still_wanted(call: StepCall, starting_until: float | None = None) -> LoadedSaga:
    """Raise :class:`StaleStep` unless the saga is still running forward; the saga as read. With
    ``starting_until`` (Unix time), a saga not found yet is read again until then: its start is being recorded."""
    repo = repository(current_app)
    loaded = repo.find(call.saga_id)
    pause = _FIRST_PAUSE_S
    while loaded is None and starting_until is not None and time.time() + pause < starting_until:
        time.sleep(pause)
        pause = min(pause * 2, _LONGEST_PAUSE_S)
        loaded = repo.find(call.saga_id)
    if loaded is None:
        raise StaleStep(f"no saga {call.saga_id!r}: step {call.step!r} attempt {call.attempt} was not run")
    status = loaded.state.status
    if status != "running":
        raise StaleStep(
            f"saga {call.saga_id!r} is {status}: step {call.step!r} attempt {call.attempt} is stale and was not run"
        )
    return loaded


def _starting_until(request: Any) -> float | None:
    """Until when this step waits for its saga (:data:`SAGA_STARTING_HEADER`), at most
    :data:`SAGA_STARTING_WAIT_MAX_S` from now; None when its message does not say, or says a time passed."""
    value = getattr(request, SAGA_STARTING_HEADER, None)
    if value is None:
        value = (getattr(request, "headers", None) or {}).get(SAGA_STARTING_HEADER)
    if not isinstance(value, int | float) or isinstance(value, bool) or value != value:  # NaN
        return None
    now = time.time()
    return min(float(value), now + SAGA_STARTING_WAIT_MAX_S) if value > now else None
