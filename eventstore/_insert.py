"""The append's statements, at the driver level: the lock, heads and positions, then the rows.

Going below SQLAlchemy Core here is deliberate: Core's per-value bind processing and its
multi-row ``INSERT ... RETURNING`` (which psycopg re-parses for every batch) cost more than the
database does. Positions are allocated up front instead of returned: the appender holds the write
lock (``BEGIN IMMEDIATE`` / ``LOCK TABLE``), so nobody else can take positions meanwhile, and they
follow the last stored one, without gaps.

On PostgreSQL the lock, the heads the writer does not know and the positions are sent in one
psycopg pipeline: one round trip, as eventsourcing's recorder pipelines its lock and insert.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from itertools import chain, islice
from typing import Any, NamedTuple

from psycopg.pq import TransactionStatus
from sqlalchemy import JSON, BigInteger, Connection, Integer, String
from sqlalchemy import exc as sa_exc

from relaybus.eventstore._heads import Head, sqlite_heads
from relaybus.eventstore.schema import UTCDateTime, events

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
    "key_id",
)


_SQLITE_INSERT = f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})"
# Full chunks of a batch go in multi-row INSERTs of this many rows (one statement text, prepared once per
# connection): against ``executemany`` of one row at a time, SQLite's step/reset and the driver's per-row loop are
# paid once per chunk. Raw 500-row transactions into this table, same run: 14.4 -> 12.3 us a row of process CPU.
_SQLITE_ROWS = 100
_SQLITE_INSERT_MANY = f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES " + ", ".join(
    [f"({', '.join('?' for _ in COLUMNS)})"] * _SQLITE_ROWS
)
_POSTGRES_COPY = f"COPY events ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)"


def _binary_type(name: str) -> str:
    """The PostgreSQL type whose binary form a column's values are sent in (from :mod:`eventstore.schema`)."""
    kind = events.c[name].type
    if isinstance(kind, JSON):
        return "text"  # json's binary form is its text (json_recv): the canonical JSON, sent as it is
    if isinstance(kind, UTCDateTime):
        return "timestamptz"
    if isinstance(kind, BigInteger):  # before Integer: a subclass of it
        return "int8"
    if isinstance(kind, Integer):
        return "int4"
    if isinstance(kind, String):
        return "varchar"
    raise AssertionError(f"no binary COPY type for events.{name} ({kind!r})")


_COPY_TYPES = [_binary_type(name) for name in COLUMNS]
"""Binary COPY: ints and times go as they are held, not printed here and parsed by the server."""
_POSTGRES_INSERT = f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ({', '.join('%s' for _ in COLUMNS)})"
SMALL_BATCH = 8
"""Up to this many rows, PostgreSQL gets pipelined INSERTs (one round trip) rather than COPY (two)."""


def insert_rows(
    conn: Connection,
    rows: Iterable[tuple[Any, ...]],
    count: int,
    *,
    commit: bool = False,
    lock: bool = False,
    prepare: bool = False,
) -> None:
    """Write the ``count`` ``rows`` (values in :data:`COLUMNS` order) in the connection's transaction;
    ``rows`` may make each row as it is taken (it is iterated once, as the driver sends).

    ``commit``: the rows are the transaction's last statement, and it is committed here. On PostgreSQL a small
    batch's ``COMMIT`` then goes in the INSERTs' pipeline, one round trip instead of two (as eventsourcing's
    recorder does); SQLAlchemy's commit at the end of the block finds the transaction done and sends nothing.
    Elsewhere the caller's commit does it, as without.

    PostgreSQL: binary ``COPY`` (times must be aware), the fastest way in, on the same connection and
    transaction as the rest of the append, streamed: psycopg sends the data in 32 KB chunks as rows
    are written, and the server inserts them while the next rows are made. A small batch
    (:data:`SMALL_BATCH`), pipelined INSERTs, which take one round trip where COPY takes two. SQLite:
    multi-row INSERTs of :data:`_SQLITE_ROWS` rows, the rest by the sqlite3 module's ``executemany``.

    ``lock`` (PostgreSQL): the events lock is taken first, in the same pipeline for a small batch. ``prepare``
    (PostgreSQL): the statements are prepared once per connection (:data:`PREPARE_NOTE`).
    """
    if conn.dialect.name == "postgresql":
        driver = conn.connection.driver_connection
        assert driver is not None
        if count <= SMALL_BATCH:
            with driver_errors(conn, _POSTGRES_INSERT), pipeline(conn, driver), driver.cursor() as cursor:
                with preparing(driver, prepare):
                    if lock:
                        cursor.execute(_PG_LOCK)
                    cursor.executemany(_POSTGRES_INSERT, list(rows))
                if commit:
                    driver.commit()  # queued in the pipeline: sent and answered with the INSERTs
            return
        if lock:
            with driver_errors(conn, _PG_LOCK), preparing(driver, prepare):
                driver.execute(_PG_LOCK)  # a COPY cannot be pipelined: a round trip of its own
        with driver_errors(conn, _POSTGRES_COPY), driver.cursor() as cursor, cursor.copy(_POSTGRES_COPY) as copy:
            copy.set_types(_COPY_TYPES)
            write_row = copy.write_row
            for row in rows:
                write_row(row)
    else:
        driver = conn.connection.driver_connection
        assert driver is not None
        rows = iter(rows)
        chunks, rest = divmod(count, _sqlite_rows_per_statement(driver))
        if chunks:
            with driver_errors(conn, _SQLITE_INSERT_MANY):
                for _ in range(chunks):
                    driver.execute(_SQLITE_INSERT_MANY, list(chain.from_iterable(islice(rows, _SQLITE_ROWS))))
        if rest:
            with driver_errors(conn, _SQLITE_INSERT):
                driver.executemany(_SQLITE_INSERT, rows)


