"""Durable human approval: a workflow step parks on a request; a person's decision resumes the workflow.

::

    request_approval(app, approval_id=..., workflow=pipeline_id, kind="pipeline", step="approve",
                     subject={...}, approvers=("alice", "role:editor"), timeout_s=3600, resume={...})
        -> a row in the event store's ``approvals`` table + ``approval.requested`` (v1); the step returns
    decide(app, approval_id, "approved", by="alice", reason="looks right")
        -> conditional UPDATE (one decision wins) -> ``approval.granted`` -> the resumer sends the next step
    expire_due(app)          (the workflow sweep, beat) -> ``approval.expired`` -> the failure path
    resume_stalled(app)      (the same sweep) -> a decision its workflow never followed is carried out again
    an approval whose workflow ended another way (at its request, its decision, the sweep) -> ``approval.expired``

Nothing waits in a worker: the request is a row, the decision another process's call. How a decision
resumes a workflow depends on its kind: the pipeline and saga packages register a :class:`Resumer`
(``tasks.pipelines.approval``, ``tasks.saga.approval``) when they are imported; this module knows neither.

**A workflow that ended closes its approvals.** A pipeline can end while one of its approvals is pending (it
timed out, then a late step parked it; another branch failed or was revoked): a person approving afterwards
would resume a workflow that has ended, and its steps would run after its outcome. So an approval whose
workflow has ended (its resumer's ``ended``: one lookup) is closed where it matters, off the hot path: as
it is requested (a late step), as someone decides it (they are told :class:`AlreadyDecided`), and by the
sweep (within a minute or two, so nobody is asked for nothing). An outcome recorded between the decision's
check and its UPDATE is the one race left: the resumed step is late, as any late step after an outcome
(tasks.pipelines.deadline). Closed is ``expired`` by :data:`ENDED_PRINCIPAL`, recorded ``approval.expired``,
and carried out as an expiry: a pipeline's failure is a duplicate of the outcome it has (the log keeps the
first), a saga compensating for another member gets the approval member's failure it waits for and
finishes compensating.

Every record carries the workflow's correlation id; a decision's causation is its request's record.
Ids are derived from the approval's id, so a decision carried out again (the decider retrying after a
crash between the row and the record, or deciding again the same way) records and sends nothing twice:
the log keeps one record per event id, and the resumers send under derived task ids.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

from celery import Celery

from relaybus.eventstore import EventStore, NewEvent
from relaybus.eventstore.approvals import (
    APPROVAL_EXPIRED,
    APPROVAL_REQUESTED,
    DECISION_TYPES,
    Approval,
)
from relaybus.tasks.errors import AlreadyDecided, ApprovalError, ApprovalNotFound, NotAnApprover
from relaybus.tasks.runtime import recording
from relaybus.tasks.runtime.config import runtime_config

#: Who an expiry is recorded as decided by.
SWEEP_PRINCIPAL = "relaybus.sweep"
#: Who an approval closed because its workflow ended is recorded as decided by.
ENDED_PRINCIPAL = "relaybus.workflow-ended"
_IDS = uuid.UUID("4f0c2d8e-7b1a-4c55-9e3f-2a6d1b8c9e70")


class Resumer(Protocol):
    """Carries a decision out for one kind of workflow. Both calls must be idempotent: a decision may be
    carried out again (``event_id`` is the decision's record, the causation of what it sends)."""

    def approved(self, app: Celery, approval: Approval, event_id: str) -> None: ...

    def refused(self, app: Celery, approval: Approval, event_id: str) -> None:
        """Rejected or expired (``approval.status``): take the workflow's failure or compensation path."""


class EndAware(Protocol):
    """A resumer that can tell whether an approval's workflow has ended (optional: ``ended`` is looked up)."""

    def ended(self, app: Celery, approval: Approval) -> str | None:
        """How the workflow of ``approval`` ended (``pipeline.timed_out``...), or None while it runs."""


_RESUMERS: dict[str, Resumer] = {}


def register_resumer(kind: str, resumer: Resumer) -> None:
    _RESUMERS[kind] = resumer


def approval_id_for(*parts: object) -> str:
    """A deterministic approval id: a step that requests again (redelivered) finds its first request."""
    return str(uuid.uuid5(_IDS, ":".join(str(p) for p in parts)))


def record_id(approval_id: str, type_: str) -> str:
    return str(uuid.uuid5(_IDS, f"{approval_id}:{type_}"))


def approval_store(app: Celery) -> EventStore:
    """The event store the approvals live in; approvals need the event log."""
    store: EventStore | None = getattr(recording.recorder_for(app), "store", None)
    if store is None:
        raise ApprovalError("approvals live in the event log, which is off (RELAYBUS_RECORD_EVENTS=false)")
    return store


def _record(
    app: Celery,
    type_: str,
    approval: Approval,
    payload: dict[str, Any],
    *,
    causation_id: str | None,
    task_id: str | None = None,
) -> str:
    event_id = record_id(approval.id, type_)
    recording.recorder_for(app).append(
        [
            NewEvent(
                event_id=event_id,
                stream_id=f"approval-{approval.id}",
                correlation_id=approval.workflow,
                causation_id=causation_id,
                type=type_,
                task_id=task_id,
                agent="system",
                worker_host=socket.gethostname(),
                payload={
                    "approval_id": approval.id,
                    "workflow_kind": approval.workflow_kind,
                    "step": approval.step,
                    **payload,
                },
            )
        ]
    )
    return event_id


def request_approval(
    app: Celery,
    *,
    approval_id: str,
    workflow: str,
    kind: str,
    step: str,
    subject: Mapping[str, Any],
    approvers: Iterable[str],
    timeout_s: float,
    resume: Mapping[str, Any],
    causation_id: str | None = None,
    task_id: str | None = None,
) -> Approval:
    """Record a request for a person's approval (row, then ``approval.requested``); returns the stored row.

    Requesting again under ``approval_id`` returns the first request unchanged (and records nothing new).
    """
    approvers = tuple(approvers)
    if not approvers:
        raise ApprovalError(f"approval for step {step!r} names no approver")
    if not timeout_s > 0:
        raise ApprovalError(f"approval for step {step!r}: timeout_s must be positive, got {timeout_s!r}")
    store = approval_store(app)
    now = datetime.now(UTC)
    row = Approval(
        id=approval_id,
        workflow=workflow,
        workflow_kind=kind,
        step=step,
        subject=dict(subject),
        approvers=approvers,
        requested_at=now,
        deadline=now + timedelta(seconds=timeout_s),
        resume=dict(resume),
        requested_event_id=record_id(approval_id, APPROVAL_REQUESTED),
    )
    stored, _ = store.approvals.request(row)
    _record(
        app,
        APPROVAL_REQUESTED,
        stored,
        {"subject": stored.subject, "approvers": list(stored.approvers), "deadline": stored.deadline.isoformat()},
        causation_id=causation_id,
        task_id=task_id,
    )
    if stored.status == "pending":
        ended = _ended(app, stored)
        if ended is not None:  # a late step parked a workflow that has its outcome: nobody may resume it
            return _close(app, stored, f"its {kind} had already ended ({ended}) when the approval was requested")
    return stored


def _ended(app: Celery, row: Approval) -> str | None:
    ended = getattr(_RESUMERS.get(row.workflow_kind), "ended", None)
    return ended(app, row) if ended is not None else None


def _close(app: Celery, row: Approval, reason: str) -> Approval:
    """Close ``row`` (row, then ``approval.expired``) unless a decision came first; the row as it stands."""
    store = approval_store(app)
    if store.approvals.close(row.id, by=ENDED_PRINCIPAL, reason=reason, now=datetime.now(UTC)):
        closed = get_approval(app, row.id)
        carry_out(app, closed)
        return closed
    return get_approval(app, row.id)


def get_approval(app: Celery, approval_id: str) -> Approval:
    found = approval_store(app).approvals.get(approval_id)
    if found is None:
        raise ApprovalNotFound(f"no approval {approval_id!r}")
    return found


def decide(
    app: Celery,
    approval_id: str,
    decision: Literal["approved", "rejected"],
    *,
    by: str,
    reason: str | None = None,
    roles: Iterable[str] | None = None,
) -> Approval:
    """Approve or reject; returns the decided row. ``roles``: those ``by`` holds (default: the setting
    ``RELAYBUS_APPROVER_ROLES``).

    Raises :class:`NotAnApprover` if ``by`` may not decide, :class:`AlreadyDecided` if another decision (or
    the deadline) came first. Deciding again the same way as the one who decided returns the row and
    carries the decision out again (idempotent: nothing is recorded or sent twice).
    """
    if not by or not by.strip():
        raise NotAnApprover("a decision needs the name of who decides (by=...)")
    store = approval_store(app)
    current = get_approval(app, approval_id)
    if current.status != "pending":
        return _decided_already(app, current, decision, by)
    held = tuple(roles) if roles is not None else runtime_config(app).approver_roles.get(by, ())
    if not current.allows(by, held):
        raise NotAnApprover(
            f"{by!r} may not decide approval {approval_id} (step {current.step!r}): its approvers are "
            f"{', '.join(current.approvers)}" + (f"; {by!r} holds roles {', '.join(held)}" if held else "")
        )
    ended = _ended(app, current)
    if ended is not None:  # nothing to resume: closed instead (or decided by someone else just now)
        closed = _close(app, current, f"its {current.workflow_kind} had ended ({ended}) before a decision")
        return _decided_already(app, closed, decision, by)
    now = datetime.now(UTC)
    if not store.approvals.decide(approval_id, decision, by=by, reason=reason, now=now):
        after = get_approval(app, approval_id)
        if after.status == "pending":
            raise AlreadyDecided(
                f"approval {approval_id} missed its deadline ({after.deadline.isoformat(timespec='seconds')}): "
                "the sweep ends it as expired",
                after,
            )
        return _decided_already(app, after, decision, by)
    decided = get_approval(app, approval_id)
    carry_out(app, decided)
    return decided


def _decided_already(app: Celery, row: Approval, decision: str, by: str) -> Approval:
    if row.status == decision and row.decided_by == by:
        carry_out(app, row)
        return row
    when = row.decided_at.isoformat(timespec="seconds") if row.decided_at else "?"
    raise AlreadyDecided(f"approval {row.id} was already {row.status} by {row.decided_by} at {when}", row)


def carry_out(app: Celery, row: Approval) -> None:
    """Record the decision of ``row`` and resume its workflow (both idempotent)."""
    if row.status == "pending":
        raise ValueError(f"approval {row.id} is not decided")
    resumer = _RESUMERS.get(row.workflow_kind)
    if resumer is None:
        raise ApprovalError(
            f"approval {row.id}: no resumer for {row.workflow_kind!r} workflows in this process "
            "(import relaybus.tasks.api, which loads them)"
        )
    event_id = _record(
        app,
        DECISION_TYPES[row.status],
        row,
        {"decided_by": row.decided_by, "reason": row.reason, "deadline": row.deadline.isoformat()},
        causation_id=row.requested_event_id,
    )
    if row.status == "approved":
        resumer.approved(app, row, event_id)
    else:
        resumer.refused(app, row, event_id)


#: How long a decision's workflow may show no record after it before the sweep carries the decision out again.
RESUME_GRACE_S = 60.0
#: How many of the newest decisions of each kind each sweep looks at.
HEAL_DECIDED = 100


#: How many of the newest expired approvals each sweep checks for a decision its record never followed.
HEAL_EXPIRED = 100


def expire_due(app: Celery, *, now: datetime | None = None) -> tuple[list[str], dict[str, str]]:
    """End every pending approval past its deadline as expired; ``(expired ids, errors by id)``.

    The expiry is the same conditional UPDATE as a decision, so an approval expired here cannot be
    approved afterwards, nor one approved in time expire. An expiry whose record is missing from the log
    (the sweep died between the row and the record) is carried out again by the next sweep. A pending
    approval whose workflow has ended (its resumer's ``ended``) is closed.
    """
    now = now or datetime.now(UTC)
    store = approval_store(app)
    expired: list[str] = []
    errors: dict[str, str] = {}
    for row in store.approvals.find(status="expired", limit=HEAL_EXPIRED):
        if store.get(record_id(row.id, APPROVAL_EXPIRED)) is None:
            try:
                carry_out(app, row)
                expired.append(row.id)
            except Exception as error:
                errors[row.id] = f"{type(error).__name__}: {error}"
    for row in store.approvals.due(now):
        try:
            reason = f"no decision by {row.deadline.isoformat(timespec='seconds')}"
            if store.approvals.decide(row.id, "expired", by=SWEEP_PRINCIPAL, reason=reason, now=now):
                carry_out(app, get_approval(app, row.id))
                expired.append(row.id)
        except Exception as error:  # one approval it cannot end must not shield the others
            errors[row.id] = f"{type(error).__name__}: {error}"
    for row in store.approvals.find(status="pending", limit=HEAL_DECIDED):
        # Its workflow ended with nothing to close it (a saga compensating for another member's failure, a
        # pipeline whose outcome's closing crashed): closed here, so nobody is asked to decide for nothing.
        if (now - row.requested_at).total_seconds() < RESUME_GRACE_S:
            continue
        try:
            ended = _ended(app, row)
            if (
                ended is not None
                and _close(app, row, f"its {row.workflow_kind} had ended ({ended})").status == "expired"
            ):
                expired.append(row.id)
        except Exception as error:
            errors[row.id] = f"{type(error).__name__}: {error}"
    return expired, errors


def refusal_reason(row: Approval) -> str:
    """``approval-rejected: ...`` / ``approval-expired: ...``: the reason a refused workflow fails with."""
    if row.status == "rejected":
        why = f": {row.reason}" if row.reason else ""
        return f"approval-rejected: step {row.step!r} rejected by {row.decided_by}{why}"
    if row.decided_by == ENDED_PRINCIPAL:
        return f"approval-expired: step {row.step!r} was closed: {row.reason}"
    return f"approval-expired: step {row.step!r} had no decision by {row.deadline.isoformat(timespec='seconds')}"
