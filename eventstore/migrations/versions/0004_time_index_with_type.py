"""The time index carries the type: "events of a type from a time on" is answered in the index.

``workflows list --stuck`` reads the pipelines opened in the last N days: PostgreSQL takes the time
index for the range and, with ``(occurred_at)`` alone, fetches every row in it to check the type
(a day of a 5 M-event log is 170,000 rows: 38 to 64 ms a page). ``(occurred_at, type)`` checks the
type on the index entries and fetches only the openers. Queries on the time alone use it as before.
Same number of indexes.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_events_occurred_at_type", "events", ["occurred_at", "type"])
    op.drop_index("ix_events_occurred_at", table_name="events")


def downgrade() -> None:
    op.create_index("ix_events_occurred_at", "events", ["occurred_at"])
    op.drop_index("ix_events_occurred_at_type", table_name="events")
