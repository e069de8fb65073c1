"""Property: over random saga shapes, failures, timeouts, duplicates and failing compensations, the saga
always finishes, undoes exactly what may have happened, in reverse order, and never applies an effect twice.

The simulated world keeps each step's effects keyed by idempotency key, the way a well-behaved agent
task does: a step whose key it has seen replays its first outcome (success or clean failure) and
applies nothing new. A step that *vanishes* may have applied its effect or not. A compensation removes
the effect, if any. Steps without a compensation are read-only: they have no effect to keep track of.
Results come back in random order, possibly after the sweep gave up on them, and any recorded event
may be delivered again at any later point.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import JsonValue

from relaybus.sagas import (
    Command,
    CompensationFailed,
    CompensationSucceeded,
    Finish,
    MarkTimedOut,
    ParallelStep,
    RunCompensation,
    RunStep,
    SagaDefinition,
    SagaEvent,
    SagaState,
    Step,
    decide,
    evolve,
    fold,
    from_record,
    idempotency_key,
    members_of,
    resume,
    start,
    to_record,
)
from tests.unit.sagas.harness import T0

Behaviour = Literal["ok", "fail", "vanish_before", "vanish_after", "slow"]
TROUBLE: list[Behaviour] = ["fail", "vanish_before", "vanish_after", "slow"]
COMPENSATED = "compensated"  # what a compensation leaves under the step's key, so a late execution does nothing
MAX_COMPENSATION_FAILURES = 2  # per member, so that resuming eventually succeeds


@st.composite
def definitions(draw: st.DrawFn) -> SagaDefinition:
    def member(name: str) -> Step:
        retry = draw(st.booleans())
        return Step(
            name=name,
            task=f"agents.{name}",
            compensation=f"agents.undo_{name}" if draw(st.booleans()) else None,
            timeout_s=draw(st.sampled_from([10.0, 60.0])),
            on_timeout="retry" if retry else "compensate",
            max_attempts=draw(st.integers(2, 3)) if retry else 1,
        )

    steps: list[Step | ParallelStep] = []
    for i in range(draw(st.integers(1, 5))):
        width = draw(st.integers(1, 3))
        if width == 1:
            steps.append(member(f"s{i}"))
        else:
            steps.append(ParallelStep(name=f"s{i}", members=tuple(member(f"s{i}m{j}") for j in range(width))))
    return SagaDefinition(name="random", steps=tuple(steps))


@dataclass
class World:
    """The agents' side: outcomes remembered per idempotency key, and the effects currently in place."""

    outcomes: dict[str, tuple[bool, JsonValue]] = field(default_factory=dict)
    effects: set[str] = field(default_factory=set)
    applications: Counter[str] = field(default_factory=Counter)
    refusals: Counter[str] = field(default_factory=Counter)


