"""An exception raised while the store waits on PostgreSQL (a task's time limit, a signal) reaches the caller as
itself, on every append path, never as the store being away; and the store goes on as before."""

from __future__ import annotations

import time
from collections.abc import Callable

import psycopg
import pytest

from relaybus.eventstore import NewEvent, open_store
from relaybus.eventstore._insert import SMALL_BATCH
from relaybus.eventstore.keys import ChainKeys
from tests.harness import wait_for
from tests.integration.eventstore.conftest import Interrupted


def new(stream: str) -> NewEvent:
    return NewEvent(stream_id=stream, type="thing.happened")


def _lock_waiters(session: psycopg.Connection) -> int:
    """How many sessions of this database wait for a lock."""
    row = session.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
    ).fetchone()
    return int(row[0]) if row else 0


@pytest.mark.parametrize("path", ["keyed-chain", "copy"])
def test_a_client_path_append_interrupted_while_it_waits_for_the_lock_raises_the_interruption(
    pg_schema: tuple[str, str],
    lock_holder: psycopg.Connection,
    interrupt_after: Callable[[float], None],
    path: str,
) -> None:
    """The client path (a keyed chain's link needs the key; a batch over SMALL_BATCH goes by COPY) pipelines the
    lock with the start statement. A timer fires while the lock is held by another session: the caller gets the
    interruption at once, not when the lock timeout ends the wait, and not as ``StoreUnavailable`` ("another
    command is already in progress", from the rollback of a connection left mid-command). The statement is
    cancelled on the server; the next appends work, and the retried events are stored once."""
    url, schema = pg_schema
    keys = ChainKeys({"k1": b"0123456789abcdef0123456789abcdef"}) if path == "keyed-chain" else None
    store = open_store(url, schema=schema, create=True, chain_keys=keys)
    try:
        store.append([new("s")])
        store.append([new("s")])  # the second append of a stream: the client's own path, prepared
        batch = [new("s") for _ in range(1 if path == "keyed-chain" else SMALL_BATCH + 1)]
        lock_holder.execute("LOCK TABLE events IN EXCLUSIVE MODE")
        interrupt_after(0.5)
        began = time.monotonic()
        with pytest.raises(Interrupted):
            store.append(batch)
        assert time.monotonic() - began < 5, "raised when the timer fired, not after the lock timeout"
        wait_for(lambda: _lock_waiters(lock_holder) == 0, 10, 0.05, "the interrupted statement to be cancelled")
        lock_holder.rollback()
        assert len(store.read_stream("s")) == 2, "cancelled while it waited: none of its pipelined statements ran"
        stored = store.append(batch)  # the caller's retry
        after = store.append([new("s")])
        assert [e.version for e in stored] == list(range(3, 3 + len(batch)))
        assert after[0].version == 3 + len(batch)
        ids = [e.event_id for e in store.read_stream("s")]
        assert len(ids) == len(set(ids)) == 3 + len(batch)
        assert store.verify().ok
    finally:
        store.close()
