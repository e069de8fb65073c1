"""Intake: parse and classify a request (the pipeline's first step). Models: :mod:`.pipeline_models`."""

from __future__ import annotations

import re

from relaybus.tasks.agents.pipeline_models import Category, IntakeInput, IntakeOutput
from relaybus.tasks.llm import LLMProvider, complete
from relaybus.tasks.runtime.task import AgentContext, agent

_STOP = frozenset(
    str.split("a an and are as at be by can do does for from how in is it keep of on or the to what why with vs versus")
)


def keywords(text: str, limit: int = 8) -> list[str]:
    """The request's distinct content words, in order of first appearance."""
    seen: dict[str, None] = {}
    for word in re.findall(r"[a-z][a-z0-9\-]+", text.lower()):
        if word not in _STOP and len(word) > 2:
            seen.setdefault(word, None)
    return list(seen)[:limit]


def classify(text: str) -> Category:
    lowered = f" {text.lower()} "
    if lowered.lstrip().startswith("how") or " how " in lowered:
        return "howto"
    if " vs " in lowered or "compare" in lowered or "versus" in lowered:
        return "comparison"
    return "explainer"


def run(inp: IntakeInput, llm: LLMProvider) -> IntakeOutput:
    summary = complete(
        llm, system="You are the intake agent. Summarise the request in one sentence.", user=inp.request
    ).text
    return IntakeOutput(
        request=inp.request,
        category=classify(inp.request),
        keywords=keywords(inp.request),
        max_topics=inp.max_topics,
        summary=summary,
    )


@agent("intake", input=IntakeInput, output=IntakeOutput)
def intake(inp: IntakeInput, ctx: AgentContext) -> IntakeOutput:
    return run(inp, ctx.llm)
