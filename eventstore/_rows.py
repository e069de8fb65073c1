"""Reading rows of the events table back as :class:`~eventstore.models.RecordedEvent`.

Replays and rebuilds read every event, so this path does no per-value work it can leave to the
database or the driver: JSON is selected as text (psycopg's own JSON loader is Python code around
``json.loads``) and decoded here by pydantic_core's parser; SQLite's times are selected with their
offset appended, which ``fromisoformat`` reads into UTC datetimes in one call; psycopg returns UTC
datetimes (the session time zone is UTC). Records are built without re-validating what the store
wrote, but a row that cannot be read back as an event raises :class:`MalformedEvent` naming it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from psycopg.pq import TransactionStatus
from pydantic import BaseModel, ValidationError
from pydantic_core import from_json
from sqlalchemy import ColumnElement, Connection, Row, Select, literal_column, select

from relaybus.eventstore._gcpause import gc_paused
from relaybus.eventstore._insert import autocommit, driver_errors, preparing
from relaybus.eventstore.errors import MalformedEvent
from relaybus.eventstore.models import RecordedEvent
from relaybus.eventstore.schema import events

_NAMES = tuple(c.name for c in events.c)
_FIELDS = frozenset(RecordedEvent.model_fields)
assert set(_NAMES) == _FIELDS, "the events table and RecordedEvent must have the same fields"
_JSON = ("payload", "metadata")
_TIMES = ("occurred_at", "recorded_at")
_POSITION, _EVENT_ID = _NAMES.index("position"), _NAMES.index("event_id")

_new = RecordedEvent.__new__
_set_dict = BaseModel.__dict__["__dict__"].__set__
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__
_decoder = json.JSONDecoder()
_UTC_SUFFIX = "+00:00"
_fromisoformat = datetime.fromisoformat


def decode_json(text: str | bytes) -> Any:
    """Stored JSON, decoded by pydantic_core's parser (jiter: 3-5 times json's C scanner on the
    store's payloads, the same values: ints of any size, floats read exactly). What it refuses and
    ``json`` reads (an escaped lone surrogate, nesting deeper than 200) goes to ``json``; text that
    neither reads raises ``ValueError``. psycopg hands over UTF-8 bytes."""
    try:
        return from_json(text)
    except ValueError:
        return _decoder.decode(text.decode("utf-8") if isinstance(text, bytes) else text)


def recorded(values: dict[str, Any]) -> RecordedEvent:
    """A RecordedEvent from trusted values holding every field (rows we wrote, read back).

    What ``model_construct`` does, minus its per-field bookkeeping, which costs more than reading
    the row; the slots are set through their descriptors (``object.__setattr__`` looks each one up).
    """
    event = _new(RecordedEvent)
    _set_dict(event, values)
    _set_fields_set(event, set(_FIELDS))
    _set_extra(event, None)
    _set_private(event, None)
    return event


def _column_sql(name: str, dialect: str) -> str:
    """How a driver-level read selects column ``name``: PostgreSQL's JSON as its stored text."""
    if dialect != "sqlite" and name in _JSON:  # not through psycopg's JSON loader
        return f"{name}::text"
    return name


def _columns(dialect: str) -> tuple[ColumnElement[Any], ...]:
    # JSON and times untyped, so SQLAlchemy does not process them: JSON is decoded here, SQLite's times
    # parsed here, and PostgreSQL's are as psycopg reads them (UTC, the session time zone), not via UTCDateTime.
    return tuple(
        literal_column(_column_sql(c.name, dialect)).label(c.name) if c.name in _JSON or c.name in _TIMES else c
        for c in events.c
    )


_COLUMNS = {"sqlite": _columns("sqlite"), "postgresql": _columns("postgresql")}


def select_events(dialect: str) -> Select[Any]:
    """``SELECT`` every column of ``events`` as :func:`to_events` reads them."""
    return select(*_COLUMNS["sqlite" if dialect == "sqlite" else "postgresql"]).select_from(events)


_ORDER = (
    "position", "event_id", "stream_id", "version", "type", "schema_version", "correlation_id", "causation_id",
    "occurred_at", "recorded_at", "task_id", "agent", "queue", "priority", "attempt", "worker_host",
    "payload", "metadata", "hash", "prev_hash", "key_id",
)  # fmt: skip
assert _NAMES == _ORDER, "the converters below unpack a row in the events table's column order"


def _decode_object(text: str | bytes) -> Any:
    """A stored payload or metadata, decoded (:func:`decode_json`, inlined for the common case): pydantic_core's
    parser, caching the keys only (a replay's values are mostly distinct: caching them costs more than it saves)."""
    try:
        return from_json(text, cache_strings="keys")
    except ValueError:
        return decode_json(text)


