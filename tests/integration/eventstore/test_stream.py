"""Streaming a large result (eventstore._stream): every row once, in order, with or without prefetching;
an iterator closed early leaves its connection usable; a fetch that fails raises in the reader."""

from __future__ import annotations

import pytest
from sqlalchemy import exc as sa_exc

from relaybus.eventstore import EventStore, NewEvent
from relaybus.eventstore._stream import stream_rows


def _fill(store: EventStore, count: int) -> None:
    store.append([NewEvent(stream_id=f"s{i % 7}", type="t", payload={"i": i}) for i in range(count)])


@pytest.mark.parametrize("prefetch", [False, True])
def test_every_row_once_in_order_in_small_batches(store: EventStore, prefetch: bool) -> None:
    _fill(store, 53)
    with store._engine.read() as conn:
        positions = [row[0] for row in stream_rows(conn, "SELECT position FROM events ORDER BY position",
                                                    batch_size=5, prefetch=prefetch)]  # fmt: skip
    assert positions == list(range(1, 54))


def test_a_prefetching_stream_closed_early_leaves_the_connection_usable(store: EventStore) -> None:
    _fill(store, 40)
    with store._engine.read() as conn:
        rows = stream_rows(conn, "SELECT position FROM events ORDER BY position", batch_size=3, prefetch=True)
        assert [next(rows)[0] for _ in range(4)] == [1, 2, 3, 4]
        rows.close()  # the fetching thread is stopped and joined before the cursor closes
        assert conn.exec_driver_sql("SELECT count(*) FROM events").scalar_one() == 40
    assert store.verify().ok


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)  # SQLite divides by zero without an error
def test_a_failing_fetch_raises_in_the_reader(store: EventStore) -> None:
    _fill(store, 10)
    # Division by zero at the eighth row: the first fetch (5 rows) succeeds, the second fails in the thread.
    sql = "SELECT 1 / (8 - position) FROM events ORDER BY position"
    with pytest.raises(sa_exc.DataError), store._engine.read() as conn:
        for _ in stream_rows(conn, sql, batch_size=5, prefetch=True):
            pass
