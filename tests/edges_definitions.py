"""Pipelines for the edge tests of deferral, approvals and claim checks (tests/chaos/test_*_edge*.py).

Workers import this module (``RELAYBUS_EXTRA_MODULES``), with ``tests.agents`` and ``tests.limited_agents``.

* ``edge-ask``: one ``asker`` step (one LLM call), so a deferred step is the pipeline's only work.
* ``edge-park``: probe, an approval (alice, ten minutes), probe again: a pipeline parked on a person.
  ``edge-park-hour``: the same with a deadline of an hour (a sweep run "later" must not time it out).
* saga ``edge_gate``: one parallel step, an approval (alice) beside a step that fails after a second: the saga
  compensates while its approval is pending.
* agent ``edgebig``: a small input, an output of ``size`` bytes (stored by claim check past the inline size);
  it notes each start in the Redis list ``key`` (tests.agents).
* agent ``edgesecret``: returns what it is given under a secret-looking key (``api_key``), or fails with it in
  its error message (``fail``): what the result backend keeps must be redacted.
"""

from __future__ import annotations

import time

from relaybus.sagas import ParallelStep, SagaDefinition, Step, approval_step
from relaybus.tasks.pipelines.definition import Pipeline
from relaybus.tasks.runtime.task import AgentContext, AgentModel, agent
from relaybus.tasks.saga import StepCall, register_saga, saga_step
from tests.agents import ProbeInput, note
from tests.limited_agents import Question


def _after(s: object) -> dict[str, str]:
    return {"key": s.run.key, "label": "after"}  # type: ignore[attr-defined]


ask: Pipeline[Question] = Pipeline("edge-ask", input=Question, description="one LLM call")
ask.step("asker")

park: Pipeline[ProbeInput] = Pipeline("edge-park", input=ProbeInput, description="probe, ask alice, probe")
park.step("probe").approval("sign_off", approvers=("alice",), timeout_s=600).step("probe", name="after", input=_after)

park_hour: Pipeline[ProbeInput] = Pipeline("edge-park-hour", input=ProbeInput, deadline_s=3600)
park_hour.step("probe").approval("sign_off", approvers=("alice",), timeout_s=600).step(
    "probe", name="after", input=_after
)


class BigInput(AgentModel):
    key: str
    size: int


class BigOutput(AgentModel):
    blob: str


@agent("edgebig", input=BigInput, output=BigOutput)
def edgebig(inp: BigInput, ctx: AgentContext) -> BigOutput:
    note(inp.key, ctx, event="start")
    return BigOutput(blob="x" * inp.size)


class SecretInput(AgentModel):
    secret: str
    fail: bool = False


class SecretOutput(AgentModel):
    api_key: str
    note: str


@agent("edgesecret", input=SecretInput, output=SecretOutput)
def edgesecret(inp: SecretInput, ctx: AgentContext) -> SecretOutput:
    if inp.fail:
        raise ValueError(f"refused with api_key={inp.secret}")
    return SecretOutput(api_key=inp.secret, note="the key is above")


class GateInput(AgentModel):
    key: str


@saga_step("probe", "edge_saga_fail", input=GateInput, output=GateInput)
def edge_saga_fail(inp: GateInput, call: StepCall, ctx: AgentContext) -> GateInput:
    time.sleep(1.0)  # the approval beside it is requested first (a gate that fails under a pending approval)
    raise ValueError("the step beside the approval failed")


GATE = register_saga(
    SagaDefinition(
        name="edge_gate",
        steps=(
            ParallelStep(
                name="gate",
                members=(
                    approval_step("sign_off", approvers=("alice",), timeout_s=600),
                    Step(name="boom", task="agents.probe.edge_saga_fail", timeout_s=60),
                ),
            ),
        ),
    )
)
