"""Deciding approvals from an application, Django or the CLI: the public face of ``tasks.runtime.approvals``.

::

    import relaybus
    relaybus.pending_approvals()                          # what waits for a person, newest first
    relaybus.approve(approval_id, by="alice", reason="checked the sources")
    relaybus.reject(approval_id, by="bob", reason="too long")

Importing this module registers the pipeline and saga resumers, so a decision made here resumes the
workflow whatever its kind. Errors: :class:`~tasks.errors.ApprovalNotFound`,
:class:`~tasks.errors.NotAnApprover`, :class:`~tasks.errors.AlreadyDecided` (all ``ApprovalError``).
"""

from __future__ import annotations

from collections.abc import Iterable

from celery import Celery, current_app

from relaybus.eventstore.approvals import Approval, Status
from relaybus.tasks.pipelines import approval as _pipeline_resumer
from relaybus.tasks.runtime import approvals as _core
from relaybus.tasks.runtime.approvals import approval_store, decide, expire_due
from relaybus.tasks.saga import approval as _saga_resumer

__all__ = ["Approval", "approve", "expire_due", "get_approval", "list_approvals", "pending_approvals", "reject"]

_RESUMER_KINDS = (_pipeline_resumer.KIND, _saga_resumer.KIND)


def approve(
    approval_id: str, *, by: str, reason: str | None = None, roles: Iterable[str] | None = None,
    app: Celery | None = None,
) -> Approval:
    """Approve as ``by``: the workflow's next step is sent. Returns the decided approval."""
    return decide(app or current_app, approval_id, "approved", by=by, reason=reason, roles=roles)


def reject(
    approval_id: str, *, by: str, reason: str | None = None, roles: Iterable[str] | None = None,
    app: Celery | None = None,
) -> Approval:
    """Reject as ``by``: the pipeline fails (``approval-rejected``) or the saga compensates."""
    return decide(app or current_app, approval_id, "rejected", by=by, reason=reason, roles=roles)


def get_approval(approval_id: str, *, app: Celery | None = None) -> Approval:
    """One approval by id; raises :class:`~tasks.errors.ApprovalNotFound`."""
    return _core.get_approval(app or current_app, approval_id)


def list_approvals(
    *, status: Status | None = None, workflow: str | None = None, limit: int = 100, app: Celery | None = None
) -> list[Approval]:
    """Approvals, newest request first."""
    return approval_store(app or current_app).approvals.find(status=status, workflow=workflow, limit=limit)


def pending_approvals(*, limit: int = 100, app: Celery | None = None) -> list[Approval]:
    return list_approvals(status="pending", limit=limit, app=app)
