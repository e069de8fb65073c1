"""PostgreSQL's one-round-trip append (migration 0012, :mod:`eventstore._serverappend`): the server numbers, chains
and writes a small batch; what it stores must be what the client path stores, link for link."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from sqlalchemy import create_engine, text

from relaybus.eventstore import (
    ConcurrencyError,
    EventStore,
    NewEvent,
    UnstorableEvent,
    _append,
    _serverappend,
    open_store,
)
from relaybus.eventstore._insert import SMALL_BATCH
from relaybus.eventstore.keys import ChainKeys
from relaybus.eventstore.migrations import upgrade
from tests.integration.eventstore.conftest import Interrupted


def new(stream: str, type_: str = "thing.happened", **fields: object) -> NewEvent:
    return NewEvent(stream_id=stream, type=type_, **fields)  # type: ignore[arg-type]


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How many appends took each path: the server's function, or the client's start statement."""
    counts = {"server": 0, "client": 0}
    real_server, real_start = _serverappend.append, _append.start_append

    def server(*args: object, **kwargs: object) -> _serverappend.Outcome:
        counts["server"] += 1
        return real_server(*args, **kwargs)  # type: ignore[arg-type]

    def start(*args: object, **kwargs: object) -> object:
        counts["client"] += 1
        return real_start(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(_serverappend, "append", server)
    monkeypatch.setattr(_append, "start_append", start)
    return counts


def _positions_and_chain_hold(store: EventStore) -> None:
    positions = [e.position for e in store.iter_all()]
    assert positions == list(range(1, len(positions) + 1))
    report = store.verify()
    assert report.ok, report


def test_the_server_writes_what_the_client_path_would_every_link_verified(
    pg_schema: tuple[str, str], counted: dict[str, int]
) -> None:
    """Every field kind the content covers: text outside ASCII, escapes, a masked secret, nulls and numbers, two
    streams interleaved in one batch (each event chained on the one before it in the batch), times of two kinds."""
    url, schema = pg_schema
    store = open_store(url, schema=schema, create=True)
    try:
        earlier = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
        batch = [
            new("a", payload={"text": "é ✓ 𝄞 \"quoted\" \\ back\nline", "api_key": "sk-secret", "n": 1.5}),
            new("b", priority=9, attempt=2, agent="researcher", queue="agents.research", task_id="t-1",
                worker_host="h1", causation_id="c-1", occurred_at=earlier, metadata={"k": [1, None, True]}),
            new("a", schema_version=3, payload={"nested": {"list": [{"x": None}]}}),
            new("b", occurred_at=earlier + timedelta(microseconds=1)),
        ]  # fmt: skip
        records = store.append(batch)
        assert counted == {"server": 1, "client": 0}
        assert [(r.stream_id, r.version, r.position) for r in records] == [("a", 1, 1), ("b", 1, 2), ("a", 2, 3),
                                                                           ("b", 2, 4)]  # fmt: skip
        assert records[2].prev_hash == records[0].hash and records[3].prev_hash == records[1].hash
        assert records[0].payload["api_key"] != "sk-secret"  # redacted before the server saw it
        assert records == list(store.iter_all())  # what the append returned is what was stored
        assert store.append_new([batch[0], new("a"), new("c")]) == 2  # the stored one skipped, the chain goes on
        assert [e.version for e in store.read_stream("a")] == [1, 2, 3]
        _positions_and_chain_hold(store)
    finally:
        store.close()


def test_conflicts_and_retries_keep_their_meaning(pg_schema: tuple[str, str], counted: dict[str, int]) -> None:
    url, schema = pg_schema
    store = open_store(url, schema=schema, create=True)
    rival = open_store(url, schema=schema)
    try:
        first = new("s")
        store.append([first, new("s")])
        with pytest.raises(ConcurrencyError) as conflict:
            rival.append([new("s")], expected_version=1)
        assert conflict.value.actual == 2
        retried = rival.append([first], expected_version=0)  # a retry of an append that happened is no conflict
        assert retried[0].version == 1 and retried[0].position == 1
        decision = new("s")
        moved = store.append_with([decision], 2, [new("w")])
        assert moved[0].version == 3
        with pytest.raises(ConcurrencyError):  # the checked event stored already: a rival's decision
            rival.append_with([decision], 2, [])
        with pytest.raises(ConcurrencyError):
            rival.append_with([new("s")], 2, [new("x")])  # nothing written, "x" neither
        assert list(store.read_stream("x")) == []
        assert [e.version for e in store.read_stream("s")] == [1, 2, 3]
        assert counted["client"] == 0
        _positions_and_chain_hold(store)
    finally:
        rival.close()
        store.close()


def test_a_database_without_the_function_is_appended_to_as_before(
    pg_schema: tuple[str, str], counted: dict[str, int]
) -> None:
    url, schema = pg_schema
    upgrade(url, schema=schema, revision="0011")  # a database not upgraded yet, under a newer worker
    store = open_store(url, schema=schema)
    try:
        store.append([new("s"), new("s")])
        store.append_new([new("s")])
        assert counted == {"server": 0, "client": 2}
        _positions_and_chain_hold(store)
    finally:
        store.close()


def test_a_database_upgraded_under_a_running_store_gets_its_appends_in_the_server_when_asked_again(
    pg_schema: tuple[str, str], counted: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rolling upgrade: workers of the new release start before ``relaybus db upgrade`` runs. They append as
    before, ask again after ``ASK_AGAIN_S``, and from then on append in one round trip, without a restart."""
    url, schema = pg_schema
    upgrade(url, schema=schema, revision="0011")
    store = open_store(url, schema=schema)
    try:
        store.append_new([new("s")])  # append_new: never a guessed append, so every one shows in the counts
        upgrade(url, schema=schema)  # now the database has the function
        store.append_new([new("s")])
        assert counted == {"server": 0, "client": 2}, "not asked again before ASK_AGAIN_S"
        monkeypatch.setattr(_serverappend, "ASK_AGAIN_S", 0.0)
        store.append_new([new("s")])
        store.append_new([new("s"), new("t")])
        assert counted == {"server": 2, "client": 2}
        assert [e.version for e in store.read_stream("s")] == [1, 2, 3, 4]
        _positions_and_chain_hold(store)
    finally:
        store.close()


def test_a_function_dropped_under_a_running_store_costs_one_warning_and_no_event(
    pg_schema: tuple[str, str], counted: dict[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    url, schema = pg_schema
    store = open_store(url, schema=schema, create=True)
    admin = create_engine(url)
    try:
        store.append([new("s")])
        with admin.begin() as conn:
            conn.execute(text(f'SET search_path = "{schema}"'))
            conn.execute(text(f"DROP FUNCTION {_serverappend.FUNCTION}({_serverappend.SIGNATURE})"))
        with caplog.at_level(logging.WARNING, logger="relaybus.eventstore._append"):
            store.append([new("s"), new("t")])
            store.append_new([new("s")])
        assert [r.getMessage() for r in caplog.records if _serverappend.FUNCTION in r.getMessage()] != []
        assert len(caplog.records) == 1
        assert counted["server"] == 2 and counted["client"] == 2  # the failed call, then the client path (until asked)
        assert [e.version for e in store.read_stream("s")] == [1, 2, 3]
        _positions_and_chain_hold(store)
    finally:
        admin.dispose()
        store.close()


def test_a_keyed_chain_never_sends_its_links_to_the_server(
    pg_schema: tuple[str, str], counted: dict[str, int]
) -> None:
    url, schema = pg_schema
    keys = ChainKeys({"k1": b"0123456789abcdef0123456789abcdef"})
    store = open_store(url, schema=schema, create=True, chain_keys=keys)
    try:
        store.append([new("s"), new("s")])
        store.append_new([new("s")])
        assert counted["server"] == 0
        _positions_and_chain_hold(store)
    finally:
        store.close()


def test_after_an_error_in_the_function_the_connection_is_back_in_transactions(pg_schema: tuple[str, str]) -> None:
    """The call runs in autocommit; whatever it raises, the next append on that connection is one transaction."""
    url, schema = pg_schema
    store = open_store(url, schema=schema, create=True)
    try:
        store.append([new("s")])
        with pytest.raises(UnstorableEvent):
            store.append([new("s", priority=2**40)])  # an integer column's range: refused by the server (22003)
        with store._engine.write() as conn:
            assert conn.connection.driver_connection.autocommit is False
        store.append([new("s") for _ in range(SMALL_BATCH + 1)])  # the client path, on the same connection
        assert [e.version for e in store.read_stream("s")] == list(range(1, SMALL_BATCH + 3))
        _positions_and_chain_hold(store)
    finally:
        store.close()


def test_an_exception_inside_the_wait_never_leaves_a_connection_in_autocommit(
    pg_schema: tuple[str, str], lock_holder: psycopg.Connection, interrupt_after: Callable[[float], None]
) -> None:
    """A time limit firing while the append waits for the events lock (held here by another session): the
    connection is mid-statement, psycopg cannot turn autocommit off, and it must not go back to the pool so. The
    interrupted statement is cancelled on the server; were the cancel lost, it could still commit once the lock is
    free (a doubtful commit, as with any commit whose answer was lost): event ids make the retry harmless."""
    url, schema = pg_schema
    store = open_store(url, schema=schema, create=True)
    try:
        store.append([new("s")])
        lock_holder.execute("LOCK TABLE events IN EXCLUSIVE MODE")
        event = new("s")
        interrupt_after(0.5)
        with pytest.raises(Interrupted):
            store.append([event])
        lock_holder.rollback()
        retried = store.append([event])  # the caller's retry: written once, whichever of the two wrote it
        again = store.append([new("s")])
        assert retried[0].version == 2 and again[0].version == 3
        with store._engine.write() as conn:
            assert conn.connection.driver_connection.autocommit is False
        assert [e.event_id for e in store.read_stream("s")].count(event.event_id) == 1
        _positions_and_chain_hold(store)
    finally:
        store.close()
