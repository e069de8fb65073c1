"""The reference pipeline's first agents: intake (parse and classify) and planner (plan the research)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field

from tasks.base import AgentContext, AgentModel, agent
from tasks.llm import complete

Category = Literal["howto", "comparison", "explainer"]


class IntakeInput(AgentModel):
    request: str = Field(min_length=3, max_length=4000)
    max_topics: int = Field(default=3, ge=0, le=20)


class IntakeOutput(AgentModel):
    request: str
    category: Category
    keywords: list[str]
    max_topics: int
    summary: str


_STOP = frozenset(["a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "how", "in", "is", "it", "of", "on", "or", "the", "to", "what", "why", "with", "vs", "versus"])


def _keywords(text: str, limit: int = 8) -> list[str]:
    seen: dict[str, None] = {}
    for word in re.findall(r"[a-z][a-z0-9\-]+", text.lower()):
        if word not in _STOP and len(word) > 2:
            seen.setdefault(word, None)
    return list(seen)[:limit]


@agent("intake", input=IntakeInput, output=IntakeOutput)
def intake(inp: IntakeInput, ctx: AgentContext) -> IntakeOutput:
    text = inp.request.lower()
    category: Category = "explainer"
    if text.startswith("how") or " how " in text:
        category = "howto"
    elif " vs " in text or "compare" in text or "versus" in text:
        category = "comparison"
    summary = complete(
        ctx.llm,
        system="You are the intake agent. Summarise the request in one sentence.",
        user=inp.request,
    ).text
    return IntakeOutput(
        request=inp.request,
        category=category,
        keywords=_keywords(inp.request),
        max_topics=inp.max_topics,
        summary=summary,
    )


class PlanInput(AgentModel):
    request: str
    category: Category
    keywords: list[str]
    max_topics: int = Field(ge=0, le=20)
    summary: str = ""


class PlanOutput(AgentModel):
    request: str
    topics: list[str]
    tools: list[str]


@agent("planner", input=PlanInput, output=PlanOutput)
def planner(inp: PlanInput, ctx: AgentContext) -> PlanOutput:
    topics = [f"{kw} ({inp.category})" for kw in inp.keywords[: inp.max_topics]]
    return PlanOutput(request=inp.request, topics=topics, tools=["search"] if topics else [])
