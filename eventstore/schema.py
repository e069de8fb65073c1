"""The tables, as SQLAlchemy Core metadata.

The migrations in :mod:`eventstore.migrations` create exactly this (a test compares them); they, not
``metadata.create_all``, are how a database gets its schema, because they also install the
append-only triggers.

``events``: one row per event. ``position`` is the global order (followers read
``position > n``), without gaps since 0005 (:mod:`eventstore._insert`);
``(stream_id, version)`` is unique, which is the optimistic-concurrency
guarantee; ``event_id`` is unique, which makes recording idempotent.

``payloads`` (migration 0007): large values stored once by reference (:mod:`eventstore.payloads`), keyed
by the SHA-256 of their canonical JSON, which is the text kept in ``body``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.types import TypeDecorator

EVENTS = "events"
WORKFLOW_STATUS = "workflow_status"
PROJECTION_TRACKING = "projection_tracking"
PAYLOADS = "payloads"
VERSION_TABLE = "eventstore_alembic_version"
APPROVALS = "approvals"

APPEND_ONLY_MESSAGE = "eventstore: events are append-only"
"""Raised by the database triggers; the store recognises it to raise AppendOnlyViolation."""


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime, microseconds kept, on every database.

    PostgreSQL stores ``timestamptz``; SQLite stores the naive UTC time as fixed-width text,
    which sorts and compares correctly.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        if dialect.name == "sqlite":
            return value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


_ID = 255
# BIGINT on PostgreSQL; on SQLite an INTEGER PRIMARY KEY is the rowid, and AUTOINCREMENT keeps a
# position from ever being handed out twice.
_Position = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()

events = Table(
    EVENTS,
    metadata,
    Column("position", _Position, primary_key=True, autoincrement=True),
    Column("event_id", String(_ID), nullable=False),
    Column("stream_id", String(_ID), nullable=False),
    Column("version", Integer, nullable=False),
    Column("type", String(_ID), nullable=False),
    Column("schema_version", Integer, nullable=False),
    Column("correlation_id", String(_ID), nullable=False),
    Column("causation_id", String(_ID), nullable=True),
    Column("occurred_at", UTCDateTime, nullable=False),
    Column("recorded_at", UTCDateTime, nullable=False),
    Column("task_id", String(_ID), nullable=True),
    Column("agent", String(_ID), nullable=True),
    Column("queue", String(_ID), nullable=True),
    Column("priority", Integer, nullable=True),
    Column("attempt", Integer, nullable=True),
    Column("worker_host", String(_ID), nullable=True),
    Column("payload", JSON, nullable=False),
    Column("metadata", JSON, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("prev_hash", String(64), nullable=True),
    # (migration 0005) which chain key linked this event: NULL before 0005, "sha256" for an unkeyed link.
    Column("key_id", String(32), nullable=True),
    UniqueConstraint("event_id", name="uq_events_event_id"),
    UniqueConstraint("stream_id", "version", name="uq_events_stream_version"),
    # (migration 0003) "has this correlation an event of this type" is one probe; a timeline sorts
    # its few dozen events. The type index carries the time, so a type from a time on is read
    # without visiting rows.
    Index("ix_events_correlation_type_position", "correlation_id", "type", "position"),
    Index("ix_events_type_position_time", "type", "position", "occurred_at"),
    Index("ix_events_agent_occurred_at", "agent", "occurred_at"),
    Index("ix_events_task_id", "task_id"),
    # (migration 0004) a type from a time on is found in the index, not by visiting every row in range.
    Index("ix_events_occurred_at_type", "occurred_at", "type"),
    sqlite_autoincrement=True,
)

workflow_status = Table(
    WORKFLOW_STATUS,
    metadata,
    Column("correlation_id", String(_ID), primary_key=True),
    Column("status", String(32), nullable=False),
    Column("declared_status", String(32), nullable=True),
    Column("first_event_at", UTCDateTime, nullable=False),
    Column("last_event_at", UTCDateTime, nullable=False),
    Column("tasks_succeeded", Integer, nullable=False),
    Column("tasks_failed", Integer, nullable=False),
    Column("task_status", JSON, nullable=False),
    Column("last_position", BigInteger, nullable=False),
    # (migration 0009) what opened it: "pipeline" (pipeline.started) or "saga" (saga.started), NULL for
    # loose tasks; its declared name; the console filters on both and on when it started.
    Column("kind", String(16), nullable=True),
    Column("name", String(_ID), nullable=True),
    # The list reads the most recently active first, overall or per status (migration 0002), per name
    # (0009), and by start time (0009), a name's by start time (0010).
    Index("ix_workflow_status_status_position", "status", "last_position"),
    Index("ix_workflow_status_last_position", "last_position"),
    Index("ix_workflow_status_name_position", "name", "last_position"),
    Index("ix_workflow_status_first_event_at", "first_event_at"),
    Index("ix_workflow_status_name_started", "name", "first_event_at"),
)

projection_tracking = Table(
    PROJECTION_TRACKING,
    metadata,
    Column("name", String(_ID), primary_key=True),
    Column("position", BigInteger, nullable=False),
)

payloads = Table(
    PAYLOADS,
    metadata,
    # The SHA-256 (hex) of ``body``: a reference names it, and verify recomputes it.
    Column("digest", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("body", Text, nullable=False),
    Column("stored_at", UTCDateTime, nullable=False),
    PrimaryKeyConstraint("digest", name="pk_payloads"),
)

# (migration 0008) a person's approval a workflow waits for: one row per request, decided once by a
# conditional UPDATE (status 'pending' -> 'approved' | 'rejected' | 'expired'); the event log records
# every request and decision besides (eventstore.approvals).
approvals = Table(
    APPROVALS,
    metadata,
    Column("id", String(_ID), primary_key=True),
    Column("workflow", String(_ID), nullable=False),
    Column("workflow_kind", String(32), nullable=False),
    Column("step", String(_ID), nullable=False),
    Column("subject", JSON, nullable=False),
    Column("approvers", JSON, nullable=False),
    Column("requested_at", UTCDateTime, nullable=False),
    Column("deadline", UTCDateTime, nullable=False),
    Column("status", String(16), nullable=False),
    Column("decided_by", String(_ID), nullable=True),
    Column("decided_at", UTCDateTime, nullable=True),
    Column("reason", Text, nullable=True),
    Column("resume", JSON, nullable=False),
    Column("requested_event_id", String(_ID), nullable=False),
    Index("ix_approvals_status_deadline", "status", "deadline"),
    Index("ix_approvals_workflow", "workflow"),
)
