"""Engines, per database and per process, and the one place driver errors are translated.

SQLite: WAL journal, a busy timeout, and transactions begun by us (``BEGIN IMMEDIATE`` for
writes) rather than by the sqlite3 module, so concurrent writers queue for the lock instead of
failing when a read transaction tries to upgrade.

PostgreSQL: ``postgresql://`` means psycopg 3; ``schema=`` puts that schema first on the
``search_path`` of every connection.

Stale connections: a pooled PostgreSQL connection is pinged before use only when it sat idle in
the pool for :data:`PING_AFTER_IDLE_S` or more (a server restart, an idle timeout or a killed
backend then costs no failed append); a connection handed back a moment ago is used as it is,
which saves a round trip per append (``pool_pre_ping`` would ping every time). A connection that
died in that moment fails its statement, which is translated to :class:`StoreUnavailable` (retried
by callers), and SQLAlchemy then recycles the pool. The connection the event store keeps for its
writes (:class:`ProcessLocalEngine`) is pinged the same way.

Fork safety: a Celery prefork child inherits its parent's pool; sharing those sockets between
processes corrupts both sides. :class:`ProcessLocalEngine` notices a new pid and drops the inherited
connections without closing them (closing would also close them for the parent).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url

from relaybus.eventstore._insert import abandoned_if_interrupted
from relaybus.eventstore._rows import decode_json
from relaybus.eventstore.errors import (
    AppendOnlyViolation,
    EventStoreError,
    SchemaError,
    StoreDiskError,
    StoreUnavailable,
    UnstorableEvent,
)
from relaybus.eventstore.models import StoreConfig
from relaybus.eventstore.schema import APPEND_ONLY_MESSAGE

_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_WRITE = "eventstore_write"

_json_dumps = functools.partial(json.dumps, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def normalize_url(url: str | URL) -> URL:
    """Parse ``url``; plain ``postgresql://`` (or ``postgres://``) becomes ``postgresql+psycopg://``."""
    parsed = make_url(url) if isinstance(url, str) else url
    if parsed.drivername in {"postgresql", "postgres"}:
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in {"sqlite", "postgresql"}:
        raise ValueError(f"unsupported event store database: {parsed.drivername!r} (sqlite or postgresql)")
    return parsed


def check_schema_name(schema: str) -> str:
    if not _SCHEMA_NAME.match(schema):
        raise ValueError(f"invalid schema name {schema!r}")
    return schema


def make_engine(url: str | URL, *, schema: str | None = None, config: StoreConfig | None = None) -> Engine:
    config = config or StoreConfig()
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, config)
    # lock_timeout bounds the wait for the events table lock (StoreUnavailable, retried by callers).
    # timezone=UTC: timestamps come back as UTC datetimes, nothing to convert when reading.
    options = [f"-clock_timeout={int(config.lock_timeout_s * 1000)}", "-ctimezone=UTC"]
    if schema is not None:
        options.append(f"-csearch_path={check_schema_name(schema)}")
    elif "options" in parsed.query:
        options.append(str(parsed.query["options"]))
    # prepare_threshold=None: psycopg would otherwise prepare a statement after five runs, and the
    # generic plan PostgreSQL then settles on for "event_id = ANY($1)" degrades as the table grows.
    connect_args: dict[str, Any] = {"connect_timeout": 10, "options": " ".join(options), "prepare_threshold": None}
    engine = create_engine(parsed, connect_args=connect_args, json_serializer=_json_dumps)
    _ping_when_idle(engine)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # psycopg decodes json columns with json.loads; the stored text is canonical JSON, which
        # the C scanner alone decodes (see _rows.decode_json).
        from psycopg.types.json import set_json_loads

        set_json_loads(decode_json, dbapi_connection)

    return engine


PING_AFTER_IDLE_S = 1.0


def _ping_when_idle(engine: Engine) -> None:
    """``pool_pre_ping``, for connections idle in the pool for :data:`PING_AFTER_IDLE_S` or more."""

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_S:
            return  # new, or handed back a moment ago
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except Exception as error:  # any failure means a dead connection
            raise sa_exc.DisconnectionError(str(error)) from error
        if not alive:
            raise sa_exc.DisconnectionError("ping failed")


def _set_wal(cursor: sqlite3.Cursor, wait_s: float) -> None:
    """``PRAGMA journal_mode = WAL``, waiting up to ``wait_s`` for a lock the busy timeout does not wait for.

    Processes opening a new (empty) file at once each switch it to WAL; the switch upgrades a read lock to
    a write lock, which SQLite refuses at once ("database is locked", the busy handler is not called, to
    avoid a deadlock) while another opener holds its own. Two workers, or ``relaybus db upgrade`` run twice,
    on a fresh embedded log met it in about one open in ten.
    """
    deadline = time.monotonic() + wait_s
    pause = 0.002
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


