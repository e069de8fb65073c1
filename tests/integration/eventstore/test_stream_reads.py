"""A stream's read on PostgreSQL (a saga's fence and every move): one prepared statement in autocommit, its own
snapshot, and a connection that never goes back to the pool in autocommit, whatever interrupts the read."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest

from relaybus.eventstore import EventStore, NewEvent, StoreConfig, StoreUnavailable, open_store
from tests.integration.eventstore.conftest import Interrupted


def new(stream: str) -> NewEvent:
    return NewEvent(stream_id=stream, type="thing.happened")


def _read_connection_state(store: EventStore) -> tuple[set[str], bool]:
    """The prepared statements of the pooled connection reads use (one thread, so always the same one), and
    whether it is in autocommit."""
    with store._engine.read() as conn:
        driver = conn.connection.driver_connection
        names = {row[0] for row in conn.exec_driver_sql("SELECT statement FROM pg_prepared_statements")}
        return names, bool(driver.autocommit)


def _is_stream_read(statement: str) -> bool:
    return "stream_id = $1 AND version >= $2" in statement


@pytest.mark.parametrize("prepare", [True, False])
def test_a_stream_read_is_prepared_unless_told_not_to_and_leaves_no_autocommit(
    pg_schema: tuple[str, str], prepare: bool
) -> None:
    url, schema = pg_schema
    store = open_store(url, schema=schema, create=True, config=StoreConfig(postgres_prepare=prepare))
    try:
        store.append([new("s") for _ in range(5)])
        assert [e.version for e in store.read_stream("s")] == [1, 2, 3, 4, 5]
        assert [e.version for e in store.read_stream("s", from_version=4)] == [4, 5]
        statements, in_autocommit = _read_connection_state(store)
        assert any(_is_stream_read(s) for s in statements) is prepare, statements
        assert in_autocommit is False
        store.append([new("s")])  # a write after reads: still one transaction, the chain intact
        assert [e.version for e in store.read_stream("s", from_version=6)] == [6]
        assert store.verify().ok
    finally:
        store.close()


def test_a_read_interrupted_inside_its_wait_never_leaves_a_connection_in_autocommit(
    pg_schema: tuple[str, str], lock_holder: psycopg.Connection, interrupt_after: Callable[[float], None]
) -> None:
    """A time limit firing while the read waits (the events table locked against readers by another session): the
    connection is mid-statement, psycopg cannot turn autocommit off, and it must not go back to the pool so."""
    url, schema = pg_schema
    store = open_store(url, schema=schema, create=True)
    try:
        store.append([new("s"), new("s")])
        store.read_stream("s")  # prepared on the pooled connection
        lock_holder.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        interrupt_after(0.5)
        with pytest.raises((Interrupted, StoreUnavailable)) as raised:
            store.read_stream("s")
        interrupted = raised.value
        assert isinstance(interrupted, Interrupted) or isinstance(interrupted.__cause__, Interrupted), interrupted
        lock_holder.rollback()
        assert [e.version for e in store.read_stream("s")] == [1, 2]
        _, in_autocommit = _read_connection_state(store)
        assert in_autocommit is False
        with store._engine.read() as conn:  # whichever connection the pool gives: a transaction spans statements
            conn.exec_driver_sql("CREATE TEMP TABLE probe (x int)")
            assert conn.connection.driver_connection.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
            conn.rollback()
        store.append([new("s")])
        assert [e.version for e in store.read_stream("s", from_version=3)] == [3]
        assert store.verify().ok
    finally:
        store.close()


def test_a_read_whose_prepared_statement_the_server_lost_is_read_again_unprepared_with_one_warning(
    pg_schema: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """What a pooler in transaction mode does (PgBouncer before 1.21): the read reaches a server connection without
    the statement this connection prepared. Dropped here by name, behind psycopg's back."""
    url, schema = pg_schema
    store = open_store(url, schema=schema, create=True)
    try:
        store.append([new("s"), new("s")])
        store.read_stream("s")
        with store._engine.read() as conn:
            names = [row[0] for row in conn.exec_driver_sql("SELECT name, statement FROM pg_prepared_statements")
                     if _is_stream_read(row[1])]  # fmt: skip
            assert names, "the read prepared its statement"
            for name in names:
                conn.exec_driver_sql(f'DEALLOCATE "{name}"')
            conn.commit()
        with caplog.at_level("WARNING", logger="relaybus.eventstore._append"):
            assert [e.version for e in store.read_stream("s")] == [1, 2]
            assert [e.version for e in store.read_stream("s", from_version=2)] == [2]
            store.append([new("s")])
        warned = [r.getMessage() for r in caplog.records if "prepared" in r.getMessage()]
        assert len(warned) == 1 and "RELAYBUS_EVENTSTORE_PREPARE=false" in warned[0], warned
        assert not any(_is_stream_read(s) for s in _read_connection_state(store)[0])
        assert [e.version for e in store.read_stream("s")] == [1, 2, 3]
    finally:
        store.close()
