"""The event store's contract suite runs every test once per database: SQLite (a file) and PostgreSQL.

Each PostgreSQL test gets a schema of its own (``es_<hex>``), created empty and dropped after.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import Connection, create_engine, text

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