SQLITE_WAL_AUTOCHECKPOINT_PAGES = 10_000
"""A committing SQLite connection checkpoints the WAL into the database once it holds this many pages
(SQLite's default: 1,000, 4 MiB at 4 KiB pages); read when a connection opens, so it can be set before a
store is opened.

At 10,000 (about 40 MiB) the index pages an append rewrites are copied back, and the database file
synced, about a tenth as often. A/B on 2026-12-05 (``bench.eventstore_bench`` sizes, 2-core shared
machine, the two settings interleaved block by block in 4 rounds, both store orders; medians, events/s):
batch100 24,165 -> 28,636 (+18.5 %), batch500 24,545 -> 29,552 (+20.4 %), single 7,398 -> 8,042 (+8.7 %,
per round -8 to +11 %), replay 150,033 -> 149,150 (-0.6 %), rebuild and verify within 0.3 %. 100,000 events
in batches of 500 on a fresh log, timed up to and including ``close()`` (the last checkpoint), 4 runs each:
21,840 -> 24,503 (+12.2 %); a replay right after, with the WAL at 45.6 MiB (9.1 MiB at 1,000), 119,794 ->
122,705 (no loss). The cost is disk: the ``-wal`` file grows to about 45 MiB and keeps that size until
the last connection closes (SQLite reuses it rather than truncating it)."""


