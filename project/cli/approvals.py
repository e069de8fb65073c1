"""``relaybus approvals list|show|approve|reject``: the decisions workflows wait for.

``approve``/``reject`` take ``--by`` (who decides: a principal named among the approval's approvers, or
holding one of its ``role:<name>`` approvers in ``RELAYBUS_APPROVER_ROLES``) and ``--reason``.

Exit codes: 0 done (the same person deciding again the same way is a no-op, exit 0); 1 no such approval;
2 bad usage; 3 a service could not be reached; 4 refused: ``--by`` is not among the approvers (they are
named), or the approval was decided already, or expired (the decision that won is named).
"""

from __future__ import annotations

from typing import Any

import click

from relaybus.cli.errors import unreachable
from relaybus.cli.output import EXIT_PROBLEM, EXIT_REFUSED, console, emit_json, fail, json_option, table
from relaybus.cli.services import celery_app, service_errors

STATUSES = ("pending", "approved", "rejected", "expired")


def _row(a: Any) -> dict[str, Any]:
    row: dict[str, Any] = a.model_dump(mode="json", exclude={"resume"})
    return row


@click.group()
def approvals() -> None:
    """Approvals workflows wait for: list, show, approve, reject."""


@approvals.command("list")
@click.option("--status", type=click.Choice(STATUSES), default="pending", show_default=True,
              help="Only approvals in this status.")
@click.option("--all", "every", is_flag=True, help="Every status.")
@click.option("--workflow", default=None, help="Only this workflow's (correlation id).")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="At most this many.")
@json_option
def approvals_list(status: str, every: bool, workflow: str | None, limit: int, as_json: bool) -> None:
    """Approvals, newest request first (pending ones by default)."""
    from relaybus.tasks.approvals import list_approvals

    app = celery_app()
    try:
        rows = list_approvals(status=None if every else status, workflow=workflow, limit=limit, app=app)  # type: ignore[arg-type]
    except service_errors() as exc:
        unreachable(exc)
    if as_json:
        emit_json([_row(a) for a in rows])
        return
    table("approvals", ["id", "workflow", "step", "status", "approvers", "deadline", "decided by"],
          [[a.id, a.workflow, a.step, a.status, ", ".join(a.approvers), a.deadline.isoformat(timespec="seconds"),
            a.decided_by or ""] for a in rows])


@approvals.command("show")
@click.argument("approval_id")
@json_option
def approvals_show(approval_id: str, as_json: bool) -> None:
    """One approval: what to approve, who may, until when, and its decision."""
    from relaybus.tasks.approvals import get_approval
    from relaybus.tasks.errors import ApprovalNotFound

    app = celery_app()
    try:
        a = get_approval(approval_id, app=app)
    except ApprovalNotFound as exc:
        fail(str(exc), EXIT_PROBLEM)
    except service_errors() as exc:
        unreachable(exc)
    if as_json:
        emit_json(_row(a))
        return
    console.print(f"[bold]approval[/bold] {a.id}   [bold]status:[/bold] {a.status}")
    console.print(f"workflow {a.workflow} ({a.workflow_kind})   step {a.step}")
    console.print(f"approvers: {', '.join(a.approvers)}   deadline: {a.deadline.isoformat(timespec='seconds')}")
    if a.status != "pending":
        console.print(f"decided by {a.decided_by} at {a.decided_at}" + (f": {a.reason}" if a.reason else ""))
    emit_json(a.subject)


def _decide(approval_id: str, decision: str, by: str, reason: str | None, as_json: bool) -> None:
    from relaybus.tasks.approvals import approve, reject
    from relaybus.tasks.errors import ApprovalError, ApprovalNotFound

    app = celery_app()
    act = approve if decision == "approved" else reject
    try:
        a = act(approval_id, by=by, reason=reason, app=app)
    except ApprovalNotFound as exc:
        fail(str(exc), EXIT_PROBLEM, stderr=True)
    except ApprovalError as exc:
        fail(f"refused: {exc}", EXIT_REFUSED, stderr=True)
    except service_errors() as exc:
        unreachable(exc)
    if as_json:
        emit_json(_row(a))
    else:
        console.print(f"approval {a.id} {a.status} by {a.decided_by} (workflow {a.workflow}, step {a.step})")


_by = click.option("--by", required=True, help="Who decides (a principal among the approvers, or holding a role).")
_reason = click.option("--reason", default=None, help="Why (recorded with the decision).")


@approvals.command("approve")
@click.argument("approval_id")
@_by
@_reason
@json_option
def approvals_approve(approval_id: str, by: str, reason: str | None, as_json: bool) -> None:
    """Approve: the workflow's next step is sent."""
    _decide(approval_id, "approved", by, reason, as_json)


@approvals.command("reject")
@click.argument("approval_id")
@_by
@_reason
@json_option
def approvals_reject(approval_id: str, by: str, reason: str | None, as_json: bool) -> None:
    """Reject: the pipeline fails (approval-rejected), a saga compensates."""
    _decide(approval_id, "rejected", by, reason, as_json)


COMMANDS = (approvals,)
