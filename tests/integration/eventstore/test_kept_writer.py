"""Contract: the write connection a store keeps between appends (eventstore._engine.ProcessLocalEngine) is
replaced when it died, given back when its thread ended, and never shared by a nested write."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import text

from relaybus.eventstore import EventStore, NewEvent, StoreUnavailable, open_store
from relaybus.eventstore._engine import MAX_KEPT_WRITERS
from tests.integration.eventstore.conftest import Database


def _kept_pid(store: EventStore) -> int:
    connection = store._engine._held.connection
    assert connection is not None, "the append kept no write connection"
    with connection.begin():
        return int(connection.exec_driver_sql("SELECT pg_backend_pid()").scalar())


def _store_whose_kept_connection_died(url: str, schema: str) -> tuple[EventStore, int]:
    """A store that appended once, and the pid of its kept connection's backend, now terminated."""
    store = open_store(url, schema=schema, create=True)
    store.append([NewEvent(stream_id="s", type="t")])
    pid = _kept_pid(store)
    killer = open_store(url, schema=schema)
    with killer.engine.begin() as conn:
        conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    killer.close()
    return store, pid


def test_a_kept_postgresql_write_connection_that_died_while_idle_is_replaced_before_use(
    pg_schema: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from relaybus.eventstore import _engine

    store, pid = _store_whose_kept_connection_died(*pg_schema)
    try:
        monkeypatch.setattr(_engine, "PING_AFTER_IDLE_S", 0.0)  # as if it had sat idle past the threshold

        assert store.append([NewEvent(stream_id="s", type="t")])[0].version == 2
        assert _kept_pid(store) != pid
    finally:
        store.close()


def test_a_kept_write_connection_that_died_mid_append_is_given_back_and_the_next_append_works(
    pg_schema: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from relaybus.eventstore import _engine

    monkeypatch.setattr(_engine, "PING_AFTER_IDLE_S", 3600.0)  # not pinged, however slow the machine
    store, _pid = _store_whose_kept_connection_died(*pg_schema)
    try:
        with pytest.raises(StoreUnavailable):  # not pinged: it fails its statement
            store.append([NewEvent(stream_id="s", type="t")])
        assert store._engine._held.connection is None
        assert store.append([NewEvent(stream_id="s", type="t")])[0].version == 2
    finally:
        store.close()


def test_writers_on_ended_threads_give_their_connections_back(db: Database) -> None:
    store = db.open()

    def append_once(n: int) -> None:
        store.append([NewEvent(stream_id=f"s{n}", type="t")])

    for n in range(MAX_KEPT_WRITERS + 3):  # more threads than connections kept: each ends before the next
        thread = threading.Thread(target=append_once, args=(n,))
        thread.start()
        thread.join(timeout=30)
        assert not thread.is_alive()
    kept = store._engine._all_held
    assert len(kept) <= 1  # the last thread's, until a writer finds it ended
    assert all(s.version == 1 for n in range(MAX_KEPT_WRITERS + 3) for s in store.read_stream(f"s{n}"))
    append_once(99)  # this thread's write drops the ended thread's connection
    assert [t for t, _ in store._engine._all_held] == [threading.current_thread()]


def test_more_live_writer_threads_than_kept_connections_all_append(db: Database) -> None:
    store = db.open()
    go = threading.Barrier(MAX_KEPT_WRITERS + 2, timeout=30)
    errors: list[BaseException] = []

    def append_twice(n: int) -> None:
        try:
            go.wait()
            for _ in range(2):
                store.append([NewEvent(stream_id=f"s{n}", type="t")])
            go.wait()  # every thread alive until all wrote
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=append_twice, args=(n,)) for n in range(MAX_KEPT_WRITERS + 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert len(store._engine._all_held) <= MAX_KEPT_WRITERS
    assert all(store.stream_version(f"s{n}") == 2 for n in range(MAX_KEPT_WRITERS + 2))
