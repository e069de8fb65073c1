"""A rejected task is not a failure: ``workflow_status`` rows counted one as failed; they are counted again.

``task.rejected`` ends a task that refused its message: most often a saga step that arrived after its saga
stopped going forward (``NotRun``), which did nothing. The projection counted it in ``tasks_failed`` and, for a
workflow without a declared status, derived ``failed`` from it. The fold no longer does
(``eventstore.types.FAILED_TASK_TYPES``); the rows it wrote before are corrected here, as a rebuild would
compute them: only rows whose tasks include a rejected one change, and the table holds each task's status.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

# The statuses as this revision defines them (not imported: a migration keeps the rules of its day).
_FAILED = frozenset({"failed", "dead_lettered"})
_TERMINAL = frozenset({"succeeded", "failed", "dead_lettered", "revoked", "rejected"})

_workflows = sa.table(
    "workflow_status",
    sa.column("correlation_id", sa.String),
    sa.column("status", sa.String),
    sa.column("declared_status", sa.String),
    sa.column("tasks_failed", sa.Integer),
    sa.column("task_status", sa.JSON),
)


def _statuses(value: Any) -> dict[str, str]:
    return json.loads(value) if isinstance(value, str | bytes) else dict(value or {})


def upgrade() -> None:
    bind = op.get_bind()
    text = sa.cast(_workflows.c.task_status, sa.Text)
    rows = bind.execute(
        sa.select(_workflows.c.correlation_id, _workflows.c.declared_status, _workflows.c.task_status).where(
            text.like('%"rejected"%')
        )
    ).all()
    for correlation_id, declared, task_status in rows:
        statuses = _statuses(task_status).values()
        if declared is not None:
            status = declared
        elif not statuses or any(s not in _TERMINAL for s in statuses):
            status = "running"
        else:
            status = "failed" if any(s in _FAILED for s in statuses) else "succeeded"
        bind.execute(
            _workflows.update()
            .where(_workflows.c.correlation_id == correlation_id)
            .values(tasks_failed=sum(s in _FAILED for s in statuses), status=status)
        )


def downgrade() -> None:
    bind = op.get_bind()
    text = sa.cast(_workflows.c.task_status, sa.Text)
    rows = bind.execute(
        sa.select(_workflows.c.correlation_id, _workflows.c.declared_status, _workflows.c.task_status).where(
            text.like('%"rejected"%')
        )
    ).all()
    for correlation_id, declared, task_status in rows:
        statuses = _statuses(task_status).values()
        failed = _FAILED | {"rejected"}
        values: dict[str, Any] = {"tasks_failed": sum(s in failed for s in statuses)}
        if declared is None and statuses and all(s in _TERMINAL for s in statuses):
            values["status"] = "failed" if any(s in failed for s in statuses) else "succeeded"
        bind.execute(_workflows.update().where(_workflows.c.correlation_id == correlation_id).values(**values))
