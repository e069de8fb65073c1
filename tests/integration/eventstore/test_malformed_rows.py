"""Contract: replay builds records without re-validating what the store wrote, yet a stored row that does not
read back as an event (changed in the database behind the store) raises MalformedEvent naming its position,
its event id and the column, from every read; it is never handed out as a record."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import text

from relaybus.eventstore import EventStore, MalformedEvent, NewEvent, RecordedEvent
from tests.integration.eventstore.conftest import Database

READS: dict[str, Callable[[EventStore, RecordedEvent], object]] = {
    "read_all": lambda store, _: store.read_all(),
    "iter_all": lambda store, _: list(store.iter_all(batch_size=2)),
    "get": lambda store, bad: store.get(bad.event_id),
    "read_stream": lambda store, bad: store.read_stream(bad.stream_id),
    "by_correlation": lambda store, bad: store.by_correlation(bad.correlation_id),
}


@pytest.mark.parametrize("read", list(READS))
@pytest.mark.parametrize(
    ("column", "stored", "sqlite_only"),
    [
        ("payload", "[1, 2]", False),  # JSON, but no object
        ("metadata", '"text"', False),
        ("payload", "{not json", True),  # PostgreSQL's json type refuses it at the UPDATE
        ("occurred_at", "yesterday", True),  # SQLite keeps times as text
        ("version", "two", True),  # and text in an integer column
        ("attempt", 1.5, True),
    ],
)
def test_a_malformed_stored_row_raises_an_error_naming_it(
    db: Database, read: str, column: str, stored: str, sqlite_only: bool
) -> None:
    if sqlite_only and db.kind != "sqlite":
        pytest.skip("PostgreSQL's column types refuse this value")
    store = db.open()
    good, bad, after = store.append([NewEvent(stream_id="s", type="t", payload={"n": n}) for n in range(3)])
    with store.engine.begin() as conn:
        db.drop_append_only_triggers(conn)
        conn.execute(
            text(f"UPDATE events SET {column} = :stored WHERE position = :p"), {"stored": stored, "p": bad.position}
        )

    with pytest.raises(MalformedEvent) as caught:
        READS[read](store, bad)
    error = caught.value
    assert (error.position, error.event_id, error.column) == (bad.position, bad.event_id, column)
    assert f"position {bad.position}" in str(error) and bad.event_id in str(error) and column in str(error)
    # the rows around it still read
    assert store.get(good.event_id) == good
    assert store.get(after.event_id) == after
