"""The event store's contract suite runs every test once per database: SQLite (a file) and PostgreSQL.

Each PostgreSQL test gets a schema of its own (``es_<hex>``), created empty and dropped after.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Connection, create_engine, make_url, text

from relaybus.eventstore import EventStore, StoreConfig, open_store
from tests.services import require_postgres


@dataclass
class Database:
    """One test's database: open stores on it, reach it with raw SQL."""

    kind: str
    url: str
    schema: str | None = None
    file: Path | None = None
    stores: list[EventStore] = field(default_factory=list)

    def open(self, config: StoreConfig | None = None) -> EventStore:
        store = open_store(self.url, config=config, schema=self.schema, create=True)
        self.stores.append(store)
        return store

    def drop_append_only_triggers(self, conn: Connection) -> None:
        """What an intruder with database access would do first."""
        if self.kind == "postgresql":
            conn.execute(text("DROP TRIGGER events_append_only ON events"))
        else:
            conn.execute(text("DROP TRIGGER events_no_update"))
            conn.execute(text("DROP TRIGGER events_no_delete"))

    def close(self) -> None:
        for store in self.stores:
            store.close()


@pytest.fixture
def pg_schema() -> Iterator[tuple[str, str]]:
    """``(url, schema)``: a fresh, empty PostgreSQL schema, dropped after the test."""
    url = require_postgres()
    schema = f"es_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield url, schema
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


class Interrupted(Exception):
    """What :func:`interrupt_after`'s timer raises, as a time limit would, inside whatever the test is waiting on."""


@pytest.fixture
def lock_holder(pg_schema: tuple[str, str]) -> Iterator[psycopg.Connection]:
    """A session of its own on the test's schema, to hold locks the store must wait for; closed after the test."""
    url, schema = pg_schema
    holder = psycopg.connect(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False),
                             options=f"-csearch_path={schema}")  # fmt: skip
    try:
        yield holder
    finally:
        holder.close()


@pytest.fixture
def interrupt_after() -> Iterator[Callable[[float], None]]:
    """``interrupt_after(seconds)``: a timer that raises :class:`Interrupted` in the test's thread, as a task's soft
    time limit does in a worker; disarmed and its handler restored after the test."""
    previous = signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(Interrupted()))
    try:
        yield lambda seconds: signal.setitimer(signal.ITIMER_REAL, seconds)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        file = tmp_path / "events.sqlite"
        database = Database("sqlite", f"sqlite:///{file}", file=file)
    else:
        url, schema = request.getfixturevalue("pg_schema")
        database = Database("postgresql", url, schema=schema)
    try:
        yield database
    finally:
        database.close()


@pytest.fixture
def store(db: Database) -> EventStore:
    return db.open()
