"""Researcher: search the corpus for one topic and summarise what it found (one chord member)."""

from __future__ import annotations

from relaybus.tasks.agents.pipeline_models import Findings, ResearchCompleted, ResearchTask, Source
from relaybus.tasks.agents.planner import search_tool
from relaybus.tasks.bus.bus import publish
from relaybus.tasks.errors import PermanentError
from relaybus.tasks.llm import LLMProvider, complete
from relaybus.tasks.runtime.task import AgentContext, agent
from relaybus.tasks.tools import SearchTool


def run(inp: ResearchTask, llm: LLMProvider, search: SearchTool) -> Findings:
    if inp.fail:
        raise PermanentError(f"injected failure: researcher {inp.index} ({inp.topic!r})")
    hits = search.search(inp.topic, k=3) or search.search(inp.request, k=2)
    notes = " ".join(h.snippet for h in hits) or "No sources found."
    summary = complete(llm, system="You are the researcher.", user=f"{inp.topic}. {notes}").text
    return Findings(
        topic=inp.topic,
        index=inp.index,
        summary=summary,
        sources=[Source(doc_id=h.doc_id, title=h.title, snippet=h.snippet) for h in hits],
    )


@agent("researcher", input=ResearchTask, output=Findings)
def researcher(inp: ResearchTask, ctx: AgentContext) -> Findings:
    findings = run(inp, ctx.llm, search_tool())
    publish(
        ResearchCompleted(
            topic=findings.topic,
            index=findings.index,
            sources=[s.doc_id for s in findings.sources],
            summary=findings.summary,
        )
    )
    return findings