def _from_sqlite(row: Sequence[Any]) -> RecordedEvent:
    # The row unpacked into locals and the record's dict built as a display, not dict(zip(...)) and then
    # rewritten key by key: 1.2-1.7 us a row less, a sixth of a replay's time (see docs/performance.md).
    try:
        (
            position, event_id, stream_id, version, type_, schema_version, correlation_id, causation_id,
            occurred_at, recorded_at, task_id, agent, queue, priority, attempt, worker_host,
            payload, metadata, hash_, prev_hash, key_id,
        ) = row  # fmt: skip
        payload = _decode_object(payload)
        metadata = _decode_object(metadata)
        # the stored naive UTC text, with its offset: fromisoformat makes it a UTC datetime in one call
        occurred_at = _fromisoformat(occurred_at + _UTC_SUFFIX)
        recorded_at = _fromisoformat(recorded_at + _UTC_SUFFIX)
        if type(payload) is not dict or type(metadata) is not dict:
            raise TypeError("payload and metadata must be JSON objects")
        if not (  # SQLite keeps whatever it is given
            type(version) is int
            and type(schema_version) is int
            and (priority is None or type(priority) is int)
            and (attempt is None or type(attempt) is int)
        ):
            raise TypeError("an integer column holds something else")
    except (ValueError, TypeError) as error:
        raise malformed(row) from error
    return recorded(
        {
            "position": position, "event_id": event_id, "stream_id": stream_id, "version": version, "type": type_,
            "schema_version": schema_version, "correlation_id": correlation_id, "causation_id": causation_id,
            "occurred_at": occurred_at, "recorded_at": recorded_at, "task_id": task_id, "agent": agent,
            "queue": queue, "priority": priority, "attempt": attempt, "worker_host": worker_host,
            "payload": payload, "metadata": metadata, "hash": hash_, "prev_hash": prev_hash, "key_id": key_id,
        }
    )  # fmt: skip


def _from_postgresql(row: Sequence[Any]) -> RecordedEvent:
    try:
        (
            position, event_id, stream_id, version, type_, schema_version, correlation_id, causation_id,
            occurred_at, recorded_at, task_id, agent, queue, priority, attempt, worker_host,
            payload, metadata, hash_, prev_hash, key_id,
        ) = row  # fmt: skip
        payload = _decode_object(payload)
        metadata = _decode_object(metadata)
        # already UTC (session time zone), unless a caller's URL changed it
        if occurred_at.tzinfo is not UTC:
            occurred_at = occurred_at.astimezone(UTC)
        if recorded_at.tzinfo is not UTC:
            recorded_at = recorded_at.astimezone(UTC)
        if type(payload) is not dict or type(metadata) is not dict:
            raise TypeError("payload and metadata must be JSON objects")
    except (ValueError, TypeError, AttributeError) as error:
        raise malformed(row) from error
    return recorded(
        {
            "position": position, "event_id": event_id, "stream_id": stream_id, "version": version, "type": type_,
            "schema_version": schema_version, "correlation_id": correlation_id, "causation_id": causation_id,
            "occurred_at": occurred_at, "recorded_at": recorded_at, "task_id": task_id, "agent": agent,
            "queue": queue, "priority": priority, "attempt": attempt, "worker_host": worker_host,
            "payload": payload, "metadata": metadata, "hash": hash_, "prev_hash": prev_hash, "key_id": key_id,
        }
    )  # fmt: skip


def malformed(row: Sequence[Any]) -> MalformedEvent:
    """The error for a stored row that does not read as an event, naming its position, its id and the
    first column found wrong (the slow way: each column decoded, then the row validated)."""
    values = list(row)
    position = values[_POSITION] if len(values) > _POSITION else None
    event_id = values[_EVENT_ID] if len(values) > _EVENT_ID else None
    if len(values) != len(_NAMES):
        return MalformedEvent(position, event_id, None, f"{len(values)} columns, not {len(_NAMES)}")
    fields = dict(zip(_NAMES, values, strict=True))
    for name in (*_JSON, *_TIMES):
        try:
            if name in _JSON:
                fields[name] = decode_json(fields[name])
            elif isinstance(fields[name], str):
                fields[name] = _fromisoformat(fields[name] + _UTC_SUFFIX)
        except (ValueError, TypeError) as error:
            return MalformedEvent(position, event_id, name, str(error).splitlines()[0] or type(error).__name__)
    try:
        RecordedEvent.model_validate(fields)
    except ValidationError as error:
        first = error.errors(include_url=False, include_input=False)[0]
        column = str(first["loc"][0]) if first["loc"] else None
        return MalformedEvent(position, event_id, column, first["msg"])
    return MalformedEvent(position, event_id, None, "the row does not read as an event")


