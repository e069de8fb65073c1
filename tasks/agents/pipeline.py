"""The reference pipeline, declared: which step follows which, and how.

::

    pipelines.research (start)                        system queue; records pipeline.started
      -> agents.intake -> agents.planner              steps: each step's output is the next input
      -> agents.researcher x N  ==fan-in==>  agents.writer
                                   (researchers also publish research.completed, for any observer)
      -> draft.written  --> reviewer (events.reviewer.review)          a bounded review loop
           -> draft.rejected --> writer (events.writer.revise) -> draft.written ...
           -> pipeline.failed, when the last allowed draft is rejected
           -> draft.approved --> publisher (events.publisher.publish) -> pipeline.completed
                with approve_before_publish: an approval request instead (nothing waits), and once a
                person approves, publication.approved --> publisher (events.publisher.publish_approved)
      pipeline.completed / pipeline.failed --> system (events.system.record_outcome)

Steps where a step needs exactly its predecessor's output (intake -> planner); a fan-out where N
results must meet (only the chord counts them); events after the draft, where steps react to facts and
must not know each other (the guardrail loop is a conversation between writer and reviewer, and anyone
else may listen). Every task and subscription links the pipeline's failure path, so a failure anywhere
ends the pipeline with ``pipeline.failed`` naming the step, instead of leaving it hanging.

The agents live in their own modules (pure ``run`` functions plus their task); this module declares
the pipeline over them, so a worker that loads it registers them all.
"""

from __future__ import annotations

from typing import Any

from celery import current_app

from relaybus.tasks.agents import intake, planner, publisher, researcher, reviewer, writer
from relaybus.tasks.agents.pipeline_models import (
    DraftApproved,
    DraftRejected,
    DraftWritten,
    PipelineOptions,
    PublicationApproved,
    ResearchRequest,
)
from relaybus.tasks.pipelines.approval import request_event_approval
from relaybus.tasks.pipelines.definition import Pipeline, StepInput
from relaybus.tasks.pipelines.registry import PipelineCompleted
from relaybus.tasks.runtime.task import AgentContext

__all__ = ["intake", "planner", "publisher", "research", "researcher", "reviewer", "writer"]


def _topics(s: StepInput[ResearchRequest]) -> list[dict[str, Any]]:
    plan = s.prev or {}
    return [
        {"request": plan["request"], "topic": topic, "index": i, "fail": i in s.run.fail_researchers}
        for i, topic in enumerate(plan.get("topics", []))
    ]


def _options(run: ResearchRequest) -> dict[str, Any]:
    options = PipelineOptions(
        review=run.review, on_research_failure=run.on_research_failure, fail_researchers=run.fail_researchers,
        approve_before_publish=run.approve_before_publish,
    )
    return options.model_dump(mode="json")


research: Pipeline[ResearchRequest] = Pipeline(
    "research", input=ResearchRequest, description="Research a question and publish a reviewed article"
)
research.step(intake.intake, input=lambda s: {"request": s.run.request, "max_topics": s.run.max_topics})
research.step(planner.planner)
research.fan_out(
    researcher.researcher,
    each=_topics,
    into=writer.writer,
    into_input=lambda s: {"request": (s.prev or {})["request"], "options": _options(s.run)},
    results="findings",
    failures="failed_topics",
    partial=lambda run: run.on_research_failure == "partial",
)
research.review(
    DraftWritten,
    DraftRejected,
    reviewer=("reviewer", reviewer.review),
    reviser=("writer", writer.revise),
    round=lambda candidate: candidate.draft.round,
    max_rounds=lambda candidate: candidate.draft.options.review.max_rounds,
)


@research.on(DraftApproved, agent="publisher", name="publish")
def publish(event: DraftApproved, ctx: AgentContext) -> PipelineCompleted | None:
    """Publish the approved draft, or, with ``approve_before_publish``, ask a person first (nothing waits)."""
    gate = event.draft.options.approve_before_publish
    if gate is None:
        return research.completed(publisher.publish_article(event, ctx))
    draft = event.draft
    request_event_approval(
        ctx, current_app, pipeline=research.name, step="approve_publication", then=PublicationApproved(draft=draft),
        approvers=gate.approvers, timeout_s=gate.timeout_s,
        subject={"request": draft.request, "title": draft.title, "body": draft.body, "sources": draft.sources},
    )
    return None


@research.finish(PublicationApproved, agent="publisher", name="publish_approved")
def publish_approved(event: PublicationApproved, ctx: AgentContext) -> Any:
    """A person approved: publish."""
    return publisher.publish_article(DraftApproved(draft=event.draft), ctx)
