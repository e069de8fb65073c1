"""Sending a pipeline's next stages: a step (chained with the plain steps after it), a fan-out as a chord, an
approval parked as a row, or the completion. The system tasks ``tasks.pipelines.definition`` declares call
:func:`send_stage` and :func:`send_from`; each returns how many tasks it sent."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celery import Celery
from celery._state import get_current_task

from relaybus.tasks.pipelines.approval import KIND as APPROVAL_KIND  # importing it registers the resumer
from relaybus.tasks.pipelines.canvas import fan_in, sequence
from relaybus.tasks.pipelines.stages import ApprovalStage, FanOut, Step, StepInput
from relaybus.tasks.runtime.approvals import approval_id_for, request_approval
from relaybus.tasks.runtime.context import current_task_id

if TYPE_CHECKING:
    from relaybus.tasks.pipelines.definition import Pipeline


def send_stage(
    pipeline: Pipeline[Any], app: Celery, index: int, prev: dict[str, Any] | None, run: Any, pipeline_id: str
) -> int:
    """Send stage ``index``, mapping its input from ``prev`` and the pipeline's input ``run``."""
    if index >= len(pipeline.stages):
        return send_complete(pipeline, app, prev or {})
    stage = pipeline.stages[index]
    s = StepInput(run, prev, pipeline_id)
    if isinstance(stage, ApprovalStage):
        return park(pipeline, app, index, stage, s)
    if isinstance(stage, FanOut):
        members = [app.signature(stage.task, kwargs=dict(item)) for item in stage.each(s)]
        join = app.signature(
            pipeline.join_task.name, kwargs={"stage": index, "run": run.model_dump(mode="json"), "prev": prev}
        )
        fan_in(members, join, on_error=pipeline.failure_path(), settle=stage.partial(run)).apply_async()
        return len(members)
    if stage.input is not None:
        kwargs = dict(stage.input(s))
    else:
        kwargs = dict(prev) if prev is not None else run.model_dump(mode="json")
    return send_from(pipeline, app, index, kwargs, run)


def send_from(pipeline: Pipeline[Any], app: Celery, index: int, kwargs: dict[str, Any], run: Any) -> int:
    """Send the step ``index`` with ``kwargs``, chained with the plain steps after it."""
    stages = pipeline.stages
    flow = [app.signature(stages[index].task, kwargs=kwargs)]
    following = index + 1
    while following < len(stages):
        stage = stages[following]
        if not isinstance(stage, Step) or stage.input is not None:
            flow.append(app.signature(pipeline.advance_task.name,
                                      kwargs={"stage": following, "run": run.model_dump(mode="json")}))
            break
        flow.append(app.signature(stage.task))
        following += 1
    else:
        if not pipeline.finishes_on_event:
            flow.append(app.signature(pipeline.complete_task.name))
    sequence(*flow, on_error=pipeline.failure_path()).apply_async()
    return len(flow)


def park(pipeline: Pipeline[Any], app: Celery, index: int, stage: ApprovalStage, s: StepInput[Any]) -> int:
    """Record the approval the stage asks for; the pipeline goes on when it is approved
    (``tasks.pipelines.approval``). Sends nothing."""
    subject = dict(stage.subject(s)) if stage.subject is not None else {"output": s.prev}
    task = get_current_task()
    priority = (task.request.delivery_info or {}).get("priority") if task is not None else None
    request_approval(
        app,
        approval_id=approval_id_for(s.pipeline_id, pipeline.name, stage.name),
        workflow=s.pipeline_id,
        kind=APPROVAL_KIND,
        step=stage.name,
        subject=subject,
        approvers=stage.approvers,
        timeout_s=stage.timeout_s,
        resume={"action": "advance", "pipeline": pipeline.name, "task": pipeline.advance_task.name,
                "stage": index + 1, "run": s.run.model_dump(mode="json"), "prev": s.prev, "priority": priority},
        causation_id=current_task_id(),
    )
    return 0


def send_complete(pipeline: Pipeline[Any], app: Celery, output: dict[str, Any]) -> int:
    if pipeline.finishes_on_event:
        return 0
    complete = app.signature(pipeline.complete_task.name, kwargs={"output": output})
    sequence(complete, on_error=pipeline.failure_path()).apply_async()
    return 1