def converter(dialect: str) -> Callable[[Row[Any] | tuple[Any, ...]], RecordedEvent]:
    return _from_sqlite if dialect == "sqlite" else _from_postgresql


def to_events(rows: Iterable[Row[Any] | tuple[Any, ...]], dialect: str) -> list[RecordedEvent]:
    convert = converter(dialect)
    return [convert(row) for row in rows]


def _rows_sql(dialect: str, where: str) -> str:
    """A driver-level read's fixed SQL: the columns as :func:`select_events` reads them, ``where`` with
    ``{0}`` for each parameter's placeholder."""
    names = ", ".join(_column_sql(name, dialect) for name in _NAMES)
    return f"SELECT {names} FROM events WHERE {where.format('?' if dialect == 'sqlite' else '%s')}"


_PAGE = "position > {0} ORDER BY position LIMIT {0}"
_PAGES = {"postgresql": _rows_sql("postgresql", _PAGE), "sqlite": _rows_sql("sqlite", _PAGE)}
_STREAM = "stream_id = {0} AND version >= {0} ORDER BY version"
_STREAMS = {"postgresql": _rows_sql("postgresql", _STREAM), "sqlite": _rows_sql("sqlite", _STREAM)}


def page_rows(conn: Connection, after_position: int, limit: int) -> list[tuple[Any, ...]]:
    """The rows of up to ``limit`` events after ``after_position``, in position order, for :func:`converter`:
    a replay's page, at the driver level (see :func:`_fetch`)."""
    return _fetch(conn, _PAGES, (after_position, limit))


def read_page(conn: Connection, after_position: int, limit: int) -> list[RecordedEvent]:
    """Up to ``limit`` events after ``after_position``, in position order: a replay's page."""
    return _events(page_rows(conn, after_position, limit), conn.dialect.name)


def read_stream_page(
    conn: Connection, stream_id: str, from_version: int, *, prepare: bool = False
) -> list[RecordedEvent]:
    """The events of ``stream_id`` from ``from_version`` on, in version order, read as :func:`read_page` reads:
    a saga's every move and every step's fence reads its stream (building the statement through SQLAlchemy
    cost more than the read).

    The read is the transaction's only statement: on PostgreSQL it runs as its own, in autocommit (no ``BEGIN``,
    no ``COMMIT``, no pipeline: one statement is one snapshot), prepared once per connection with ``prepare``.
    A ``BEGIN``, ``SELECT`` and ``COMMIT`` pipelined took twice the client's CPU and three times the wall time of
    the prepared statement alone."""
    rows = _fetch(conn, _STREAMS, (stream_id, from_version), only=True, prepare=prepare)
    return _events(rows, conn.dialect.name)


def _events(rows: list[tuple[Any, ...]], dialect: str) -> list[RecordedEvent]:
    with gc_paused():  # thousands of acyclic records, kept (see _gcpause)
        return to_events(rows, dialect)


def _fetch(
    conn: Connection, sqls: dict[str, str], params: tuple[Any, ...], *, only: bool = False, prepare: bool = False
) -> list[tuple[Any, ...]]:
    """The rows of a fixed statement, every one fetched at once (``fetchall``: psycopg and sqlite3 build the
    tuples in C), without SQLAlchemy's statement compilation and per-row result objects, which cost a replay
    as much as decoding the payloads; psycopg reads them in binary (integers and times without parsing
    text). The collector is paused meanwhile: otherwise each 700 tuples start a collection (see _gcpause),
    as much time as the fetch itself. ``only`` and ``prepare``: see :func:`read_stream_page`."""
    dialect = conn.dialect.name
    sql = sqls["sqlite" if dialect == "sqlite" else "postgresql"]
    driver = conn.connection.driver_connection
    assert driver is not None
    cursor = driver.cursor() if dialect == "sqlite" else driver.cursor(binary=True)
    try:
        with gc_paused(), driver_errors(conn, sql):
            if only and dialect == "postgresql" and driver.info.transaction_status == TransactionStatus.IDLE:
                with preparing(driver, prepare), autocommit(conn, driver):  # SQLAlchemy's commit then sends nothing
                    cursor.execute(sql, params)
            else:
                cursor.execute(sql, params)
            rows: list[tuple[Any, ...]] = cursor.fetchall()
        return rows
    finally:
        cursor.close()
