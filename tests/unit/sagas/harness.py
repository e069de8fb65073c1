"""A broker-free saga executor for tests: decide, record the commands' events, answer from a script.

It plays the executor's part by the rules of :mod:`sagas.commands`: every event is folded before it
is appended (so a refused event fails the test), every event of one decision is recorded before any
result comes back, and when nothing is left to do but wait, the clock jumps past every deadline so
the sweep finds the steps that never answered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import JsonValue

from relaybus.sagas import (
    Command,
    Finish,
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
    start,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
Answer = Literal["ok", "fail", "vanish"]
Script = Callable[[RunStep | RunCompensation], Answer]


def linear(n: int, *, compensable: bool = True) -> SagaDefinition:
    """Steps s1..sn, each undone by undo_s<i>."""
    return SagaDefinition(
        name=f"linear{n}",
        steps=tuple(
            Step(
                name=f"s{i}",
                task=f"agents.s{i}",
                compensation=f"agents.undo_s{i}" if compensable else None,
                timeout_s=60,
            )
            for i in range(1, n + 1)
        ),
    )


def with_parallel() -> SagaDefinition:
    """s1, then a parallel step p of members a, b, c, then s3."""
    members = tuple(Step(name=n, task=f"agents.{n}", compensation=f"agents.undo_{n}", timeout_s=60) for n in "abc")
    return SagaDefinition(
        name="fan_out",
        steps=(
            Step(name="s1", task="agents.s1", compensation="agents.undo_s1", timeout_s=60),
            ParallelStep(name="p", members=members),
            Step(name="s3", task="agents.s3", compensation="agents.undo_s3", timeout_s=60),
        ),
    )


def label(command: RunStep | RunCompensation) -> str:
    return command.step if command.member == command.step else f"{command.step}/{command.member}"


@dataclass
class Saga:
    definition: SagaDefinition
    saga_id: str = "saga-1"
    input: JsonValue = "brief"
    now: datetime = T0
    events: list[SagaEvent] = field(default_factory=list)
    issued: list[Command] = field(default_factory=list)
    batches: list[list[Command]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.record(start(self.definition, self.saga_id, self.input))

    @property
    def state(self) -> SagaState:
        return fold(self.definition, self.events)

    def record(self, event: SagaEvent) -> SagaState:
        state = evolve(self.definition, self.state if self.events else None, event)
        self.events.append(event)
        return state

    def decide(self) -> list[Command]:
        return decide(self.definition, self.state, self.now)

    def run(self, script: Script, *, max_decisions: int = 200) -> Finish:
        """Drive the saga to its Finish, answering each dispatched command from ``script``."""
        for _ in range(max_decisions):
            commands = self.decide()
            if not commands:
                self.now += timedelta(days=1)  # only waiting is left: let every deadline pass
                continue
            self.issued.extend(commands)
            self.batches.append(commands)
            for command in commands:
                self.record(command.event())
            for command in commands:
                if isinstance(command, Finish):
                    return command
                if isinstance(command, RunStep | RunCompensation):
                    self.answer(command, script(command))
        raise AssertionError(f"no Finish after {max_decisions} decisions: {self.state}")

    def answer(self, command: RunStep | RunCompensation, answer: Answer) -> None:
        if answer == "vanish":
            return
        if isinstance(command, RunStep):
            event: SagaEvent = command.succeeded(f"{label(command)}-out") if answer == "ok" else command.failed("boom")
        else:
            event = command.succeeded() if answer == "ok" else command.failed("undo refused")
        self.record(event)

    def steps_run(self) -> list[str]:
        return [label(c) for c in self.issued if isinstance(c, RunStep)]

    def compensations(self) -> list[str]:
        return [label(c) for c in self.issued if isinstance(c, RunCompensation)]

    def compensation_batches(self) -> list[set[str]]:
        batches = ({label(c) for c in b if isinstance(c, RunCompensation)} for b in self.batches)
        return [b for b in batches if b]


def fail_at(*failing: str, vanish: tuple[str, ...] = (), refuse: tuple[str, ...] = ()) -> Script:
    """Steps in ``failing`` fail cleanly, those in ``vanish`` never answer; compensations in
    ``refuse`` fail (labels as in :func:`label`); everything else succeeds."""

    def script(command: RunStep | RunCompensation) -> Answer:
        name = label(command)
        if isinstance(command, RunCompensation):
            return "fail" if name in refuse else "ok"
        if name in failing:
            return "fail"
        return "vanish" if name in vanish else "ok"

    return script