def _sqlite_rows_per_statement(driver: Any) -> int:
    """:data:`_SQLITE_ROWS`, or more than any batch if this SQLite takes fewer parameters a statement (before 3.32:
    999), so that ``executemany`` writes every row."""
    limit = driver.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    return _SQLITE_ROWS if limit >= _SQLITE_ROWS * len(COLUMNS) else 1 << 62


@contextmanager
def preparing(driver: Any, prepare: bool) -> Iterator[None]:
    """With ``prepare``, psycopg prepares the statements run inside on first use (once per connection), and runs them
    prepared after. Its ``prepare=True`` alone does nothing here: the connections have ``prepare_threshold=None``
    (:mod:`_engine`), which psycopg reads as "never", whatever a call asks."""
    if not prepare:
        yield
        return
    threshold = driver.prepare_threshold
    driver.prepare_threshold = 0
    try:
        yield
    finally:
        driver.prepare_threshold = threshold


@contextmanager
def autocommit(conn: Connection, driver: Any) -> Iterator[None]:
    """The driver connection in autocommit for one statement, then back. psycopg refuses to turn it back on a
    connection that is not idle: one left mid-statement (an exception raised inside its wait, a time limit) or
    broken. Such a connection is abandoned (:func:`abandon`), never handed back to the pool in autocommit, where the
    next transaction would commit statement by statement; the statement's own error, if any, is what is raised."""
    driver.autocommit = True
    try:
        yield
    except BaseException:
        _back(conn, driver, raising=False)
        raise
    _back(conn, driver, raising=True)


def _back(conn: Connection, driver: Any, *, raising: bool) -> None:
    try:
        driver.autocommit = False
    except Exception:
        abandon(conn)
        if raising:
            raise


#: How long :func:`abandon` waits for the server to take a cancel request: bounded, as it runs after a time limit.
CANCEL_TIMEOUT_S = 1.0


def interrupted_mid_command(conn: Connection, error: BaseException) -> bool:
    """Whether ``error``, raised inside the driver's wait, left ``conn`` mid-command: not the driver's own error
    (a time limit, a signal), on a PostgreSQL connection that still has a statement running."""
    if conn.dialect.name != "postgresql" or conn.invalidated or isinstance(error, conn.dialect.loaded_dbapi.Error):
        return False
    driver = conn.connection.driver_connection
    return driver is not None and not driver.closed and driver.info.transaction_status == TransactionStatus.ACTIVE


def abandon(conn: Connection) -> None:
    """Give up a connection left mid-command: cancel its statement on the server (a wait for the events lock would
    otherwise go on there, up to the lock timeout, and the statements pipelined after it would then run), then
    invalidate it, so that no one waits for its answer and the pool never hands it out again."""
    driver = conn.connection.driver_connection
    if driver is not None:
        with suppress(Exception):
            driver.cancel_safe(timeout=CANCEL_TIMEOUT_S)
    conn.invalidate()


