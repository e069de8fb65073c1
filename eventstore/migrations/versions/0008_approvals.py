"""The approvals table: a person's decision a workflow waits for (eventstore.approvals).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "approvals",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("workflow", sa.String(255), nullable=False),
        sa.Column("workflow_kind", sa.String(32), nullable=False),
        sa.Column("step", sa.String(255), nullable=False),
        sa.Column("subject", sa.JSON, nullable=False),
        sa.Column("approvers", sa.JSON, nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deadline", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("decided_by", sa.String(255), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("resume", sa.JSON, nullable=False),
        sa.Column("requested_event_id", sa.String(255), nullable=False),
    )
    op.create_index("ix_approvals_status_deadline", "approvals", ["status", "deadline"])
    op.create_index("ix_approvals_workflow", "approvals", ["workflow"])


def downgrade() -> None:
    op.drop_index("ix_approvals_workflow", table_name="approvals")
    op.drop_index("ix_approvals_status_deadline", table_name="approvals")
    op.drop_table("approvals")
