"""The workflow list filters by name and start time: ``kind`` and ``name`` on ``workflow_status``, and indexes.

The console (``relaybus web``) lists pipelines and sagas by name and by when they started, on logs of
millions of events. Reading each row's opener from the events table (``pipeline.started``,
``saga.started``) per page, as it did, cannot filter; the projection now keeps what opened the
workflow (``kind``: ``pipeline`` or ``saga``) and its name, and ``(name, last_position)`` answers a
name's list in order as ``(status, last_position)`` answers a status's. ``first_event_at`` (when it
started) gets an index of its own for a time range.

Existing rows are back-filled here from the log, with the fold's rule
(:data:`eventstore.projections.OPENED_AS`): a pipeline outranks a saga in the same correlation id, and
the first opener of a kind names it. Rows the projection has not reached yet get theirs from
``catch_up()``, which now reads an opener's payload; a later ``rebuild()`` gives the same values.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# Saga first, then pipeline: a pipeline's row overwrites a saga's (the rank), never the other way.
_OPENERS = (("saga", "saga.started", "saga"), ("pipeline", "pipeline.started", "pipeline"))


def upgrade() -> None:
    op.add_column("workflow_status", sa.Column("kind", sa.String(16), nullable=True))
    op.add_column("workflow_status", sa.Column("name", sa.String(255), nullable=True))
    op.create_index("ix_workflow_status_name_position", "workflow_status", ["name", "last_position"])
    op.create_index("ix_workflow_status_first_event_at", "workflow_status", ["first_event_at"])
    dialect = op.get_bind().dialect.name
    for kind, type_, key in _OPENERS:
        if dialect == "postgresql":
            name = f"left(coalesce(e.payload->>'{key}', e.payload->>'name'), 255)"
            op.execute(
                f"UPDATE workflow_status w SET kind = '{kind}', name = {name} "
                "FROM (SELECT DISTINCT ON (correlation_id) correlation_id, payload FROM events "
                f"WHERE type = '{type_}' ORDER BY correlation_id, position) e "
                "WHERE e.correlation_id = w.correlation_id"
            )
        else:
            first = (
                f"SELECT {{}} FROM events e WHERE e.type = '{type_}' "
                "AND e.correlation_id = workflow_status.correlation_id ORDER BY e.position LIMIT 1"
            )
            name = f"substr(coalesce(json_extract(e.payload, '$.{key}'), json_extract(e.payload, '$.name')), 1, 255)"
            op.execute(
                f"UPDATE workflow_status SET kind = '{kind}', name = ({first.format(name)}) "
                f"WHERE EXISTS ({first.format('1')})"
            )


def downgrade() -> None:
    op.drop_index("ix_workflow_status_first_event_at", table_name="workflow_status")
    op.drop_index("ix_workflow_status_name_position", table_name="workflow_status")
    with op.batch_alter_table("workflow_status") as batch:
        batch.drop_column("name")
        batch.drop_column("kind")
