"""Contract: the heads a writer remembers are checked by the log, never trusted over it."""

from __future__ import annotations

import pytest

from relaybus.eventstore import ConcurrencyError, EventStore, NewEvent, StoreConfig, open_store
from relaybus.eventstore._insert import SMALL_BATCH
from tests.integration.eventstore.conftest import Database


def new(stream: str, type_: str = "thing.happened") -> NewEvent:
    return NewEvent(stream_id=stream, type=type_)


def test_two_writers_taking_turns_on_one_stream_keep_versions_and_the_chain(db: Database) -> None:
    a, b = db.open(), db.open()
    for i in range(6):
        writer = a if i % 2 == 0 else b  # each append finds the other writer's head stale in its cache
        writer.append([new("s"), new(f"other-{i}")])
    recorded = a.read_stream("s")
    assert [e.version for e in recorded] == [1, 2, 3, 4, 5, 6]
    assert [e.prev_hash for e in recorded[1:]] == [e.hash for e in recorded[:-1]]
    assert a.verify().ok


def test_append_new_with_a_stale_head_reads_the_log_and_keeps_the_chain(db: Database) -> None:
    a, b = db.open(), db.open()
    a.append([new("s")])
    b.append([new("s")])
    assert a.append_new([new("s"), new("s")]) == 2  # a remembers version 1; the log is at 2
    assert [e.version for e in a.read_stream("s")] == [1, 2, 3, 4]
    assert a.verify().ok


def test_a_stale_head_is_no_reason_to_accept_a_wrong_expected_version(db: Database) -> None:
    a, b = db.open(), db.open()
    a.append([new("s")])
    b.append([new("s")])
    with pytest.raises(ConcurrencyError):
        a.append([new("s")], expected_version=1)  # a remembers 1, the log says 2
    assert a.append([new("s")], expected_version=2)[0].version == 3


def test_a_failed_append_leaves_no_remembered_head_ahead_of_the_log(db: Database) -> None:
    store = db.open()
    store.append([new("s")])
    event = new("s")
    with pytest.raises(ValueError):
        store.append([event, new("t")], expected_version=1)  # two streams: refused before writing
    store.append([new("s")])
    duplicate = new("s")
    store.append([duplicate])
    store.append([duplicate, new("s")])  # a redelivery: the optimistic attempt fails on event_id
    assert [e.version for e in store.read_stream("s")] == [1, 2, 3, 4]
    assert store.verify().ok


def _alone(store: EventStore, stream: str, times: int = 3) -> None:
    """Appends by one writer with nobody else writing: on PostgreSQL it then guesses its next positions."""
    for _ in range(times):
        store.append([new(stream)])


def _positions_without_gaps(store: EventStore) -> None:
    positions = [e.position for e in store.read_all()]
    assert positions == list(range(1, len(positions) + 1))


def test_a_lone_writer_that_guesses_is_caught_when_another_writer_appended(db: Database) -> None:
    a, b = db.open(), db.open()
    _alone(a, "s")
    b.append([new("s")])  # a's next position and its head of "s" are stale now
    b.append([new("t")])
    recorded = a.append([new("s")])[0]
    assert (recorded.version, recorded.position) == (5, 6)
    _alone(a, "s", 2)
    b.append([new("t")])  # only the position is stale: a writes "u", which it has not seen
    assert a.append([new("u")])[0].position == 10
    _alone(a, "s", 2)
    b.append([new("t")])  # a batch too large for one pipeline (a COPY) guessed from a stale position
    assert [e.version for e in a.append([new("s") for _ in range(20)])] == list(range(10, 30))
    assert [e.version for e in a.read_stream("s")] == list(range(1, 30))
    assert [e.version for e in a.read_stream("t")] == [1, 2, 3]
    _positions_without_gaps(a)
    assert a.verify().ok


def test_a_stream_guessed_new_that_is_not_gets_its_next_version(db: Database) -> None:
    a, b = db.open(), db.open()
    b.append([new("u"), new("u")])  # before a's first append: a reads past it, and stays alone
    _alone(a, "s")
    recorded = a.append([new("u")])[0]  # unknown to a, guessed new: (u, 1) is taken
    assert (recorded.version, recorded.prev_hash) == (3, b.read_stream("u")[1].hash)
    recorded = a.append([new("v")], expected_version=0)[0]  # a new stream guessed new, with its expected version
    assert recorded.version == 1
    with pytest.raises(ConcurrencyError):
        a.append([new("u")], expected_version=0)
    _positions_without_gaps(a)
    assert a.verify().ok


