"""A saga's state is a fold over its events.

Every member (a plain step is its own single member) has an explicit outcome::

    pending ──started──> running ──succeeded──> succeeded
                            │ ├────failed─────> failed     clean: it had no effect, nothing to undo
                            │ └──timed_out────> unknown    it MAY have had effects
                            └─ (retry: unknown ──started──> running, same idempotency key)

and, if its step has a compensation task, a compensation status
``pending -> running -> succeeded | failed`` (``saga.resumed`` puts failed ones back to pending).
Only ``succeeded`` and ``unknown`` members are compensated: a member that never ran, or failed
cleanly, has nothing to undo.

The saga is ``running`` until a member fails or times out for good, then ``compensating``; it ends
``completed``, ``compensated`` or ``compensation_failed`` when the matching event is recorded.

The fold is built for at-least-once delivery:

- **Duplicates are no-ops.** Each event is first checked against what is already known (same
  attempt already started, outcome already recorded, round already resumed...).
- **Late results are facts.** A success arriving after the sweep marked its attempt timed out
  turns ``unknown`` into ``succeeded`` (its output then reaches the compensation), unless the
  compensation already started. A late *failure* of a timed-out attempt changes nothing: unknown
  stays unknown, because compensating a step with nothing to undo is safe and the reverse is not.
  For the same reason a clean failure of a retry after a timed-out attempt is ``unknown``.
- **Everything else that does not fit raises** :class:`~sagas.errors.InvalidTransition`: a result
  for an attempt that never started, a step started before the previous one succeeded or after the
  saga began compensating, a compensation for a member that never ran or out of reverse order, a
  terminal event whose conditions do not hold. The executor folds an event before appending it,
  so a refused event is never recorded and its command never dispatched.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

from pydantic import JsonValue

from relaybus.eventstore.types import TERMINAL_SAGA_STATUS
from relaybus.sagas.definition import SagaDefinition, members_of
from relaybus.sagas.errors import InvalidTransition
from relaybus.sagas.events import (
    CompensationFailed,
    CompensationStarted,
    CompensationSucceeded,
    MemberEvent,
    SagaCompensated,
    SagaCompensationFailed,
    SagaCompleted,
    SagaEvent,
    SagaResumed,
    SagaStarted,
    StepFailed,
    StepStarted,
    StepSucceeded,
    StepTimedOut,
)

Outcome = Literal["pending", "running", "succeeded", "failed", "unknown"]
CompensationStatus = Literal["pending", "running", "succeeded", "failed"]
SagaStatus = Literal["running", "compensating", "completed", "compensated", "compensation_failed"]
TERMINAL: frozenset[SagaStatus] = frozenset({"completed", "compensated", "compensation_failed"})


@dataclass(frozen=True, slots=True)
class CompensationState:
    task: str
    status: CompensationStatus = "pending"
    attempt: int = 0
    error: JsonValue = None

    @property
    def ended(self) -> bool:
        return self.status in ("succeeded", "failed")


@dataclass(frozen=True, slots=True)
class MemberState:
    step: str
    member: str
    outcome: Outcome = "pending"
    attempt: int = 0
    input: JsonValue = None
    output: JsonValue = None
    error: JsonValue = None
    deadline: datetime | None = None
    timed_out: bool = False
    compensation: CompensationState | None = None  # None: the step has no compensation task

    @property
    def may_have_effects(self) -> bool:
        return self.outcome in ("succeeded", "unknown")

    @property
    def needs_compensation(self) -> bool:
        return self.compensation is not None and self.may_have_effects


@dataclass(frozen=True, slots=True)
class StepState:
    name: str
    members: tuple[MemberState, ...]

    @property
    def succeeded(self) -> bool:
        return all(m.outcome == "succeeded" for m in self.members)

    def member(self, name: str) -> MemberState:
        for m in self.members:
            if m.member == name:
                return m
        raise KeyError(f"{self.name}/{name}")


@dataclass(frozen=True, slots=True)
class SagaState:
    saga_id: str
    saga: str
    input: JsonValue
    status: SagaStatus
    steps: tuple[StepState, ...]
    resumes: int = 0

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def round(self) -> int:
        """The compensation round: 1, then one more per resume."""
        return self.resumes + 1

    @property
    def members(self) -> Iterator[MemberState]:
        for step in self.steps:
            yield from step.members

    @property
    def running(self) -> tuple[MemberState, ...]:
        return tuple(m for m in self.members if m.outcome == "running")

    @property
    def next_deadline(self) -> datetime | None:
        """When the sweep should next look at this saga: the earliest deadline of a running member."""
        return min((m.deadline for m in self.running if m.deadline is not None), default=None)

    @property
    def output(self) -> JsonValue:
        """The last step's output: a member's output, or member -> output for a parallel step."""
        return output_of(self.steps[-1])

    def step(self, name: str) -> StepState:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)

    def member(self, step: str, member: str) -> MemberState:
        return self.step(step).member(member)


def output_of(step: StepState) -> JsonValue:
    if len(step.members) == 1 and step.members[0].member == step.name:
        return step.members[0].output
    return {m.member: m.output for m in step.members}


def fold(definition: SagaDefinition, events: Iterable[SagaEvent]) -> SagaState:
    """The state after ``events``, which must begin with ``saga.started``."""
    state: SagaState | None = None
    for event in events:
        state = evolve(definition, state, event)
    if state is None:
        raise InvalidTransition(None, "a saga's events begin with saga.started")
    return state


def evolve(definition: SagaDefinition, state: SagaState | None, event: SagaEvent) -> SagaState:
    """One step of the fold: ``state`` (``None`` before the first event) after ``event``."""
    if state is None:
        if not isinstance(event, SagaStarted):
            raise InvalidTransition(event, "a saga's first event is saga.started")
        if event.saga != definition.name:
            reason = f"it starts saga {event.saga!r}, the definition is {definition.name!r}"
            raise InvalidTransition(event, reason)
        return _initial(definition, event)
    if event.saga_id != state.saga_id:
        raise InvalidTransition(event, f"it belongs to another saga than {state.saga_id!r}")
    if isinstance(event, SagaStarted):
        # The first input wins: a stored copy may differ from a redelivered one (the event store
        # redacts secrets and truncates large payloads), so only the definition is compared.
        if event.saga != state.saga:
            raise InvalidTransition(event, f"the saga was already started as {state.saga!r}")
        return state
    if isinstance(event, SagaCompleted | SagaCompensated | SagaCompensationFailed | SagaResumed):
        return _saga_event(state, event)
    member = _member(state, event)
    if isinstance(event, StepStarted | StepSucceeded | StepFailed | StepTimedOut):
        return _step_event(definition, state, member, event)
    return _compensation_event(state, member, event)


def _initial(definition: SagaDefinition, event: SagaStarted) -> SagaState:
    steps = tuple(
        StepState(
            name=step.name,
            members=tuple(
                MemberState(
                    step=step.name,
                    member=m.name,
                    compensation=CompensationState(task=m.compensation) if m.compensation else None,
                )
                for m in members_of(step)
            ),
        )
        for step in definition.steps
    )
    return SagaState(saga_id=event.saga_id, saga=event.saga, input=event.data, status="running", steps=steps)


def _member(state: SagaState, event: MemberEvent) -> MemberState:
    try:
        return state.member(event.step, event.member)
    except KeyError:
        reason = f"saga {state.saga!r} has no step {event.step!r} member {event.member!r}"
        raise InvalidTransition(event, reason) from None


def _put(state: SagaState, member: MemberState, status: SagaStatus | None = None) -> SagaState:
    steps = tuple(
        s
        if s.name != member.step
        else replace(s, members=tuple(member if m.member == member.member else m for m in s.members))
        for s in state.steps
    )
    return replace(state, steps=steps, status=status or state.status)


def _abort(state: SagaState) -> SagaStatus:
    return "compensating" if state.status == "running" else state.status


def _step_event(
    definition: SagaDefinition,
    state: SagaState,
    m: MemberState,
    event: StepStarted | StepSucceeded | StepFailed | StepTimedOut,
) -> SagaState:
    if isinstance(event, StepStarted):
        return _step_started(definition, state, m, event)
    if event.attempt > m.attempt:
        raise InvalidTransition(event, f"attempt {event.attempt} never started (last started: {m.attempt})")
    current = m.outcome == "running" and event.attempt == m.attempt
    if isinstance(event, StepSucceeded):
        if m.outcome == "succeeded":
            return state  # a duplicate, or a redelivered twin that found the idempotency key
        if m.outcome == "failed":
            raise InvalidTransition(event, "the step was recorded as failed cleanly; success contradicts it")
        if not current and m.compensation is not None and m.compensation.attempt > 0:
            return state  # late: the undo already started with what was known then
        return _put(state, replace(m, outcome="succeeded", output=event.data, deadline=None))
    if not current:
        return state  # a duplicate, or a result the sweep got ahead of: keep what we know
    if isinstance(event, StepFailed):
        outcome: Outcome = "unknown" if m.timed_out else "failed"
        return _put(state, replace(m, outcome=outcome, error=event.data, deadline=None), _abort(state))
    spec = definition.member(m.step, m.member)
    retry = state.status == "running" and spec.on_timeout == "retry" and m.attempt < spec.max_attempts
    timed_out = replace(m, outcome="unknown", timed_out=True, deadline=None)
    return _put(state, timed_out, None if retry else _abort(state))


def _step_started(definition: SagaDefinition, state: SagaState, m: MemberState, event: StepStarted) -> SagaState:
    if event.attempt <= m.attempt:
        return state  # that attempt, or a later one, already started
    if state.status != "running":
        raise InvalidTransition(event, f"the saga is {state.status}: no step starts any more")
    index = definition.index(m.step)
    for earlier in state.steps[:index]:
        if not earlier.succeeded:
            raise InvalidTransition(event, f"the earlier step {earlier.name!r} has not succeeded")
    spec = definition.member(m.step, m.member)
    retry = m.outcome == "unknown" and spec.on_timeout == "retry" and event.attempt <= spec.max_attempts
    if event.attempt != m.attempt + 1 or not (m.outcome == "pending" or retry):
        reason = f"attempt {event.attempt} cannot follow attempt {m.attempt} ({m.outcome})"
        raise InvalidTransition(event, reason)
    started = replace(m, outcome="running", attempt=event.attempt, input=event.data, deadline=event.deadline)
    return _put(state, started)


def _compensation_event(
    state: SagaState,
    m: MemberState,
    event: CompensationStarted | CompensationSucceeded | CompensationFailed,
) -> SagaState:
    c = m.compensation
    if c is None:
        raise InvalidTransition(event, "the step has no compensation")
    if isinstance(event, CompensationStarted):
        if event.attempt <= c.attempt:
            return state  # a duplicate
        _check_may_compensate(state, m, event)
        return _put(state, replace(m, compensation=replace(c, status="running", attempt=event.attempt)))
    if event.attempt > c.attempt:
        raise InvalidTransition(event, f"compensation attempt {event.attempt} never started")
    if isinstance(event, CompensationSucceeded):
        if c.status == "succeeded":
            return state
        # A success is final even if this attempt was recorded failed: a redelivery undid the step.
        return _put(state, replace(m, compensation=replace(c, status="succeeded")))
    if c.status == "running" and event.attempt == c.attempt:
        return _put(state, replace(m, compensation=replace(c, status="failed", error=event.data)))
    return state  # a duplicate, a failure from before a resume, or the compensation already succeeded


def _check_may_compensate(state: SagaState, m: MemberState, event: CompensationStarted) -> None:
    c = m.compensation
    assert c is not None
    if state.status != "compensating":
        raise InvalidTransition(event, f"the saga is {state.status}, not compensating")
    if not m.may_have_effects:
        raise InvalidTransition(event, f"the step's outcome is {m.outcome}: it has nothing to undo")
    if event.attempt != c.attempt + 1 or c.status != "pending":
        raise InvalidTransition(event, f"the compensation is {c.status} after attempt {c.attempt}")
    if state.running:
        other = state.running[0]
        raise InvalidTransition(event, f"step {other.step!r} member {other.member!r} is still running")
    later = False
    for step in state.steps:
        if later:
            for other in step.members:
                if other.needs_compensation and other.compensation and not other.compensation.ended:
                    raise InvalidTransition(event, f"the compensation of the later step {other.step!r} has not ended")
        later = later or step.name == m.step


_SagaLevel = SagaCompleted | SagaCompensated | SagaCompensationFailed | SagaResumed


def _saga_event(state: SagaState, event: _SagaLevel) -> SagaState:
    if event.attempt < state.round or (event.attempt == state.round and _already(state, event)):
        return state  # a duplicate, or a fact from a round since resumed
    if isinstance(event, SagaResumed):
        if state.status != "compensation_failed" or event.attempt != state.round + 1:
            raise InvalidTransition(event, f"only a compensation_failed saga resumes, it is {state.status}")
        return _resume(state, event.attempt - 1)
    if event.attempt != state.round:
        raise InvalidTransition(event, f"the saga is in compensation round {state.round}")
    if isinstance(event, SagaCompleted):
        if state.status != "running" or not all(s.succeeded for s in state.steps):
            raise InvalidTransition(event, "not every step has succeeded")
        return replace(state, status="completed")
    if state.status != "compensating":
        raise InvalidTransition(event, f"the saga is {state.status}, not compensating")
    if state.running:
        raise InvalidTransition(event, "a step is still running")
    undo = [m.compensation for m in state.members if m.needs_compensation and m.compensation]
    if not all(c.ended for c in undo):
        raise InvalidTransition(event, "a compensation has not ended")
    failed = any(c.status == "failed" for c in undo)
    if isinstance(event, SagaCompensated):
        if failed:
            raise InvalidTransition(event, "a compensation failed")
        return replace(state, status="compensated")
    if not failed:
        raise InvalidTransition(event, "no compensation failed")
    return replace(state, status="compensation_failed")


def _already(state: SagaState, event: _SagaLevel) -> bool:
    if isinstance(event, SagaResumed):
        return state.resumes > 0  # the round it opens is already the current one
    return state.status == TERMINAL_SAGA_STATUS[event.type]


def _resume(state: SagaState, resumes: int) -> SagaState:
    def reset(m: MemberState) -> MemberState:
        c = m.compensation
        if c is None or c.status != "failed":
            return m
        return replace(m, compensation=replace(c, status="pending"))

    steps = tuple(replace(s, members=tuple(reset(m) for m in s.members)) for s in state.steps)
    return replace(state, steps=steps, status="compensating", resumes=resumes)
