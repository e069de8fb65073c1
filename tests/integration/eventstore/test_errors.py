"""Contract: driver errors come out as event-store errors, transient ones as StoreUnavailable."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import text

from relaybus.eventstore import NewEvent, StoreConfig, StoreUnavailable, open_store
from tests.integration.eventstore.conftest import Database


def test_an_append_that_cannot_get_the_write_lock_raises_store_unavailable(db: Database) -> None:
    store = db.open(StoreConfig(sqlite_busy_timeout_s=0.2, lock_timeout_s=0.2))
    store.append([NewEvent(stream_id="s", type="t")])
    if db.file is not None:
        holder = sqlite3.connect(db.file, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
    else:
        blocker = db.open()
        connection = blocker.engine.connect()
        transaction = connection.begin()
        connection.execute(text("LOCK TABLE events IN EXCLUSIVE MODE"))
    try:
        with pytest.raises(StoreUnavailable):
            store.append([NewEvent(stream_id="s", type="t")])
        assert store.stream_version("s") == 1  # readers are not blocked
    finally:
        if db.file is not None:
            holder.rollback()
            holder.close()
        else:
            transaction.rollback()
            connection.close()
    assert store.append_one(NewEvent(stream_id="s", type="t")).version == 2


def test_an_unreachable_postgresql_raises_store_unavailable() -> None:
    store = open_store("postgresql://postgres@127.0.0.1:1/test")
    try:
        with pytest.raises(StoreUnavailable):
            store.read_all()
    finally:
        store.close()


def test_a_pooled_postgresql_connection_that_died_while_idle_is_replaced_before_use(
    pg_schema: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from relaybus.eventstore import _engine

    url, schema = pg_schema
    store = open_store(url, schema=schema, create=True)
    try:
        store.append([NewEvent(stream_id="s", type="t")])
        with store.engine.connect() as conn:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        killer = open_store(url, schema=schema)
        with killer.engine.begin() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        killer.close()
        monkeypatch.setattr(_engine, "PING_AFTER_IDLE_S", 0.0)  # as if it had sat idle past the threshold

        # A read takes the pooled one (appends keep a connection of their own: test_kept_writer).
        assert store.stream_version("s") == 1
        assert store.append([NewEvent(stream_id="s", type="t")])[0].version == 2
    finally:
        store.close()
