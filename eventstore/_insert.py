"""The append's INSERT, at the driver level: pre-serialised rows, in one driver call.

Going below SQLAlchemy Core here is deliberate: Core's per-value bind processing and its
multi-row ``INSERT ... RETURNING`` (which psycopg re-parses for every batch) cost more than the
database does. Positions are allocated up front instead of returned: the appender holds the write
lock (``BEGIN IMMEDIATE`` / ``LOCK TABLE``), so nobody else can take positions meanwhile.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy import exc as sa_exc

COLUMNS: tuple[str, ...] = (
    "position",
    "event_id",
    "stream_id",
    "version",
    "type",
    "schema_version",
    "correlation_id",
    "causation_id",
    "occurred_at",
    "recorded_at",
    "task_id",
    "agent",
    "queue",
    "priority",
    "attempt",
    "worker_host",
    "payload",
    "metadata",
    "hash",
    "prev_hash",
)


_SQLITE_INSERT = f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})"
_POSTGRES_COPY = f"COPY events ({', '.join(COLUMNS)}) FROM STDIN"


def insert_rows(conn: Connection, rows: list[tuple[Any, ...]]) -> None:
    """Write ``rows`` (values in :data:`COLUMNS` order) in the connection's transaction.

    PostgreSQL: ``COPY``, the fastest way in, on the same connection and transaction as the rest
    of the append. SQLite: the sqlite3 module's ``executemany`` of one prepared statement.
    """
    if conn.dialect.name == "postgresql":
        driver = conn.connection.driver_connection
        assert driver is not None
        error_class = conn.dialect.loaded_dbapi.Error
        try:
            with driver.cursor() as cursor, cursor.copy(_POSTGRES_COPY) as copy:
                for row in rows:
                    copy.write_row(row)
        except error_class as error:  # as SQLAlchemy would have wrapped it (IntegrityError...)
            raise sa_exc.DBAPIError.instance(_POSTGRES_COPY, None, error, error_class) from error
    else:
        conn.exec_driver_sql(_SQLITE_INSERT, rows)


def time_binder(dialect: str) -> Any:
    """How a UTC datetime is passed to the driver (matching what :class:`UTCDateTime` reads)."""
    if dialect == "postgresql":
        return _same
    return _sqlite_time


def _same(value: datetime) -> datetime:
    return value


def _sqlite_time(value: datetime) -> str:
    # SQLAlchemy's SQLite DATETIME storage format: naive UTC, fixed width, microseconds.
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def allocate_positions(conn: Connection, count: int) -> list[int]:
    """``count`` new, increasing positions (the caller holds the events write lock)."""
    if conn.dialect.name == "postgresql":
        # One statement, whatever the count: nobody else draws from the sequence while we hold
        # the lock, so nextval() .. nextval() + count - 1 are ours.
        last = conn.execute(
            text(
                "SELECT setval(seq, nextval(seq) + :n - 1) "
                "FROM (SELECT pg_get_serial_sequence('events', 'position') AS seq) AS s"
            ),
            {"n": count},
        ).scalar_one()
        return list(range(int(last) - count + 1, int(last) + 1))
    # AUTOINCREMENT: sqlite_sequence holds the largest position ever used, deleted rows included.
    last = conn.execute(text("SELECT seq FROM sqlite_sequence WHERE name = 'events'")).scalar()
    start = int(last or 0) + 1
    return list(range(start, start + count))
