"""Saga definitions used only by the integration tests. Workers import this module (RELAYBUS_EXTRA_MODULES).

``test_handed_over``: a step on the ``probe`` queue (never answered), then a plain step; the test
records the first step's outcome itself, as a worker that died before sending the next step would.

``test_plain_step``: a draft is written, then a step that is a plain agent task (declared with
``agent``, not ``saga_step``): it does not advance its saga itself, so its dispatch carries the
orchestration callbacks (``relaybus.saga.step_done`` on the system queue) and the saga moves on through them.

``test_stalled_step``: a draft is written, then a step on the ``probe`` queue, which no saga test
worker consumes: its messages are never answered, as if they vanished with a dead worker. Its
deadline is short and its policy is "retry once, then compensate", so the sweep has work to do.

``test_idle_step``: one saga step (it advances its saga itself, so its publisher leaves its ``task.sent`` to
the worker that receives it) on the ``flaky`` queue, which no saga test worker consumes until a test
starts one.

``test_late_step``: the same step with a deadline of one second, so the sweep ends its saga while the step's
message still waits: the step arrives after its saga stopped going forward.
"""

from __future__ import annotations

from relaybus.sagas import SagaDefinition, Step
from relaybus.tasks.runtime.task import AgentContext, AgentModel, agent
from relaybus.tasks.saga import StepCall, register_saga, saga_step


class Echoed(AgentModel):
    echoed: str


@agent("writer", input=StepCall, output=Echoed, task_name="agents.writer.plain_echo")
def plain_echo(call: StepCall, ctx: AgentContext) -> Echoed:
    """A saga step as a plain agent task: it receives the saga call and knows nothing of sagas."""
    return Echoed(echoed=f"{call.saga_id}:{call.step}")


PLAIN = register_saga(
    SagaDefinition(
        name="test_plain_step",
        steps=(
            Step(
                name="writing",
                task="agents.writer.saga_draft",
                compensation="agents.writer.discard_draft",
                timeout_s=60,
            ),
            Step(name="echo", task="agents.writer.plain_echo", timeout_s=60),
        ),
    )
)

STALLED = register_saga(
    SagaDefinition(
        name="test_stalled_step",
        steps=(
            Step(
                name="writing",
                task="agents.writer.saga_draft",
                compensation="agents.writer.discard_draft",
                timeout_s=60,
            ),
            Step(
                name="stalled",
                task="agents.probe.saga_never_answers",
                timeout_s=1.0,
                on_timeout="retry",
                max_attempts=2,
            ),
        ),
    )
)

HANDED_OVER = register_saga(
    SagaDefinition(
        name="test_handed_over",
        steps=(
            Step(name="stalled", task="agents.probe.saga_never_answers", timeout_s=60),
            Step(name="echo", task="agents.writer.plain_echo", timeout_s=60),
        ),
    )
)


@saga_step("flaky", "saga_idle", input=Echoed, output=Echoed)
def saga_idle(inp: Echoed, call: StepCall, ctx: AgentContext) -> Echoed:
    return inp


IDLE = register_saga(
    SagaDefinition(name="test_idle_step", steps=(Step(name="idle", task="agents.flaky.saga_idle", timeout_s=600),))
)

LATE = register_saga(
    SagaDefinition(name="test_late_step", steps=(Step(name="idle", task="agents.flaky.saga_idle", timeout_s=1.0),))
)
