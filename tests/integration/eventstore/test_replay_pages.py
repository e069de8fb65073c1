"""Replay by pages (EventStore.iter_all): rows become records as the caller reaches them. Every event once,
in order, from any position; events appended while replaying are read when their page is; what a page
read raises is raised to the caller, translated; a malformed row raises when it is reached."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from relaybus.eventstore import EventStore, NewEvent, SchemaError
from tests.integration.eventstore.conftest import Database


def _fill(store: EventStore, count: int, stream: str = "s") -> None:
    store.append([NewEvent(stream_id=f"{stream}{i % 7}", type="t", payload={"i": i}) for i in range(count)])


@pytest.mark.parametrize(("after", "batch_size"), [(0, 5), (0, 53), (0, 1000), (17, 4), (53, 5)])
def test_every_event_once_in_order(store: EventStore, after: int, batch_size: int) -> None:
    _fill(store, 53)
    events = list(store.iter_all(after_position=after, batch_size=batch_size))
    assert [e.position for e in events] == list(range(after + 1, 54))
    assert events == store.read_all(after_position=after, limit=1000)


def test_events_appended_while_replaying_are_read_with_their_page(store: EventStore) -> None:
    _fill(store, 10)
    replay = store.iter_all(batch_size=4)
    seen = [next(replay).position for _ in range(5)]  # into the second page: the third is not read yet
    _fill(store, 10, stream="late")
    seen += [e.position for e in replay]
    assert seen == list(range(1, 21))


def test_a_failing_page_read_raises_in_the_caller(db: Database) -> None:
    store = db.open()
    _fill(store, 10)
    replay = store.iter_all(batch_size=4)
    assert next(replay).position == 1
    with store.engine.begin() as conn:  # the table gone between pages: the next page's read fails
        db.drop_append_only_triggers(conn)
        conn.execute(text("DROP TABLE events" + (" CASCADE" if db.kind == "postgresql" else "")))
    with pytest.raises(SchemaError):
        for _ in replay:
            pass
