"""How a person's decision resumes a pipeline (the ``pipeline`` :class:`~tasks.runtime.approvals.Resumer`).

A pipeline parks in two ways, both recorded as an approval row whose ``resume`` says what comes next:

* an approval **stage** (``Pipeline.approval(...)``): ``{"action": "advance", ...}``; approved, the
  pipeline's ``advance`` task is sent with the next stage's index, the pipeline's input and the output
  before the approval, as if the stage had not been there;
* an approval inside an **event handler** (:func:`request_event_approval`, the reference pipeline's
  "approve before publishing"): ``{"action": "publish", ...}``; approved, the stored event is published.

Rejected or expired, the pipeline ends ``failed`` with the reason ``approval-rejected: ...`` or
``approval-expired: ...`` (:func:`~tasks.runtime.approvals.refusal_reason`), under the pipeline's one
outcome id. What is sent carries ids derived from the approval's, so carrying a decision out twice sends once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from celery import Celery

from relaybus.eventstore.approvals import Approval
from relaybus.tasks.bus.bus import publish
from relaybus.tasks.bus.events import Event, derived_id, registry
from relaybus.tasks.errors import ApprovalError
from relaybus.tasks.pipelines.outcomes import fail_on_error, log_store, record_id
from relaybus.tasks.pipelines.registry import PIPELINE_COMPLETED, PipelineFailed
from relaybus.tasks.runtime.approvals import approval_id_for, refusal_reason, register_resumer, request_approval
from relaybus.tasks.runtime.context import CORRELATION_HEADER
from relaybus.tasks.runtime.task import AgentContext

KIND = "pipeline"


class PipelineResumer:
    def approved(self, app: Celery, approval: Approval, event_id: str) -> None:
        action = approval.resume
        resume_id = derived_id(approval.id, "resume")
        if action.get("action") == "advance":
            app.send_task(
                action["task"],
                kwargs={"stage": action["stage"], "run": action["run"], "prev": action.get("prev")},
                task_id=resume_id,
                priority=action.get("priority"),
                headers={CORRELATION_HEADER: approval.workflow},
                link_error=fail_on_error(action["pipeline"]),
            )
        elif action.get("action") == "publish":
            cls = registry.get(action["event_type"])
            if cls is None:
                raise ApprovalError(f"approval {approval.id}: no event class for {action['event_type']!r} here")
            publish(cls.model_validate(action["event"]), app=app, correlation_id=approval.workflow,
                    causation_id=event_id, event_id=resume_id)
        else:
            raise ApprovalError(f"approval {approval.id}: unknown resume action {action.get('action')!r}")

    def ended(self, app: Celery, approval: Approval) -> str | None:
        """The pipeline's outcome record type, if it has one (one id per pipeline: one lookup)."""
        store = log_store(app)
        kept = store.get(record_id(approval.workflow, PIPELINE_COMPLETED)) if store is not None else None
        return kept.type if kept is not None else None

    def refused(self, app: Celery, approval: Approval, event_id: str) -> None:
        failed = PipelineFailed(pipeline=approval.resume["pipeline"], reason=refusal_reason(approval),
                                stage=approval.step)
        publish(failed, app=app, correlation_id=approval.workflow, causation_id=event_id)


register_resumer(KIND, PipelineResumer())


def request_event_approval(
    ctx: AgentContext,
    app: Celery,
    *,
    pipeline: str,
    step: str,
    then: Event,
    approvers: Iterable[str],
    timeout_s: float,
    subject: Mapping[str, Any] | None = None,
) -> Approval:
    """From an event handler of ``pipeline``: park it until a person approves ``step``; approved, ``then`` is
    published (rejected or expired, the pipeline fails). The request's id derives from the handler's task id,
    so a redelivered handler finds its first request."""
    return request_approval(
        app,
        approval_id=approval_id_for(ctx.correlation_id, step, ctx.task_id),
        workflow=ctx.correlation_id,
        kind=KIND,
        step=step,
        subject=dict(subject) if subject is not None else then.model_dump(mode="json"),
        approvers=approvers,
        timeout_s=timeout_s,
        resume={"action": "publish", "pipeline": pipeline, "event_type": then.type,
                "event": then.model_dump(mode="json")},
        causation_id=ctx.task_id,
        task_id=ctx.task_id,
    )
