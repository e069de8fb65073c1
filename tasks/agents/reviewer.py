"""Reviewer: the guardrail. Checks each draft against the policy; a rejected draft goes back to the writer.

``review`` is the review loop's judge: the pipeline (tasks.agents.pipeline) subscribes it to
``draft.written`` and bounds the loop: at most ``review.max_rounds`` drafts are written, and rejecting
the last one fails the pipeline with the reviewer's feedback as the reason.
"""

from __future__ import annotations

from relaybus.tasks.agents.pipeline_models import (
    Draft,
    DraftApproved,
    DraftRejected,
    DraftWritten,
    ReviewPolicy,
    Verdict,
)
from relaybus.tasks.llm import LLMProvider, complete
from relaybus.tasks.runtime.task import AgentContext


def run(draft: Draft, policy: ReviewPolicy, llm: LLMProvider) -> Verdict:
    feedback: list[str] = []
    if draft.round <= policy.reject_drafts:
        feedback.append(f"rejected by policy: the first {policy.reject_drafts} draft(s) are always rejected")
    words = len(draft.body.split())
    if words < policy.min_words:
        feedback.append(f"too short: {words} words, at least {policy.min_words} needed")
    lowered = draft.body.lower()
    feedback += [f"remove the banned term '{t}'" for t in policy.banned_terms if t.lower() in lowered]
    if draft.findings and not draft.sources:
        feedback.append("the draft cites no source for its research")
    if feedback:
        # The model's reading of the draft goes along with the findings, for the writer to use.
        note = complete(llm, system="You are the reviewer.", user=draft.body, max_tokens=40).text
        feedback.append(f"reviewer notes: {note}")
    return Verdict(approved=not feedback, feedback=feedback)


def review(event: DraftWritten, ctx: AgentContext) -> DraftApproved | DraftRejected:
    draft = event.draft
    verdict = run(draft, draft.options.review, ctx.llm)
    if verdict.approved:
        return DraftApproved(draft=draft)
    return DraftRejected(draft=draft, feedback=verdict.feedback)
