"""Indexes for the workflow list at scale: the most recently active first, overall and per status.

``relaybus workflows list`` reads ``workflow_status ORDER BY last_position DESC LIMIT n``, with or
without a status (and, for the idle sweep, ``status = 'running'`` and an idle bound): without an
index on ``last_position`` every row is read and sorted (one per workflow ever run: tens of
milliseconds at 1 M events, growing with the log). ``(status, last_position)`` answers the filtered
list in order and replaces the index on ``status`` alone, of which it is a prefix.

The events table needs no new index for the CLI's queries at 5 M events (bench/scale.py): the
glob and status filters are answered from the type index (``EventStore.find``), not with ``LIKE``.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_workflow_status_status", table_name="workflow_status")
    op.create_index("ix_workflow_status_status_position", "workflow_status", ["status", "last_position"])
    op.create_index("ix_workflow_status_last_position", "workflow_status", ["last_position"])


def downgrade() -> None:
    op.drop_index("ix_workflow_status_last_position", table_name="workflow_status")
    op.drop_index("ix_workflow_status_status_position", table_name="workflow_status")
    op.create_index("ix_workflow_status_status", "workflow_status", ["status"])
