"""The saga the saga benchmark runs: four no-op steps on one agent, each with a no-op compensation.

``bench_saga`` (``RELAYBUS_EXTRA_MODULES=bench.saga_steps``, ``RELAYBUS_EXTRA_AGENTS=bench_saga``)::

    one -> two -> three -> four              each returns its input; "four" fails for good when input.fail
    undo_one <- undo_two <- undo_three       then the three steps that succeeded are compensated, last first
                                             (undo_four is declared, and not run: four failed cleanly)

No side effects and no LLM, so the figures are what relaybus's saga machinery costs, step for step
the same work as the celery-saga saga of :mod:`bench.saga_peer`. The steps keep every guarantee of a
real saga step: their own queue, the fence, the log, the dead letter of the failing step.
"""

from __future__ import annotations

import bench.profiling  # noqa: F401  (cProfile in the worker when RELAYBUS_BENCH_PROFILE is set)
from relaybus.sagas import SagaDefinition, Step
from relaybus.tasks.errors import PermanentError
from relaybus.tasks.runtime.task import AgentContext, AgentModel
from relaybus.tasks.saga import CompensationCall, StepCall, Undone, register_saga, saga_compensation, saga_step

AGENT = "bench_saga"
NAME = "bench_noop_saga"
STEPS = ("one", "two", "three", "four")


class Payload(AgentModel):
    """The saga's input and every step's output: carried along unchanged."""

    n: int = 0
    fail: bool = False


class InjectedFailure(PermanentError):
    """The last step's failure when the input asks for it: the saga compensates."""


def _step(fn_name: str, last: bool) -> None:
    def run(payload: Payload, call: StepCall, ctx: AgentContext) -> Payload:
        if last and payload.fail:
            raise InjectedFailure(f"step {call.step} of saga {call.saga_id} fails, as asked")
        return payload

    run.__name__ = fn_name
    saga_step(AGENT, fn_name, input=Payload, output=Payload)(run)


def _undo(fn_name: str) -> None:
    def run(call: CompensationCall, ctx: AgentContext) -> Undone:
        return Undone(undone=False, detail="a no-op step has nothing to undo")

    run.__name__ = fn_name
    saga_compensation(AGENT, fn_name)(run)


for index, name in enumerate(STEPS):
    _step(name, last=index == len(STEPS) - 1)
    _undo(f"undo_{name}")

BENCH_SAGA = register_saga(
    SagaDefinition(
        name=NAME,
        steps=tuple(
            Step(
                name=name,
                task=f"agents.{AGENT}.{name}",
                compensation=f"agents.{AGENT}.undo_{name}",
                timeout_s=60,
            )
            for name in STEPS
        ),
    )
)
