"""An agent for the rate-limit tests (tests/integration/test_rate_limit.py): one LLM call per task."""

from __future__ import annotations

from relaybus.tasks.llm import complete
from relaybus.tasks.runtime.task import AgentContext, AgentModel, agent


class Question(AgentModel):
    text: str


class Answer(AgentModel):
    text: str
    attempt: int


@agent("asker", input=Question, output=Answer)
def ask(inp: Question, ctx: AgentContext) -> Answer:
    return Answer(text=complete(ctx.llm, user=inp.text, max_tokens=16).text, attempt=ctx.attempt)


class Steps(AgentModel):
    steps: int


class Done(AgentModel):
    answers: list[str]
    attempt: int


@agent("chatty", input=Steps, output=Done)
def chatty(inp: Steps, ctx: AgentContext) -> Done:
    """More calls in one run than a window may allow: it finishes only if a deferral keeps what it got."""
    answers = [complete(ctx.llm, user=f"step {i}", max_tokens=16).text for i in range(inp.steps)]
    return Done(answers=answers, attempt=ctx.attempt)
