"""The events indexes behind ``workflows list --stuck`` at millions of events (issue 14), none more than before.

Measured with ``bench/scale.py``: ``open_workflows`` reads the openers of one type from a time on
and, for each, whether its correlation has a closing event. ``(type, position)`` becomes
``(type, position, occurred_at)`` so the time is checked in the index, not in each row, and
``(correlation_id, position)`` becomes ``(correlation_id, type, position)`` so "has a closer" is
one probe instead of a walk through the correlation's events (a timeline sorts its few dozen events
by position instead, which costs nothing). At 2 M events on SQLite a page went from 176 ms to 9 ms.

Rebuilding the two indexes reads the log once each (seconds per million events).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_events_type_position_time", "events", ["type", "position", "occurred_at"])
    op.drop_index("ix_events_type_position", table_name="events")
    op.create_index("ix_events_correlation_type_position", "events", ["correlation_id", "type", "position"])
    op.drop_index("ix_events_correlation_position", table_name="events")


def downgrade() -> None:
    op.create_index("ix_events_correlation_position", "events", ["correlation_id", "position"])
    op.drop_index("ix_events_correlation_type_position", table_name="events")
    op.create_index("ix_events_type_position", "events", ["type", "position"])
    op.drop_index("ix_events_type_position_time", table_name="events")
