"""Tasks that ended without failing nor succeeding: ``workflow_status`` rows are counted again as the fold now does.

``task.rejected`` ends a task that refused its message: most often a saga step that arrived after its saga
stopped going forward (``NotRun``), which did nothing. The projection counted it in ``tasks_failed``, and a
workflow without a declared status ended ``failed`` by it. And a workflow whose tasks all ended, one of them
revoked (``relaybus revoke``) and none failed, was ``succeeded``. The fold now counts neither as a failure
(``eventstore.types.FAILED_TASK_TYPES``) and derives ``cancelled`` for such a workflow: ``succeeded`` needs every
task to have succeeded. The rows written before are corrected here as a rebuild computes them: only rows holding
a rejected or revoked task can change, and the table keeps each task's status.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

# The statuses as this revision defines them (not imported: a migration keeps the rules of its day).
_FAILED = frozenset({"failed", "dead_lettered"})
_FAILED_BEFORE = _FAILED | {"rejected"}
_TERMINAL = frozenset({"succeeded", "failed", "dead_lettered", "revoked", "rejected"})

_workflows = sa.table(
    "workflow_status",
    sa.column("correlation_id", sa.String),
    sa.column("declared_status", sa.String),
    sa.column("status", sa.String),
    sa.column("tasks_failed", sa.Integer),
    sa.column("task_status", sa.JSON),
)


def _derived_now(statuses: Collection[str]) -> str:
    if any(s in _FAILED for s in statuses):
        return "failed"
    return "succeeded" if all(s == "succeeded" for s in statuses) else "cancelled"


def _derived_before(statuses: Collection[str]) -> str:
    return "failed" if any(s in _FAILED_BEFORE for s in statuses) else "succeeded"


def _count_again(failed: frozenset[str], derived: Callable[[Collection[str]], str]) -> None:
    bind = op.get_bind()
    text = sa.cast(_workflows.c.task_status, sa.Text)
    rows = bind.execute(
        sa.select(_workflows.c.correlation_id, _workflows.c.declared_status, _workflows.c.task_status).where(
            text.like('%"rejected"%') | text.like('%"revoked"%')
        )
    ).all()
    for correlation_id, declared, task_status in rows:
        statuses = list(_statuses(task_status).values())
        values: dict[str, Any] = {"tasks_failed": sum(s in failed for s in statuses)}
        if declared is None and statuses and all(s in _TERMINAL for s in statuses):
            values["status"] = derived(statuses)
        bind.execute(_workflows.update().where(_workflows.c.correlation_id == correlation_id).values(**values))


def _statuses(value: Any) -> dict[str, str]:
    return json.loads(value) if isinstance(value, str | bytes) else dict(value or {})


def upgrade() -> None:
    _count_again(_FAILED, _derived_now)


def downgrade() -> None:
    _count_again(_FAILED_BEFORE, _derived_before)
