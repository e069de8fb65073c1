"""The sweep's heal for a decision whose resume was lost: the decider died between its record and the message.

A decider killed between a decision's record (``approval.granted``...) and the message that resumes the
workflow leaves the workflow parked for good: its approval is decided, so its deadline no longer ends it,
and only the workflow's own deadline (an hour by default) would. :func:`resume_stalled`, run by the
workflow sweep after ``expire_due``, carries such a decision out again.
"""

from __future__ import annotations

from datetime import UTC, datetime

from celery import Celery

from relaybus.eventstore import EventStore
from relaybus.eventstore.approvals import DECISION_TYPES, Decision
from relaybus.tasks.runtime.approvals import (
    ENDED_PRINCIPAL,
    HEAL_DECIDED,
    RESUME_GRACE_S,
    approval_store,
    carry_out,
    record_id,
)

#: Decisions older than this are not looked at again.
RESUME_HORIZON_S = 24 * 3600.0


def resume_stalled(app: Celery, *, now: datetime | None = None) -> tuple[list[str], dict[str, str]]:
    """Carry out again every recent decision its workflow never followed; ``(approval ids, errors by id)``.

    A decider killed between its decision's record and the message that resumes the workflow leaves the
    workflow parked for good (its approval is decided, so its deadline no longer ends it). A decision
    whose record is followed by no record of its workflow (other than approvals') for
    :data:`RESUME_GRACE_S` is carried out again: what it sends has ids derived from the approval's (the
    resumed step runs once: its done-marker; an event once: its id), so a resume that was only slow is
    not run twice. Closed approvals (their workflow ended) are left alone.
    """
    now = now or datetime.now(UTC)
    store = approval_store(app)
    resumed: list[str] = []
    errors: dict[str, str] = {}
    decisions: tuple[Decision, ...] = ("approved", "rejected", "expired")
    for status in decisions:
        for row in store.approvals.find(status=status, limit=HEAL_DECIDED):
            decided_s = (now - row.decided_at).total_seconds() if row.decided_at else 0.0
            if row.decided_by == ENDED_PRINCIPAL or not RESUME_GRACE_S <= decided_s <= RESUME_HORIZON_S:
                continue
            try:
                decision = store.get(record_id(row.id, DECISION_TYPES[status]))
                if decision is not None and _followed(store, row.workflow, decision.position):
                    continue
                carry_out(app, row)
                resumed.append(row.id)
            except Exception as error:  # one it cannot resume must not shield the others
                errors[row.id] = f"{type(error).__name__}: {error}"
    return resumed, errors


def _followed(store: EventStore, workflow: str, position: int) -> bool:
    """Whether ``workflow`` has a record after ``position`` other than an approval's."""
    after = store.find(correlation_id=workflow, after_position=position, limit=20)
    return any(not e.type.startswith("approval.") for e in after)
