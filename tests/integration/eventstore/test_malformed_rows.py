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
@pytest.mark.parametrize(("column", "stored"), [("payload", "[1, 2]"), ("metadata", '"text"')])  # JSON, no object
def test_a_malformed_stored_row_raises_an_error_naming_it(db: Database, read: str, column: str, stored: str) -> None:
    _check_malformed(db, read, column, stored)


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)  # PostgreSQL's column types refuse these at the UPDATE
@pytest.mark.parametrize("read", list(READS))
@pytest.mark.parametrize(
    ("column", "stored"),
    [
        ("payload", "{not json"),
        ("occurred_at", "yesterday"),  # SQLite keeps times as text
        ("version", "two"),  # and text in an integer column
        ("attempt", 1.5),
    ],
)
def test_a_sqlite_row_with_a_value_of_the_wrong_type_raises_an_error_naming_it(
    db: Database, read: str, column: str, stored: object
) -> None:
    _check_malformed(db, read, column, stored)


def _check_malformed(db: Database, read: str, column: str, stored: object) -> None:
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
