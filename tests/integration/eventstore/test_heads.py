"""Contract: the heads a writer remembers are checked by the log, never trusted over it."""

from __future__ import annotations

import pytest

from relaybus.eventstore import ConcurrencyError, NewEvent
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
