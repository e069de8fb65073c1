"""Contract: ``append_with``, a checked stream's events and other records in one transaction, on every database.

A saga task commits its own records (its start records and ``task.succeeded``) with the saga's move
(tasks.saga.advance): the move keeps its optimistic concurrency, and the task's records may be stored already.
"""

from __future__ import annotations

import pytest

from relaybus.eventstore import ConcurrencyError, EventStore, NewEvent


def new(stream: str, type_: str = "thing.happened", **fields: object) -> NewEvent:
    return NewEvent(stream_id=stream, type=type_, **fields)


def test_the_checked_events_and_the_records_not_stored_yet_commit_together_records_first(store: EventStore) -> None:
    store.append([new("saga:a", "saga.started")])
    sent = new("task:t1", "task.sent", task_id="t1")
    store.append([sent])  # stored already: skipped, not an error
    started, succeeded = new("task:t1", "task.started", task_id="t1"), new("task:t1", "task.succeeded", task_id="t1")
    move = [new("saga:a", "saga.step.succeeded"), new("saga:a", "saga.step.started")]

    recorded = store.append_with(move, 1, [sent, started, succeeded])

    assert [(r.event_id, r.version) for r in recorded] == [(move[0].event_id, 2), (move[1].event_id, 3)]
    assert store.read_stream("saga:a")[1:] == recorded
    task = store.read_stream("task:t1")
    assert [e.type for e in task] == ["task.sent", "task.started", "task.succeeded"]
    assert task[-1].position < recorded[0].position, "the task's records come before the move they caused"
    assert {e.recorded_at for e in (*task[1:], *recorded)} == {recorded[0].recorded_at}, "one transaction"
    assert store.verify().ok


@pytest.mark.parametrize("taken", ["version", "event"])
def test_a_stream_moved_meanwhile_is_a_conflict_and_nothing_is_written(store: EventStore, taken: str) -> None:
    store.append([new("saga:b", "saga.started")])
    move = new("saga:b", "saga.step.succeeded")
    if taken == "version":
        store.append([new("saga:b", "saga.resumed")])  # another process advanced the saga
    else:
        store.append([move])  # a rival stored this very event: its decision, not ours
    before = store.last_position()

    with pytest.raises(ConcurrencyError):
        store.append_with([move, new("saga:b", "saga.completed")], 1, [new("task:t2", "task.succeeded")])

    assert store.last_position() == before
    assert store.read_stream("task:t2") == []
    # The store goes on: heads are read again after the refusal.
    assert store.append_with([new("saga:b", "saga.completed")], 2, [new("task:t3", "task.succeeded")])[0].version == 3
