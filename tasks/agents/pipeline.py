"""The reference pipeline, wired: which step follows which, and how.

::

    pipelines.research (start)                        system queue; records pipeline.started
      -> agents.intake -> agents.planner              a chain: each step's output is the next input
      -> pipelines.research.fan_out                   system queue; builds the fan-in below
      -> agents.researcher x N  ==chord==>  agents.writer
                                   (researchers also publish research.completed, for any observer)
      -> draft.written  --> reviewer (events.reviewer.review)
           -> draft.approved --> publisher (events.publisher.publish) -> pipeline.completed
           -> draft.rejected --> writer (events.writer.revise) -> draft.written ...
           -> pipeline.failed, when the K-th draft is rejected
      pipeline.completed / pipeline.failed --> system (events.system.record_outcome)

A chain where a step needs exactly its predecessor's output; the chord where N results must meet
(fan-in: only the chord counts them); events after the draft, where steps react to facts and must
not know each other (the guardrail loop is a conversation between writer and reviewer, and anyone
else may listen). Every step links ``pipelines.fail`` as its error callback, so a failure anywhere
ends the pipeline with ``pipeline.failed`` instead of leaving it hanging.

The agents live in their own modules (pure ``run`` functions plus their task or subscription);
this module only imports them so a worker that loads it registers them all.
"""

from __future__ import annotations

from typing import Any

from celery import current_app

from relaybus.tasks.agents import intake, planner, publisher, researcher, reviewer, writer
from relaybus.tasks.agents.pipeline_models import PipelineOptions, PlanOutput, ResearchRequest
from relaybus.tasks.pipelines.canvas import fan_in, sequence
from relaybus.tasks.pipelines.outcomes import fail_on_error, record_pipeline_event
from relaybus.tasks.pipelines.registry import PIPELINE_STARTED
from relaybus.tasks.runtime.idempotency import already_done, mark_done
from relaybus.tasks.runtime.task import AgentContext, AgentModel, agent

__all__ = ["fan_out", "intake", "planner", "publisher", "researcher", "reviewer", "start", "writer"]

PIPELINE = "research"


class Started(AgentModel):
    pipeline_id: str


class FanOutInput(AgentModel):
    plan: PlanOutput
    options: PipelineOptions

    @classmethod
    def from_upstream(cls, upstream: Any, kwargs: dict[str, Any]) -> FanOutInput:
        return cls.model_validate({**kwargs, "plan": upstream})


class Launched(AgentModel):
    researchers: int


@agent("system", input=ResearchRequest, output=Started, task_name="pipelines.research")
def start(inp: ResearchRequest, ctx: AgentContext) -> Started:
    app = current_app
    if already_done(app, ctx.task_id):  # a redelivered start must not launch a second run
        return Started(pipeline_id=ctx.correlation_id)
    record_pipeline_event(
        app, PIPELINE_STARTED, ctx.correlation_id,
        {"pipeline": PIPELINE, "input": inp.model_dump(mode="json")}, task_id=ctx.task_id,
    )
    options = PipelineOptions(
        review=inp.review, on_research_failure=inp.on_research_failure, fail_researchers=inp.fail_researchers
    )
    flow = sequence(
        app.signature("agents.intake", kwargs={"request": inp.request, "max_topics": inp.max_topics}),
        app.signature("agents.planner"),
        app.signature("pipelines.research.fan_out", kwargs={"options": options.model_dump(mode="json")}),
        on_error=fail_on_error(PIPELINE),
    )
    flow.apply_async()
    mark_done(app, ctx.task_id)
    return Started(pipeline_id=ctx.correlation_id)


@agent("system", input=FanOutInput, output=Launched, task_name="pipelines.research.fan_out")
def fan_out(inp: FanOutInput, ctx: AgentContext) -> Launched:
    app = current_app
    plan, options = inp.plan, inp.options
    if already_done(app, ctx.task_id):  # a redelivered fan-out must not start a second chord (two writers)
        return Launched(researchers=len(plan.topics))
    members = [
        app.signature(
            "agents.researcher",
            kwargs={"request": plan.request, "topic": topic, "index": i, "fail": i in options.fail_researchers},
        )
        for i, topic in enumerate(plan.topics)
    ]
    callback = app.signature(
        "agents.writer", kwargs={"request": plan.request, "options": options.model_dump(mode="json")}
    )
    flow = fan_in(
        members, callback, on_error=fail_on_error(PIPELINE), settle=options.on_research_failure == "partial"
    )
    flow.apply_async()
    mark_done(app, ctx.task_id)
    return Launched(researchers=len(members))
