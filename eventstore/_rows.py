"""Reading rows of the events table back as :class:`~eventstore.models.RecordedEvent`.

Replays and rebuilds read every event, so this path skips SQLAlchemy's per-value result
processing: on SQLite, JSON and times are selected as text and decoded here (``fromisoformat`` is
much faster than the generic DATETIME parser); psycopg already returns parsed JSON and, with the
session time zone set to UTC, UTC datetimes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, DateTime, Row, Select, String, select, type_coerce

from relaybus.eventstore._gcpause import gc_paused
from relaybus.eventstore._insert import driver_errors
from relaybus.eventstore.models import RecordedEvent
from relaybus.eventstore.schema import events

_NAMES = tuple(c.name for c in events.c)
_FIELDS = frozenset(RecordedEvent.model_fields)
assert set(_NAMES) == _FIELDS, "the events table and RecordedEvent must have the same fields"
_JSON = ("payload", "metadata")
_TIMES = ("occurred_at", "recorded_at")

_set = object.__setattr__
_decoder = json.JSONDecoder()
_scan: Callable[[str, int], tuple[Any, int]] = _decoder.scan_once  # type: ignore[attr-defined]  # the C scanner


def decode_json(text: str | bytes) -> Any:
    """Stored JSON, decoded by the C scanner alone: the stored text is canonical JSON, with no
    whitespace around it for ``decode`` to strip (two regular-expression matches per value, a third
    of the cost). Any other text goes through the full decoder. psycopg hands over UTF-8 bytes."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    try:
        value, end = _scan(text, 0)
    except StopIteration:
        return _decoder.decode(text)
    return value if end == len(text) else _decoder.decode(text)


def recorded(values: dict[str, Any]) -> RecordedEvent:
    """A RecordedEvent from trusted values holding every field (rows we wrote, read back).

    What ``model_construct`` does, minus its per-field bookkeeping, which costs more than reading
    the row.
    """
    event = RecordedEvent.__new__(RecordedEvent)
    _set(event, "__dict__", values)
    _set(event, "__pydantic_fields_set__", set(_FIELDS))
    _set(event, "__pydantic_extra__", None)
    _set(event, "__pydantic_private__", None)
    return event


def _raw_columns() -> tuple[ColumnElement[Any], ...]:
    return tuple(type_coerce(c, String()).label(c.name) if c.name in _JSON or c.name in _TIMES else c for c in events.c)


_SQLITE_COLUMNS = _raw_columns()
# PostgreSQL: the times as psycopg reads them (UTC, the session time zone), without UTCDateTime's
# per-value processing; _from_postgresql checks the zone.
_POSTGRES_COLUMNS = tuple(
    type_coerce(c, DateTime(timezone=True)).label(c.name) if c.name in _TIMES else c for c in events.c
)


def select_events(dialect: str) -> Select[Any]:
    """``SELECT`` every column of ``events``, for :func:`to_event` / :func:`to_events`."""
    if dialect == "sqlite":
        return select(*_SQLITE_COLUMNS)
    return select(*_POSTGRES_COLUMNS)


def _sqlite_time(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _from_sqlite(row: Row[Any] | tuple[Any, ...]) -> RecordedEvent:
    values = dict(zip(_NAMES, row, strict=True))
    values["payload"] = decode_json(values["payload"])
    values["metadata"] = decode_json(values["metadata"])
    values["occurred_at"] = _sqlite_time(values["occurred_at"])
    values["recorded_at"] = _sqlite_time(values["recorded_at"])
    return recorded(values)


def _from_postgresql(row: Row[Any] | tuple[Any, ...]) -> RecordedEvent:
    values = dict(zip(_NAMES, row, strict=True))
    for name in _TIMES:  # already UTC (session time zone), unless a caller's URL changed it
        if values[name].tzinfo is not UTC:
            values[name] = values[name].astimezone(UTC)
    return recorded(values)


def converter(dialect: str) -> Callable[[Row[Any] | tuple[Any, ...]], RecordedEvent]:
    return _from_sqlite if dialect == "sqlite" else _from_postgresql


def to_events(rows: Iterable[Row[Any] | tuple[Any, ...]], dialect: str) -> list[RecordedEvent]:
    convert = converter(dialect)
    return [convert(row) for row in rows]


_PAGE = f"SELECT {', '.join(_NAMES)} FROM events WHERE position > {{0}} ORDER BY position LIMIT {{0}}"
_PAGES = {"postgresql": _PAGE.format("%s"), "sqlite": _PAGE.format("?")}
_STREAM = f"SELECT {', '.join(_NAMES)} FROM events WHERE stream_id = {{0}} AND version >= {{0}} ORDER BY version"
_STREAMS = {"postgresql": _STREAM.format("%s"), "sqlite": _STREAM.format("?")}


def read_page(conn: Connection, after_position: int, limit: int) -> list[RecordedEvent]:
    """Up to ``limit`` events after ``after_position``, in position order: a replay's page.

    At the driver level, every row fetched at once (``fetchall``: psycopg and sqlite3 build the
    tuples in C) and turned into a record here, without SQLAlchemy's statement compilation and
    per-row result objects, which cost a replay as much as decoding the payloads.
    """
    return _driver_read(conn, _PAGES, (after_position, limit))


def read_stream_page(conn: Connection, stream_id: str, from_version: int) -> list[RecordedEvent]:
    """The events of ``stream_id`` from ``from_version`` on, in version order, read as :func:`read_page` reads:
    a saga's every move and every step's fence reads its stream (building the statement through SQLAlchemy
    cost more than the read).

    The read is the transaction's only statement, and ends it: on PostgreSQL its ``BEGIN``, ``SELECT`` and
    ``COMMIT`` go in one pipeline, one round trip instead of three (SQLAlchemy's commit then sends nothing)."""
    return _driver_read(conn, _STREAMS, (stream_id, from_version), only=True)


def _driver_read(
    conn: Connection, sqls: dict[str, str], params: tuple[Any, ...], *, only: bool = False
) -> list[RecordedEvent]:
    dialect = conn.dialect.name
    sql = sqls[dialect] if dialect in sqls else sqls["postgresql"]
    driver = conn.connection.driver_connection
    assert driver is not None
    cursor = driver.cursor()
    try:
        with gc_paused():  # thousands of acyclic rows and records (see _gcpause)
            with driver_errors(conn, sql):
                if only and dialect == "postgresql":
                    with driver.pipeline():
                        cursor.execute(sql, params)
                        driver.commit()  # queued: sent and answered with the SELECT
                else:
                    cursor.execute(sql, params)
                rows = cursor.fetchall()
            return to_events(rows, dialect)
    finally:
        cursor.close()
