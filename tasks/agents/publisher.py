"""Publisher: execute (render the approved draft as an article) and verify it before the pipeline completes."""

from __future__ import annotations

import hashlib
import re

from relaybus.tasks.agents.pipeline_models import Article, Draft, DraftApproved
from relaybus.tasks.agents.planner import search_tool
from relaybus.tasks.errors import PermanentError
from relaybus.tasks.runtime.task import AgentContext
from relaybus.tasks.tools import SearchTool


def run(draft: Draft, search: SearchTool) -> Article:
    body = f"# {draft.title}\n\n{draft.body}\n"
    article = Article(
        slug=re.sub(r"[^a-z0-9]+", "-", draft.title.lower()).strip("-")[:80] or "untitled",
        title=draft.title,
        body=body,
        sources=draft.sources,
        sha256=hashlib.sha256(body.encode()).hexdigest(),
        words=len(body.split()),
        rounds=draft.round,
        failed_topics=draft.failed_topics,
    )
    verify(article, search)
    return article


def verify(article: Article, search: SearchTool) -> None:
    """What was published is what was approved: the checksum holds and every cited source exists."""
    if hashlib.sha256(article.body.encode()).hexdigest() != article.sha256:
        raise PermanentError(f"article {article.slug!r} does not match its checksum")
    known = {d.id for d in search.documents}
    missing = [s for s in article.sources if s not in known]
    if missing:
        raise PermanentError(f"article {article.slug!r} cites unknown sources: {', '.join(missing)}")


def publish_article(event: DraftApproved, ctx: AgentContext) -> Article:
    """The pipeline's end (tasks.agents.pipeline subscribes it to ``draft.approved``): the article is its output."""
    return run(event.draft, search_tool())