class Simulation:
    def __init__(self, data: st.DataObject, definition: SagaDefinition) -> None:
        self.data = data
        self.definition = definition
        self.world = World()
        self.now = T0
        self.events: list[SagaEvent] = []
        self.state: SagaState | None = None
        self.in_flight: list[SagaEvent | RunStep] = []  # results on their way, and step calls still executing
        self.started: set[tuple[str, str]] = set()
        self.round: list[RunCompensation] = []  # compensations issued since the saga (re)started compensating
        self.compensations: list[RunCompensation] = []
        self.ended: set[tuple[str, str, int]] = set()
        self.to_retry: set[tuple[str, str]] | None = None  # after a resume: the compensations that had failed
        self.duplicates = data.draw(st.sampled_from([0, 1, 3]), label="duplicate this many events in 10")
        self.calm = data.draw(st.sampled_from([2, 6, 30]), label="one step call in this many is in trouble")

    # -- the event log ---------------------------------------------------------------------------

    def record(self, event: SagaEvent) -> None:
        self.state = evolve(self.definition, self.state, event)
        self.events.append(event)
        if isinstance(event, CompensationSucceeded | CompensationFailed):
            self.ended.add((event.step, event.member, event.attempt))
        if self.duplicated():
            self.redeliver(event)

    def redeliver(self, event: SagaEvent) -> None:
        before = self.state
        self.state = evolve(self.definition, self.state, event)
        self.events.append(event)
        assert self.state == before, f"a redelivered {event.type} changed the state"

    def duplicated(self) -> bool:
        return self.duplicates > 0 and self.data.draw(st.integers(0, 9)) < self.duplicates

    def troubled(self) -> bool:
        return self.data.draw(st.integers(0, self.calm - 1)) == 0

    @property
    def current(self) -> SagaState:
        assert self.state is not None
        return self.state

    # -- the loop --------------------------------------------------------------------------------

    def run(self) -> Finish:
        self.record(start(self.definition, "saga-1", {"brief": "x"}))
        for _ in range(2000):
            if self.duplicated():
                self.redeliver(self.data.draw(st.sampled_from(self.events)))
            commands = decide(self.definition, self.current, self.now)
            if commands:
                finish = self.carry_out(commands)
                if finish is None:
                    continue
                if finish.status != "compensation_failed":
                    return finish
                self.start_next_round()
                continue
            self.wait()
        raise AssertionError("the saga did not finish")

    def carry_out(self, commands: list[Command]) -> Finish | None:
        for command in commands:
            self.check(command)
        for command in commands:  # every event of a decision is recorded before anything is dispatched
            self.record(command.event())
        for command in commands:
            if isinstance(command, RunStep):
                self.run_step(command)
                if self.duplicated():
                    self.run_step(command)  # the broker delivered the task twice
            elif isinstance(command, RunCompensation):
                self.run_compensation(command)
            elif isinstance(command, Finish):
                assert commands == [command]
                return command
        return None

    def wait(self) -> None:
        running = self.current.running
        assert self.in_flight or running, f"nothing to do, nothing to wait for: {self.current}"
        if self.in_flight and not (running and self.troubled()):  # now and then, a result is late
            self.arrive(self.in_flight.pop(self.data.draw(st.integers(0, len(self.in_flight) - 1))))
            return
        overdue = self.data.draw(st.sampled_from(running))
        assert overdue.deadline is not None
        self.now = max(self.now, overdue.deadline + timedelta(seconds=1))

    def start_next_round(self) -> None:
        state = self.current
        failed = {(m.step, m.member) for m in state.members if m.compensation and m.compensation.status == "failed"}
        if self.to_retry is not None:
            assert {(c.step, c.member) for c in self.round} == self.to_retry
        assert failed
        leftover = {idempotency_key("saga-1", s, m, "step") for s, m in failed}
        assert self.world.effects <= leftover, "an effect was left in place that no failed compensation covers"
        self.to_retry = failed
        self.round = []
        self.record(resume(state))

    # -- the checks made when a command is issued ------------------------------------------------

    def check(self, command: Command) -> None:
        state = self.current
        if isinstance(command, RunStep):
            m = state.member(command.step, command.member)
            assert command.attempt == m.attempt + 1
            assert command.idempotency_key == idempotency_key("saga-1", command.step, command.member, "step")
            self.started.add((command.step, command.member))
        elif isinstance(command, MarkTimedOut):
            deadline = state.member(command.step, command.member).deadline
            assert deadline is not None and self.now > deadline
        elif isinstance(command, RunCompensation):
            assert (command.step, command.member) in self.started, "compensating a step that never started"
            assert not state.running, "compensating while a step may still succeed"
            index = self.definition.index(command.step)
            for earlier in self.round:
                later = self.definition.index(earlier.step)
                assert later >= index, "compensations out of reverse step order"
                if later > index:
                    assert (earlier.step, earlier.member, earlier.attempt) in self.ended, "a later undo had not ended"
            if self.to_retry is not None:
                assert (command.step, command.member) in self.to_retry, (
                    "resume re-issued a compensation that had not failed"
                )
            self.round.append(command)
            self.compensations.append(command)

    # -- the world -------------------------------------------------------------------------------

    def arrive(self, item: SagaEvent | RunStep) -> None:
        if isinstance(item, RunStep):  # a slow call finally executes
            self.execute(item, self.data.draw(st.sampled_from(["ok", "fail", "vanish_before", "vanish_after"])))
        else:
            self.record(item)

    def run_step(self, command: RunStep) -> None:
        behaviour: Behaviour = self.data.draw(st.sampled_from(TROUBLE)) if self.troubled() else "ok"
        if behaviour == "slow":
            self.in_flight.append(command)
        else:
            self.execute(command, behaviour)

    def execute(self, command: RunStep, behaviour: Behaviour) -> None:
        key = command.idempotency_key
        if key not in self.world.outcomes:
            if behaviour == "vanish_before":
                return
            ok = behaviour != "fail"
            if ok and self.definition.member(command.step, command.member).compensation is not None:
                self.world.effects.add(key)
                self.world.applications[f"{command.step}/{command.member}"] += 1
            self.world.outcomes[key] = (ok, f"{key}-out" if ok else "boom")
        if behaviour.startswith("vanish"):
            return
        ok, data = self.world.outcomes[key]
        self.in_flight.append(command.succeeded(data) if ok else command.failed(data))

    def run_compensation(self, command: RunCompensation) -> None:
        label = f"{command.step}/{command.member}"
        if self.world.refusals[label] < MAX_COMPENSATION_FAILURES and self.data.draw(st.booleans()):
            self.world.refusals[label] += 1
            self.in_flight.append(command.failed("undo refused"))
            return
        self.world.effects.discard(command.step_idempotency_key)
        self.world.outcomes[command.step_idempotency_key] = (False, COMPENSATED)
        self.in_flight.append(command.succeeded())


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(definition=definitions(), data=st.data())
def test_any_saga_finishes_undoing_exactly_what_may_have_happened_in_reverse_and_never_twice(
    definition: SagaDefinition, data: st.DataObject
) -> None:
    sim = Simulation(data, definition)
    finish = sim.run()
    state = sim.current
    event(f"finished {finish.status}")
    event(f"{state.resumes} resume(s)")

    compensable = {
        idempotency_key("saga-1", step.name, m.name, "step")
        for step in definition.steps
        for m in members_of(step)
        if m.compensation is not None
    }
    if finish.status == "completed":
        assert sim.world.effects == compensable, "a completed saga must have every effect in place"
        assert not sim.compensations
    else:
        assert finish.status == "compensated"
        assert sim.world.effects == set(), "a compensated saga must leave no effect in place"
    assert all(n == 1 for n in sim.world.applications.values()), sim.world.applications
    if sim.to_retry is not None:
        assert {(c.step, c.member) for c in sim.round} == sim.to_retry
    compensated = {(c.step, c.member) for c in sim.compensations}
    assert not {(m.step, m.member) for m in state.members if m.outcome == "failed"} & compensated

    effects = set(sim.world.effects)
    while sim.in_flight:  # what is still on its way after the end changes nothing that matters
        sim.arrive(sim.in_flight.pop(0))
        assert sim.current.status == finish.status
    assert sim.world.effects == effects
    assert fold(definition, sim.events) == sim.current
    assert fold(definition, [from_record(*to_record(e)) for e in sim.events]) == sim.current
