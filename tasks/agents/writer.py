"""Writer: turn the research into a draft (the fan-out's callback), and revise a draft the reviewer rejected.

``revise`` is the review loop's reviser: the pipeline (tasks.agents.pipeline) subscribes it to ``draft.rejected``.
"""

from __future__ import annotations

import re

from relaybus.tasks.agents.pipeline_models import Draft, DraftRejected, DraftWritten, WriteInput
from relaybus.tasks.bus.bus import publish
from relaybus.tasks.llm import LLMProvider, complete
from relaybus.tasks.runtime.task import AgentContext, agent

_REMOVE = re.compile(r"remove the banned term '([^']+)'")


def run(inp: WriteInput, llm: LLMProvider) -> Draft:
    intro = complete(llm, system="You are the writer.", user=inp.request).text
    sections = [f"## {f.topic}\n\n{f.summary}\n\nSources: {', '.join(s.doc_id for s in f.sources) or 'none'}"
                for f in inp.findings]
    parts = [intro, *sections]
    if inp.failed_topics:
        parts.append("## Not covered\n\n" + "\n".join(f"- {t}" for t in inp.failed_topics))
    if inp.feedback:
        parts.append(f"Revision {inp.round}, after review: " + "; ".join(inp.feedback))
    body = "\n\n".join(parts)
    for term in (m.group(1) for item in inp.feedback for m in _REMOVE.finditer(item)):
        body = re.sub(re.escape(term), "[removed]", body, flags=re.IGNORECASE)
    sources = list(dict.fromkeys(s.doc_id for f in inp.findings for s in f.sources))
    return Draft(
        request=inp.request,
        title=inp.request.rstrip("?.! ")[:120],
        body=body,
        sources=sources,
        round=inp.round,
        findings=inp.findings,
        failed_topics=inp.failed_topics,
        options=inp.options,
    )


@agent("writer", input=WriteInput, output=Draft)
def writer(inp: WriteInput, ctx: AgentContext) -> Draft:
    draft = run(inp, ctx.llm)
    publish(DraftWritten(draft=draft))
    return draft


def revise(event: DraftRejected, ctx: AgentContext) -> DraftWritten:
    old = event.draft
    again = WriteInput(
        request=old.request,
        findings=old.findings,
        failed_topics=old.failed_topics,
        options=old.options,
        round=old.round + 1,
        feedback=event.feedback,
    )
    return DraftWritten(draft=run(again, ctx.llm))
