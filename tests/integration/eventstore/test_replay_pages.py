"""Replay by pages (EventStore.iter_all): rows become records as the caller reaches them. Every event once,
in order, from any position; events appended while replaying are read when their page is; what a page
read raises is raised to the caller, translated; a malformed row raises when it is reached. Every column
comes back as it was recorded, in its field (the converters unpack a row by column order)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import text

from relaybus.eventstore import EventStore, NewEvent, RecordedEvent, SchemaError
from tests.integration.eventstore.conftest import Database


def _fill(store: EventStore, count: int, stream: str = "s") -> None:
    store.append([NewEvent(stream_id=f"{stream}{i % 7}", type="t", payload={"i": i}) for i in range(count)])


@pytest.mark.parametrize(("after", "batch_size"), [(0, 5), (0, 53), (0, 1000), (17, 4), (53, 5)])
def test_every_event_once_in_order(store: EventStore, after: int, batch_size: int) -> None:
    _fill(store, 53)
    events = list(store.iter_all(after_position=after, batch_size=batch_size))
    assert [e.position for e in events] == list(range(after + 1, 54))
    assert events == store.read_all(after_position=after, limit=1000)


def test_every_field_is_read_back_as_recorded(store: EventStore) -> None:
    # Every optional field set, to values distinct from each other's, and every one left unset: a column read
    # into the wrong field, or a value changed on the way, shows. The time is given in another zone.
    full = NewEvent(
        stream_id="stream-a", type="type-a", schema_version=3, causation_id="cause-a",
        occurred_at=datetime(2026, 12, 5, 18, 30, 1, 123456, tzinfo=timezone(timedelta(hours=2))),
        task_id="task-a", agent="agent-a", queue="queue-a", priority=7, attempt=2, worker_host="host-a",
        payload={"nested": {"list": [1, 2.5, None, True, "é ✓"]}, "n": 10**20, "api_key": "sk-secret"},
        metadata={"trace_id": "trace-a"},
    )  # fmt: skip
    bare = NewEvent(stream_id="stream-b", type="type-b")
    written = store.append([full, bare])
    replayed = list(store.iter_all(batch_size=1)) + store.read_all()
    assert replayed == written + written
    for event in replayed:
        assert type(event) is RecordedEvent
        assert RecordedEvent.model_validate(event.model_dump()) == event  # each value valid in its field
        assert event.occurred_at.tzinfo is UTC and event.recorded_at.tzinfo is UTC
    first = replayed[0]
    assert (first.version, first.schema_version, first.priority, first.attempt) == (1, 3, 7, 2)
    assert (first.stream_id, first.type, first.causation_id, first.task_id, first.agent, first.queue) == (
        "stream-a", "type-a", "cause-a", "task-a", "agent-a", "queue-a",
    )  # fmt: skip
    assert first.worker_host == "host-a" and first.occurred_at == datetime(2026, 12, 5, 16, 30, 1, 123456, tzinfo=UTC)
    assert first.payload["api_key"] != "sk-secret" and first.payload["nested"] == full.payload["nested"]
    assert first.payload["n"] == 10**20 and first.metadata == {"trace_id": "trace-a"}
    assert (first.prev_hash, first.hash, first.key_id) == (None, written[0].hash, written[0].key_id)
    second = replayed[1]
    assert (second.causation_id, second.task_id, second.agent, second.queue, second.priority) == (None,) * 5
    assert (second.attempt, second.worker_host, second.payload, second.metadata) == (None, None, {}, {})
    assert second.correlation_id == bare.correlation_id and second.position == first.position + 1


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