def _sqlite_engine(url: URL, config: StoreConfig) -> Engine:
    database = url.database or ""
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    busy_ms = int(config.sqlite_busy_timeout_s * 1000)
    engine = create_engine(
        url,
        connect_args={"timeout": config.sqlite_busy_timeout_s, "check_same_thread": False},
        json_serializer=_json_dumps,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves (see _on_begin)
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
            _set_wal(cursor, config.sqlite_busy_timeout_s)
            cursor.execute(f"PRAGMA synchronous = {config.sqlite_synchronous}")
            # SQLite's default page cache is 2 MiB: once a log's indexes outgrow it, every append
            # reads their pages back from the OS (a 1 M-event log appended at 0.57x the empty rate).
            cursor.execute(f"PRAGMA cache_size = -{config.sqlite_cache_mib * 1024}")
            cursor.execute(f"PRAGMA wal_autocheckpoint = {SQLITE_WAL_AUTOCHECKPOINT_PAGES}")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # A deferred transaction that reads and then writes cannot wait for the lock (SQLite
        # answers "database is locked" at once to avoid a deadlock); writers take it up front.
        immediate = connection.get_execution_options().get(_WRITE, False)
        statement = "BEGIN IMMEDIATE" if immediate else "BEGIN"
        # At the driver level: through exec_driver_sql the BEGIN cost an append more than SQLite's own
        # work. A driver error (a lock not granted in the busy timeout) is raised as SQLAlchemy's would be.
        driver = connection.connection.driver_connection
        assert driver is not None  # a live connection's
        try:
            driver.execute(statement)
        except sqlite3.Error as error:
            raise sa_exc.DBAPIError.instance(statement, None, error, sqlite3.Error) from error

    return engine


class _HeldWriter(threading.local):
    """A thread's write connection, kept checked out between writes (:meth:`ProcessLocalEngine.write`)."""

    connection: Connection | None = None
    last_used = 0.0
    busy = False


MAX_KEPT_WRITERS = 4
"""Write connections an engine keeps checked out at most (one per writing thread: a pool process's task thread
and its start-record flusher); further threads take one from the pool per write, leaving the pool room."""


class ProcessLocalEngine:
    """An engine that is disposed (without closing the parent's connections) after a fork.

    With ``keep_writers`` (the event store's), writes reuse one connection per thread (up to
    :data:`MAX_KEPT_WRITERS`), kept checked out from the pool between them: a recorded task appends once,
    and the pool's checkout and checkin (events, a reset on return) and a new ``Connection`` cost it
    about as much CPU as SQLite's commit. A kept connection is given back to the pool after any error in
    its transaction (the pool decides whether it is still good) and when its thread has ended, pinged
    before use after :data:`PING_AFTER_IDLE_S` idle on PostgreSQL (as pooled ones are), and dropped
    after a fork.
    """

    def __init__(self, engine: Engine, *, keep_writers: bool = False) -> None:
        self._engine = engine
        self._pid = os.getpid()
        self._keep = keep_writers
        self._held = _HeldWriter()
        self._all_held: list[tuple[threading.Thread, Connection]] = []  # every thread's, to close on dispose
        self._held_lock = threading.Lock()

    @property
    def dialect(self) -> str:
        return self._engine.dialect.name

    def get(self) -> Engine:
        pid = os.getpid()
        if pid != self._pid:
            self._engine.dispose(close=False)
            self._pid = pid
            self._held = _HeldWriter()  # the parent's (its sockets are the parent's: not closed here)
            self._all_held = []
        return self._engine

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection in a (deferred, on SQLite) transaction: one consistent snapshot."""
        with self.get().connect() as connection, connection.begin(), abandoned_if_interrupted(connection):
            yield connection

    @contextmanager
    def write(self, *, lock_events: bool = False) -> Iterator[Connection]:
        """A connection in a write transaction.

        SQLite: ``BEGIN IMMEDIATE`` (one writer at a time, others wait up to the busy timeout).
        PostgreSQL with ``lock_events``: the events table is locked in EXCLUSIVE mode (reads go on)
        so positions are handed out in commit order: a follower that has read past position n
        never sees a later commit appear below n.
        """
        engine = self.get()
        held = self._held
        # A write inside a write on this thread, or none kept (or as many kept as allowed): one from the pool.
        connection = None if held.busy or not self._keep else self._writer(engine, held)
        if connection is None:
            with engine.connect() as pooled:
                pooled.execution_options(**{_WRITE: True})
                with _transaction(pooled, lock_events):
                    yield pooled
            return
        held.busy = True
        try:
            with _transaction(connection, lock_events):
                yield connection
        except BaseException:
            self._release(held)  # back to the pool, which recycles it if it died
            raise
        finally:
            held.busy = False
            held.last_used = time.monotonic()

    def _writer(self, engine: Engine, held: _HeldWriter) -> Connection | None:
        """This thread's kept write connection (a new one from the pool if it has none); None when as many
        as :data:`MAX_KEPT_WRITERS` are kept for live threads."""
        connection = held.connection
        if connection is not None and connection.invalidated:
            self._release(held)
            connection = None
        if (
            connection is not None
            and engine.dialect.name == "postgresql"
            and time.monotonic() - held.last_used >= PING_AFTER_IDLE_S
        ):
            try:
                dbapi = connection.connection.dbapi_connection
                alive = dbapi is not None and engine.dialect.do_ping(dbapi)
            except Exception:  # any failure means a dead connection
                alive = False
            if not alive:
                connection.invalidate()
                self._release(held)
                connection = None
        if connection is None:
            with self._held_lock:
                ended = [c for thread, c in self._all_held if not thread.is_alive()]
                self._all_held = [(t, c) for t, c in self._all_held if t.is_alive()]
                if len(self._all_held) < MAX_KEPT_WRITERS:
                    connection = engine.connect()  # under the lock: the room is this thread's
                    self._all_held.append((threading.current_thread(), connection))
            for dropped in ended:
                _close(dropped)
            if connection is not None:
                connection.execution_options(**{_WRITE: True})
                held.connection = connection
        return connection

    def _release(self, held: _HeldWriter) -> None:
        connection, held.connection = held.connection, None
        if connection is None:
            return
        with self._held_lock:
            self._all_held = [(t, c) for t, c in self._all_held if c is not connection]
        _close(connection)

    def dispose(self) -> None:
        with self._held_lock:
            held, self._all_held = self._all_held, []
        for _thread, connection in held:
            _close(connection)
        self._held = _HeldWriter()
        self._engine.dispose()


@contextmanager
def _transaction(connection: Connection, lock_events: bool) -> Iterator[None]:
    with connection.begin(), abandoned_if_interrupted(connection):
        if lock_events and connection.dialect.name == "postgresql":
            connection.exec_driver_sql("SELECT eventstore_lock_events()")  # migration 0006
        yield


def _close(connection: Connection) -> None:
    """Give a kept connection back to its pool; one that cannot even be closed is dropped all the same."""
    with contextlib.suppress(Exception):
        connection.close()


# -- the error boundary ------------------------------------------------------------------------------

_PG_SCHEMA_STATES = {"42P01", "42703", "3F000", "42883"}  # undefined table / column / schema / function
_PG_TRANSIENT_STATES = {"40001", "40P01", "55P03", "57014", "57P01", "57P02", "57P03", "53300"}
_SQLITE_SCHEMA_MESSAGES = ("no such table", "no such column")
_PG_FULL_STATES = {"53100"}  # disk_full
_SQLITE_FULL_MESSAGES = ("database or disk is full", "disk I/O error")


def translate(error: sa_exc.SQLAlchemyError) -> EventStoreError:
    """The event-store error a driver or SQLAlchemy error means."""
    message = str(getattr(error, "orig", None) or error)
    if APPEND_ONLY_MESSAGE in message:
        return AppendOnlyViolation(message)
    sqlstate = getattr(getattr(error, "orig", None), "sqlstate", None) or ""
    if sqlstate in _PG_SCHEMA_STATES or any(m in message for m in _SQLITE_SCHEMA_MESSAGES):
        return SchemaError(f"{message.strip()} (run `relaybus db upgrade`)")
    if sqlstate in _PG_FULL_STATES or any(m in message for m in _SQLITE_FULL_MESSAGES):
        return StoreDiskError(message.strip())
    if sqlstate.startswith("22") or isinstance(error, sa_exc.DataError):
        return UnstorableEvent(message.strip())
    if (
        (
            isinstance(error, sa_exc.DBAPIError)
            and (error.connection_invalidated or isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError))
        )
        or sqlstate in _PG_TRANSIENT_STATES
        or sqlstate.startswith("08")
    ):
        return StoreUnavailable(message.strip())
    if isinstance(error, sa_exc.TimeoutError | sa_exc.DisconnectionError):
        return StoreUnavailable(message.strip())
    return EventStoreError(message.strip())


@contextmanager
def translate_errors() -> Iterator[None]:
    """The one boundary where SQLAlchemy and driver errors become event-store errors."""
    try:
        yield
    except sa_exc.SQLAlchemyError as error:
        raise translate(error) from error
