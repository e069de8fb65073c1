"""The event log, its append-only triggers, and the workflow-status projection.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_MESSAGE = "eventstore: events are append-only"
_ID = 255


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column(
            "position", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
        ),
        sa.Column("event_id", sa.String(_ID), nullable=False),
        sa.Column("stream_id", sa.String(_ID), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(_ID), nullable=False),
        sa.Column("schema_version", sa.Integer(), nullable=False),
        sa.Column("correlation_id", sa.String(_ID), nullable=False),
        sa.Column("causation_id", sa.String(_ID), nullable=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("task_id", sa.String(_ID), nullable=True),
        sa.Column("agent", sa.String(_ID), nullable=True),
        sa.Column("queue", sa.String(_ID), nullable=True),
        sa.Column("priority", sa.Integer(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=True),
        sa.Column("worker_host", sa.String(_ID), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=True),
        sa.UniqueConstraint("event_id", name="uq_events_event_id"),
        sa.UniqueConstraint("stream_id", "version", name="uq_events_stream_version"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_events_correlation_position", "events", ["correlation_id", "position"])
    op.create_index("ix_events_type_position", "events", ["type", "position"])
    op.create_index("ix_events_agent_occurred_at", "events", ["agent", "occurred_at"])
    op.create_index("ix_events_task_id", "events", ["task_id"])
    op.create_index("ix_events_occurred_at", "events", ["occurred_at"])

    op.create_table(
        "workflow_status",
        sa.Column("correlation_id", sa.String(_ID), primary_key=True),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("declared_status", sa.String(32), nullable=True),
        sa.Column("first_event_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_event_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tasks_succeeded", sa.Integer(), nullable=False),
        sa.Column("tasks_failed", sa.Integer(), nullable=False),
        sa.Column("task_status", sa.JSON(), nullable=False),
        sa.Column("last_position", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_workflow_status_status", "workflow_status", ["status"])

    op.create_table(
        "projection_tracking",
        sa.Column("name", sa.String(_ID), primary_key=True),
        sa.Column("position", sa.BigInteger(), nullable=False),
    )

    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE OR REPLACE FUNCTION eventstore_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN RAISE EXCEPTION '{_MESSAGE}'; END $$"
        )
        op.execute(
            "CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events "
            "FOR EACH ROW EXECUTE FUNCTION eventstore_reject_change()"
        )
        op.execute(
            "CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events "
            "FOR EACH STATEMENT EXECUTE FUNCTION eventstore_reject_change()"
        )
    else:
        for operation in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER events_no_{operation.lower()} BEFORE {operation} ON events "
                f"BEGIN SELECT RAISE(ABORT, '{_MESSAGE}'); END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS events_no_truncate ON events")
        op.execute("DROP TRIGGER IF EXISTS events_append_only ON events")
        op.execute("DROP FUNCTION IF EXISTS eventstore_reject_change()")
    else:
        op.execute("DROP TRIGGER IF EXISTS events_no_update")
        op.execute("DROP TRIGGER IF EXISTS events_no_delete")
    op.drop_table("projection_tracking")
    op.drop_index("ix_workflow_status_status", table_name="workflow_status")
    op.drop_table("workflow_status")
    for index in (
        "ix_events_occurred_at",
        "ix_events_task_id",
        "ix_events_agent_occurred_at",
        "ix_events_type_position",
        "ix_events_correlation_position",
    ):
        op.drop_index(index, table_name="events")
    op.drop_table("events")