@contextmanager
def abandoned_if_interrupted(conn: Connection) -> Iterator[None]:
    """An exception raised inside the driver's wait (a time limit, a signal) goes on at once, as itself.

    It leaves a PostgreSQL connection mid-command. psycopg's pipeline exit would wait for every result first (for
    a statement waiting for the events lock, up to the lock timeout, long after a soft time limit fired), and the
    transaction's rollback would fail ("another command is already in progress"), which SQLAlchemy would raise
    instead, as if the store were away. Such a connection is abandoned (:func:`abandon`) before either runs."""
    try:
        yield
    except BaseException as error:
        if interrupted_mid_command(conn, error):
            abandon(conn)
        raise


@contextmanager
def pipeline(conn: Connection, driver: Any) -> Iterator[None]:
    """psycopg's pipeline, abandoned if interrupted (:func:`abandoned_if_interrupted`)."""
    with driver.pipeline(), abandoned_if_interrupted(conn):
        yield


@contextmanager
def driver_errors(conn: Connection, statement: str) -> Iterator[None]:
    """Driver errors raised as SQLAlchemy would have wrapped them (IntegrityError...), for translate()."""
    error_class = conn.dialect.loaded_dbapi.Error
    try:
        yield
    except error_class as error:
        raise sa_exc.DBAPIError.instance(statement, None, error, error_class) from error