def test_a_redelivered_event_is_not_written_again_by_a_guessing_writer(db: Database) -> None:
    a = db.open()
    _alone(a, "s")
    event = new("s")
    first = a.append([event])[0]
    again = a.append([event, new("s")])  # the guess meets event_id's unique key
    assert again[0] == first
    assert again[1].version == first.version + 1
    _positions_without_gaps(a)
    assert a.verify().ok


def test_a_lone_writer_on_postgresql_appends_without_reading_first(
    pg_schema: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from relaybus.eventstore import _append

    starts = []
    real_start = _append.start_append
    monkeypatch.setattr(_append, "start_append", lambda *a, **k: starts.append(1) or real_start(*a, **k))
    url, schema = pg_schema
    store = open_store(url, schema=schema, create=True)
    try:
        _alone(store, "s", 2)  # the first reads the log; the second finds it where the first left it
        starts.clear()
        for i in range(10):
            store.append([new("s"), new(f"new-{i}")])
        assert starts == []  # one round trip each: the lock, the rows and the commit
        assert [e.version for e in store.read_stream("s")] == list(range(1, 13))
        _positions_without_gaps(store)
        assert store.verify().ok
    finally:
        store.close()


def _prepared_appends(store: EventStore) -> set[str]:
    """Which of the append's statements are prepared on the connection this thread's appends use: ``insert`` (the
    rows), ``lock`` (the events lock), ``start`` (ids, heads, the last position), ``function`` (migration 0012)."""
    kinds = {"INSERT INTO events ": "insert", "SELECT eventstore_lock_events()": "lock", "SELECT 2, ": "start",
             "SELECT 0, ": "start", "SELECT 1, ": "start", "SELECT o_idx": "function"}  # fmt: skip
    with store._engine.write() as conn:  # the thread's kept write connection
        statements = [row[0] for row in conn.exec_driver_sql("SELECT statement FROM pg_prepared_statements")]
    return {kind for text in statements for prefix, kind in kinds.items() if text.startswith(prefix)}


@pytest.mark.parametrize("prepare", [True, False])
def test_appends_on_postgresql_prepare_their_statements_unless_told_not_to(
    pg_schema: tuple[str, str], prepare: bool
) -> None:
    url, schema = pg_schema
    store = open_store(url, schema=schema, create=True, config=StoreConfig(postgres_prepare=prepare))
    try:
        other = open_store(url, schema=schema, config=StoreConfig(postgres_prepare=prepare))
        for i in range(4):
            store.append([new("s"), new(f"t-{i}")])
            other.append([new("s")])  # every path: the server's function, guessing, and COPY with its lock
            store.append_new([new("s"), new("u")])
        _alone(store, "v", 2)
        store.append([new("v")])
        store.append([new("v") for _ in range(SMALL_BATCH + 1)])
        assert _prepared_appends(store) == ({"function", "insert", "lock"} if prepare else set())
        assert [e.version for e in store.read_stream("s")] == list(range(1, 13))
        assert [e.version for e in store.read_stream("v")] == list(range(1, SMALL_BATCH + 5))
        _positions_without_gaps(store)
        assert store.verify().ok
        other.close()
    finally:
        store.close()


def test_a_server_that_lost_the_prepared_statements_turns_preparing_off_with_a_warning_and_loses_nothing(
    pg_schema: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """What a pooler in transaction mode does (PgBouncer before 1.21): the next transaction reaches a server
    connection without this connection's prepared statements. Dropped here by name, behind psycopg's back (it
    forgets its own on ``DEALLOCATE ALL``, not on one name)."""
    url, schema = pg_schema
    store = open_store(url, schema=schema, create=True)
    try:
        other = open_store(url, schema=schema)
        for i in range(2):  # both paths prepared: reading first, and guessing
            store.append([new("s"), new(f"t-{i}")])
            other.append([new("s")])
            store.append_new([new("s"), new(f"u-{i}")])
        with store._engine.write() as conn:  # the thread's kept write connection
            names = [row[0] for row in conn.exec_driver_sql("SELECT name FROM pg_prepared_statements")]
            assert names, "the appends prepared their statements"
            for name in names:
                conn.exec_driver_sql(f'DEALLOCATE "{name}"')
        with caplog.at_level("WARNING", logger="relaybus.eventstore._append"):
            store.append([new("s"), new("after")])
            other.append([new("s")])
            store.append_new([new("s")])
            store.append_with([new("w")], 0, [new("s")])
        warned = [r.getMessage() for r in caplog.records if "prepared" in r.getMessage()]
        assert len(warned) == 1 and "RELAYBUS_EVENTSTORE_PREPARE=false" in warned[0], warned
        assert _prepared_appends(store) == set(), "preparing is off from then on"
        assert [e.version for e in store.read_stream("s")] == list(range(1, 11))
        _positions_without_gaps(store)
        assert store.verify().ok
        other.close()
    finally:
        store.close()
