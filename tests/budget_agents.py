"""Agents, a pipeline and a saga for the budget tests (tests/integration/test_budgets.py): one LLM call per task.

A call is ``complete(user=text, max_tokens=16)``: its estimate is 4 prompt tokens (a short text and the
message's framing) plus 16, 20 tokens; the test's server answers every call with 11 + 5 = 16 tokens.
"""

from __future__ import annotations

from pydantic import Field

from relaybus.sagas import SagaDefinition, Step
from relaybus.tasks.llm import complete
from relaybus.tasks.pipelines.definition import Pipeline
from relaybus.tasks.runtime.task import AgentContext, AgentModel, agent
from relaybus.tasks.saga import CompensationCall, StepCall, Undone, register_saga, saga_compensation, saga_step

MAX_TOKENS = 16


class Spend(AgentModel):
    text: str = Field(default="go", max_length=3)


@agent("spender", input=Spend, output=Spend)
def spend(inp: Spend, ctx: AgentContext) -> Spend:
    complete(ctx.llm, user=inp.text, max_tokens=MAX_TOKENS)
    return inp


three_calls: Pipeline[Spend] = Pipeline("budget-three-calls", input=Spend, description="three calls in a row")
three_calls.step("spender", name="first").step("spender", name="second").step("spender", name="third")



class Gathered(AgentModel):
    results: list[Spend] = Field(default_factory=list)


@agent("gatherer", input=Gathered, output=Gathered)
def gather(inp: Gathered, ctx: AgentContext) -> Gathered:
    return inp


fan: Pipeline[Spend] = Pipeline("budget-fan", input=Spend, description="four calls at once, then a join")
fan.fan_out("spender", each=lambda s: [{"text": s.run.text}] * 4, into="gatherer")


@saga_step("spender", "saga_spend", input=Spend, output=Spend)
def saga_spend(inp: Spend, call: StepCall, ctx: AgentContext) -> Spend:
    complete(ctx.llm, user="stp", max_tokens=MAX_TOKENS)
    return inp


@saga_compensation("spender", "saga_unspend")
def saga_unspend(call: CompensationCall, ctx: AgentContext) -> Undone:
    # A compensation is charged, never refused: the budget its steps used up must not stop the undo.
    complete(ctx.llm, user="udo", max_tokens=MAX_TOKENS)
    return Undone(undone=True, detail=call.step)


THREE_STEPS = register_saga(
    SagaDefinition(
        name="budget_three_steps",
        steps=tuple(
            Step(name=name, task="agents.spender.saga_spend", compensation="agents.spender.saga_unspend",
                 timeout_s=60)
            for name in ("one", "two", "three")
        ),
    )
)
