"""Approvals a workflow waits for: one row per request, decided exactly once.

A workflow step that needs a person records a request here (and ``approval.requested`` in the log) and
returns: nothing waits in a worker. The row says what to approve (``subject``, redacted on the way in),
who may (``approvers``: principals, or ``role:<name>``), until when (``deadline``), and how to resume
the workflow (``resume``, read by whoever carries the decision out).

**One decision wins.** :meth:`ApprovalTable.decide` is a conditional UPDATE: ``status`` goes from
``pending`` to ``approved``, ``rejected`` or ``expired`` only if it is still ``pending`` (and, for a
grant or a rejection, the deadline has not passed; for an expiry, it has). Two approvers racing, or an
approver racing the sweep, both run it; the database lets one row change, and the other caller reads
the row back and sees who won. The table is not the record: the log holds every request and decision.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Row, and_, insert, select, update

from relaybus.eventstore._engine import ProcessLocalEngine, translate_errors
from relaybus.eventstore.models import utc
from relaybus.eventstore.redaction import Redactor
from relaybus.eventstore.schema import approvals

Status = Literal["pending", "approved", "rejected", "expired"]
Decision = Literal["approved", "rejected", "expired"]
STATUSES: tuple[Status, ...] = ("pending", "approved", "rejected", "expired")

APPROVAL_REQUESTED = "approval.requested"
APPROVAL_GRANTED = "approval.granted"
APPROVAL_REJECTED = "approval.rejected"
APPROVAL_EXPIRED = "approval.expired"
#: The record of each decision.
DECISION_TYPES: dict[Decision, str] = {
    "approved": APPROVAL_GRANTED,
    "rejected": APPROVAL_REJECTED,
    "expired": APPROVAL_EXPIRED,
}
ROLE_PREFIX = "role:"


class Approval(BaseModel):
    """One request and, once decided, its decision."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1, max_length=255)
    workflow: str = Field(min_length=1, max_length=255)
    #: ``pipeline`` or ``saga``: which resumer carries a decision out.
    workflow_kind: str = Field(min_length=1, max_length=32)
    step: str = Field(min_length=1, max_length=255)
    subject: dict[str, Any] = Field(default_factory=dict)
    #: Who may decide: principal names, and ``role:<name>`` for anyone holding that role.
    approvers: tuple[str, ...] = Field(min_length=1)
    requested_at: datetime
    deadline: datetime
    status: Status = "pending"
    decided_by: str | None = None
    decided_at: datetime | None = None
    reason: str | None = None
    #: What resumes the workflow (kind-specific; read by the resumer of ``workflow_kind``).
    resume: dict[str, Any] = Field(default_factory=dict)
    #: The ``approval.requested`` record's event id: the decision's causation.
    requested_event_id: str

    def allows(self, principal: str, roles: Iterable[str] = ()) -> bool:
        """Whether ``principal`` (holding ``roles``) is among the approvers."""
        held = {f"{ROLE_PREFIX}{r}" for r in roles}
        return principal in self.approvers or bool(held & set(self.approvers))


def _approval(row: Row[Any]) -> Approval:
    data = dict(row._mapping)
    for name in ("requested_at", "deadline", "decided_at"):
        if data[name] is not None:
            data[name] = utc(data[name])
    data["approvers"] = tuple(data["approvers"])
    return Approval.model_validate(data)


class ApprovalTable:
    """The ``approvals`` table of one event store (``store.approvals``)."""

    def __init__(self, engine: ProcessLocalEngine, redactor: Redactor) -> None:
        self._engine = engine
        self._redactor = redactor

    def request(self, approval: Approval) -> tuple[Approval, bool]:
        """Insert ``approval`` (its subject redacted) unless its id is taken; ``(the stored row, inserted)``.

        A request made again under its id (a redelivered step) finds the first one and changes nothing.
        """
        row = approval.model_dump(mode="python")
        row["subject"] = self._redactor.redact(approval.subject)
        row["approvers"] = list(approval.approvers)
        with translate_errors():
            existing = self.get(approval.id)
            if existing is not None:
                return existing, False
            try:
                with self._engine.write() as conn:
                    conn.execute(insert(approvals).values(**row))
            except Exception:
                existing = self.get(approval.id)  # a racing insert of the same request won
                if existing is None:
                    raise
                return existing, False
        stored = self.get(approval.id)
        assert stored is not None
        return stored, True

    def get(self, approval_id: str) -> Approval | None:
        with translate_errors(), self._engine.read() as conn:
            row = conn.execute(select(approvals).where(approvals.c.id == approval_id)).first()
        return _approval(row) if row is not None else None

    def find(self, *, status: Status | None = None, workflow: str | None = None, limit: int = 100) -> list[Approval]:
        """Newest requests first."""
        query = select(approvals).order_by(approvals.c.requested_at.desc(), approvals.c.id).limit(limit)
        if status is not None:
            query = query.where(approvals.c.status == status)
        if workflow is not None:
            query = query.where(approvals.c.workflow == workflow)
        with translate_errors(), self._engine.read() as conn:
            return [_approval(row) for row in conn.execute(query)]

    def decide(self, approval_id: str, status: Decision, *, by: str, reason: str | None, now: datetime) -> bool:
        """Move a pending request to ``status``: True if this call made the change, False if it was
        decided already (or, for a grant or rejection, its deadline has passed; for an expiry, not yet)."""
        in_time = approvals.c.deadline <= now if status == "expired" else approvals.c.deadline > now
        statement = (
            update(approvals)
            .where(and_(approvals.c.id == approval_id, approvals.c.status == "pending", in_time))
            .values(
                status=status,
                decided_by=by,
                decided_at=now,
                reason=self._redactor.redact_text(reason) if reason else None,
            )
        )
        with translate_errors(), self._engine.write() as conn:
            return conn.execute(statement).rowcount == 1

    def close(self, approval_id: str, *, by: str, reason: str, now: datetime) -> bool:
        """End a pending request ``expired`` whatever its deadline (its workflow ended without it): True if this
        call made the change, False if it was decided already. The same conditional UPDATE as a decision, so
        a person deciding at the same moment either wins (and this call changes nothing) or finds it closed."""
        statement = (
            update(approvals)
            .where(and_(approvals.c.id == approval_id, approvals.c.status == "pending"))
            .values(status="expired", decided_by=by, decided_at=now, reason=self._redactor.redact_text(reason))
        )
        with translate_errors(), self._engine.write() as conn:
            return conn.execute(statement).rowcount == 1

    def due(self, now: datetime, *, limit: int = 1000) -> list[Approval]:
        """Pending requests whose deadline has passed at ``now``, oldest deadline first."""
        query = (
            select(approvals)
            .where(and_(approvals.c.status == "pending", approvals.c.deadline <= now))
            .order_by(approvals.c.deadline)
            .limit(limit)
        )
        with translate_errors(), self._engine.read() as conn:
            return [_approval(row) for row in conn.execute(query)]

    def waiting(self, workflows: Iterable[str]) -> set[str]:
        """Those of ``workflows`` that wait for a pending approval."""
        ids = list(set(workflows))
        found: set[str] = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            query = select(approvals.c.workflow).where(
                and_(approvals.c.status == "pending", approvals.c.workflow.in_(chunk))
            )
            with translate_errors(), self._engine.read() as conn:
                found.update(row[0] for row in conn.execute(query))
        return found
