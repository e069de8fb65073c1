"""Planner: choose the research topics (how many researchers) and the tools they use."""

from __future__ import annotations

from relaybus.tasks.agents.pipeline_models import PlanInput, PlanOutput
from relaybus.tasks.runtime.task import AgentContext, agent
from relaybus.tasks.tools import SearchTool


def run(inp: PlanInput, search: SearchTool) -> PlanOutput:
    """One topic per keyword, those the corpus knows about first, at most ``max_topics`` of them."""
    coverage = {kw: len(search.search(kw, k=3)) for kw in inp.keywords}
    ranked = sorted(inp.keywords, key=lambda kw: -coverage[kw])  # stable: ties keep request order
    topics = ranked[: inp.max_topics]
    tools = (["search"] if any(coverage[t] for t in topics) else []) + (["llm"] if topics else [])
    return PlanOutput(request=inp.request, category=inp.category, topics=topics, tools=tools)


@agent("planner", input=PlanInput, output=PlanOutput)
def planner(inp: PlanInput, ctx: AgentContext) -> PlanOutput:
    return run(inp, search_tool())


_search: SearchTool | None = None


def search_tool() -> SearchTool:
    """One index of the shipped corpus per process (building it reads and tokenizes every document)."""
    global _search
    if _search is None:
        _search = SearchTool()
    return _search
