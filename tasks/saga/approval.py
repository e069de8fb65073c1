"""Saga steps that wait for a person: the approval step's task and the ``saga`` resumer.

A step built with :func:`sagas.approval_step` names the task ``relaybus.saga.approval`` (system queue).
Dispatched like any saga task, it records an approval request (``tasks.runtime.approvals``: a row and
``approval.requested``) and returns at once: the step stays *running* in the saga, no worker waits.

The decision is the step's outcome, reported through ``relaybus.saga.outcome`` (the system queue's
retried path, as for a step that could not advance its saga itself):

* approved: ``saga.step.succeeded`` with the step's input as its output (the next step gets what this
  one got), and the saga goes on;
* rejected or expired: ``saga.step.failed`` (``ApprovalRejected`` / ``ApprovalExpired``, the reason in
  the message), and the saga compensates the steps that completed, last first.

The step's own ``timeout_s`` outlasts the approval's (``APPROVAL_GRACE_S``): the approval expires first,
with its reason; the saga sweep's timeout is the safety net. The task is fenced as steps are: a
redelivered request for a saga that stopped going forward records nothing.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, Task, shared_task
from celery.utils.log import get_task_logger

from relaybus.eventstore.approvals import Approval
from relaybus.sagas import APPROVAL_TASK
from relaybus.tasks.bus.events import derived_id
from relaybus.tasks.runtime.approvals import approval_id_for, refusal_reason, register_resumer, request_approval
from relaybus.tasks.runtime.context import CORRELATION_HEADER, current_correlation_id
from relaybus.tasks.runtime.system import SystemTask
from relaybus.tasks.saga.calls import CallRef, StepCall
from relaybus.tasks.saga.dispatch import ADVANCES_SAGA, OUTCOME
from relaybus.tasks.saga.registry import repository, saga_definition

logger = get_task_logger(__name__)

KIND = "saga"


class SagaResumer:
    def approved(self, app: Celery, approval: Approval, event_id: str) -> None:
        self._report(app, approval, True, approval.resume.get("output"))

    def ended(self, app: Celery, approval: Approval) -> str | None:
        """How the saga stopped going forward (``saga.compensating``, ``saga.completed``...), None while it runs:
        its approval is then closed (tasks.runtime.approvals), since a decision would resume nothing."""
        ref = approval.resume.get("ref")
        saga_id = ref.get("saga_id") if isinstance(ref, dict) else None
        loaded = repository(app).find(str(saga_id or approval.workflow))
        if loaded is None or loaded.state.status == "running":
            return None
        return f"saga.{loaded.state.status}"

    def refused(self, app: Celery, approval: Approval, event_id: str) -> None:
        error = "ApprovalRejected" if approval.status == "rejected" else "ApprovalExpired"
        data = {"task_id": None, "error_type": error, "error_message": refusal_reason(approval)}
        self._report(app, approval, False, data)

    @staticmethod
    def _report(app: Celery, approval: Approval, ok: bool, data: Any) -> None:
        app.send_task(
            OUTCOME,
            kwargs={"ref": approval.resume["ref"], "ok": ok, "data": data},
            task_id=derived_id(approval.id, "resume"),
            headers={CORRELATION_HEADER: approval.workflow},
        )


register_resumer(KIND, SagaResumer())


class ApprovalStepTask(SystemTask):
    """Dispatched without callbacks: its outcome is the decision, reported by the resumer."""

    abstract = True


setattr(ApprovalStepTask, ADVANCES_SAGA, True)


@shared_task(name=APPROVAL_TASK, bind=True, acks_late=True, ignore_result=True,  # type: ignore[untyped-decorator]
             base=ApprovalStepTask)
def request_step_approval(self: Task, **kwargs: Any) -> str | None:
    """Record the approval a saga's approval step asks for; returns its id (None for a stale step)."""
    call = StepCall.model_validate(kwargs)
    loaded = repository(self.app).find(call.saga_id)
    if loaded is None or loaded.state.status != "running":
        logger.warning("saga %s: approval step %s is stale (saga %s): nothing requested", call.saga_id, call.step,
                       loaded.state.status if loaded else "missing")
        return None
    spec = saga_definition(call.saga, self.app).member(call.step, call.member).approval
    if spec is None:
        raise ValueError(f"saga {call.saga!r}: step {call.step!r} is not an approval step")
    ref = CallRef(kind="step", saga_id=call.saga_id, step=call.step, member=call.member, attempt=call.attempt)
    subject = call.input if isinstance(call.input, dict) else {"input": call.input}
    approval = request_approval(
        self.app,
        approval_id=approval_id_for(call.saga_id, call.step, call.member, call.attempt),
        workflow=current_correlation_id() or call.saga_id,
        kind=KIND,
        step=call.step,
        subject={"saga": call.saga, **subject},
        approvers=spec.approvers,
        timeout_s=spec.timeout_s,
        resume={"ref": ref.model_dump(mode="json"), "output": call.input},
        causation_id=self.request.id,
        task_id=self.request.id,
    )
    return approval.id