class _QuietAbortedPipeline(logging.Filter):
    """psycopg logs a warning when a pipeline ends while the error raised inside it propagates ("error ignored
    terminating ...: pipeline aborted"). Here that error is a stale head meeting the unique (stream, version)
    key, which the append retries from the log: expected, handled, and no reason for a warning in every
    worker's log. Anything else psycopg says is kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == "error ignored terminating %r: %s" and "pipeline aborted" in record.getMessage())


logging.getLogger("psycopg").addFilter(_QuietAbortedPipeline())

# LOCK TABLE events IN EXCLUSIVE MODE, through a function owned by the table owner (migration 0006): the app role
# holds INSERT and SELECT only, which do not allow it (eventstore.roles).
_PG_LOCK = "SELECT eventstore_lock_events()"
# Positions are the ones after the last stored, counted from the log under the lock (max(position), one probe of the
# primary key), not drawn from the sequence: a rolled-back append draws from a sequence for good, and would leave a
# gap that verify could not tell from a deleted event. The sequence is no longer set along
# (eventstore_next_positions, migration 0006, which is setval of that max): setval cost the server 200-300 us of CPU
# an append, a third of a single append's, and nothing inserts without a position (one that did would meet the
# primary key, not reuse a position).


class Start(NamedTuple):
    """What an append learns once it holds the lock."""

    heads: dict[str, Head]
    """The heads of the streams asked for (absent streams left out)."""
    positions: list[int]
    """The positions drawn, increasing."""
    taken: set[str]
    """Of the event ids asked about, those already stored."""


_PG_TAKEN = (
    "SELECT 0, e.event_id, NULL::bigint, NULL::text FROM unnest(CAST(%s AS text[])) AS u(event_id) "
    "JOIN events AS e ON e.event_id = u.event_id"
)
_PG_HEADS = (
    "SELECT 1, s.stream_id, e.version::bigint, e.hash FROM unnest(CAST(%s AS text[])) AS s(stream_id) "
    "CROSS JOIN LATERAL (SELECT version, hash FROM events WHERE events.stream_id = s.stream_id "
    "ORDER BY version DESC LIMIT 1) AS e"
)
_PG_LAST = "SELECT 2, NULL, coalesce(max(position), 0)::bigint, NULL FROM events"
_PG_STARTS = {
    (look_up, heads): " UNION ALL ".join(
        part for part, wanted in ((_PG_TAKEN, look_up), (_PG_HEADS, heads), (_PG_LAST, True)) if wanted
    )
    for look_up in (False, True)
    for heads in (False, True)
}
"""After the lock, in one statement: the ids already stored (0: one index probe per id), the heads asked for (1:
one index probe per stream for its last event) and the last position stored (2), the parts not needed left out (an
append whose heads are remembered sends the last part alone; each variant is prepared once, PREPARE_NOTE). Two
statements in a psycopg pipeline cost the client less CPU than four (its non-blocking send and fetch loop runs per
statement):
262-275 against 310-330 us per append measured alone, in the same single round trip (on a loaded machine each round
trip waits for the server to be scheduled)."""
_SQLITE_TAKEN = "SELECT event_id FROM events WHERE event_id IN (SELECT value FROM json_each(?))"
_SQLITE_LAST_POSITION = "SELECT seq FROM sqlite_sequence WHERE name = 'events'"
"""AUTOINCREMENT: sqlite_sequence holds the largest position ever used, deleted rows included."""


PREPARE_NOTE = """PostgreSQL parses and plans a statement sent unprepared at every run: for the append's statements
that was 12-26 % of the server's CPU per append (measured with both prepared: a no-op task's four records
0.715 -> 0.63 ms, a single event 0.38 -> 0.28-0.31 ms). The connections keep psycopg's automatic
preparing off (``prepare_threshold=None``, :mod:`_engine`); the append prepares its own few statements, whose
generic plans are index probes whatever the log's size (the start statement probes ids through ``unnest``, not
``= ANY``, whose generic plan is a bitmap scan). Behind a pooler that does not keep prepared statements across
transactions (PgBouncer in transaction mode before 1.21), turn it off: ``StoreConfig(postgres_prepare=False)``,
``RELAYBUS_EVENTSTORE_PREPARE=false``. A store that meets such a pooler with it on turns it off by itself at the
first statement the server does not have (or has twice), retries that append, and logs a warning
(``Appender.unprepared_if_lost``)."""


def start_append(
    conn: Connection, unknown: set[str], count: int, *, look_up: set[str] | None = None, prepare: bool = False
) -> Start:
    """In the caller's write transaction: take the events lock, read the heads of the ``unknown``
    streams, look up which of the ``look_up`` event ids are stored, and draw ``count`` positions.

    PostgreSQL: the events table is locked in EXCLUSIVE mode (reads go on), so positions are
    handed out in commit order: a follower that has read past position n never sees a later
    commit appear below n. The lock, then one statement for the rest (:data:`_PG_STARTS`). SQLite: the
    ``BEGIN IMMEDIATE`` of the write transaction is the lock. Positions follow the last one stored
    (counted under the lock, so a rollback leaves no gap): the log's positions have no gaps, which
    is what lets verify report one (:mod:`eventstore.integrity`). Positions drawn and not used (ids
    found stored) are simply not written. ``prepare`` (PostgreSQL): see :data:`PREPARE_NOTE`.
    """
    driver = conn.connection.driver_connection
    assert driver is not None
    if conn.dialect.name != "postgresql":
        return _sqlite_start(conn, driver, unknown, count, look_up)
    with driver_errors(conn, _PG_LOCK), preparing(driver, prepare):
        with pipeline(conn, driver):  # one round trip; the lock its own statement, so the next one reads under it
            driver.execute(_PG_LOCK)
            arguments = [sorted(ids) for ids in (look_up, unknown) if ids]
            found = driver.execute(_PG_STARTS[bool(look_up), bool(unknown)], arguments)
        rows = found.fetchall()
    taken: set[str] = set()
    heads_read: dict[str, Head] = {}
    last = None
    for kind, key, number, hash_ in rows:
        if kind == 0:
            taken.add(key)
        elif kind == 1:
            heads_read[key] = (int(number), hash_)
        else:
            last = int(number) + count
    assert last is not None
    return Start(heads_read, list(range(last - count + 1, last + 1)), taken)


def _sqlite_start(conn: Connection, driver: Any, unknown: set[str], count: int, look_up: set[str] | None) -> Start:
    """:func:`start_append` on SQLite, at the driver level: three fixed statements the sqlite3 module keeps
    prepared. Through SQLAlchemy Core (an expanding ``IN`` compiled per call, an execution context and a
    result object per statement) they cost a recorded task more CPU than SQLite's own work on its append."""
    with driver_errors(conn, _SQLITE_TAKEN):
        taken = {row[0] for row in driver.execute(_SQLITE_TAKEN, (json.dumps(sorted(look_up)),))} if look_up else set()
        heads = sqlite_heads(driver, unknown)
        last = driver.execute(_SQLITE_LAST_POSITION).fetchone()
    start = int(last[0] if last and last[0] is not None else 0) + 1
    return Start(heads, list(range(start, start + count)), taken)


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
