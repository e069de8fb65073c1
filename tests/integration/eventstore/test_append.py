"""Contract: appending and reading, on every database."""

from __future__ import annotations

import multiprocessing
import threading
import uuid
from datetime import UTC, datetime

import pytest

from relaybus.eventstore import ConcurrencyError, EventStore, NewEvent, RecordedEvent
from tests.integration.eventstore.conftest import Database


def new(stream: str, type_: str = "thing.happened", **fields: object) -> NewEvent:
    return NewEvent(stream_id=stream, type=type_, **fields)


def test_appended_events_read_back_exactly_with_versions_and_positions(store: EventStore) -> None:
    when = datetime(2025, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
    events = [
        new(
            "s1",
            "task.sent",
            occurred_at=when,
            task_id="t1",
            agent="planner",
            queue="agents.planner",
            priority=7,
            attempt=1,
            worker_host="host-a",
            causation_id="c0",
            payload={"input": {"n": 1.5}},
            metadata={"trace": "x"},
        ),
        new("s1", "task.started"),
    ]

    recorded = store.append(events)

    assert [e.version for e in recorded] == [1, 2]
    assert recorded[0].position < recorded[1].position
    assert recorded[0].prev_hash is None and recorded[1].prev_hash == recorded[0].hash
    assert recorded[0].occurred_at == when and recorded[0].occurred_at.tzinfo is not None
    assert recorded[0].correlation_id == "s1"  # defaults to the stream
    assert store.read_stream("s1") == recorded
    assert store.read_stream("s1", from_version=2) == recorded[1:]
    assert store.get(events[0].event_id) == recorded[0]
    assert store.stream_version("s1") == 2
    assert store.stream_version("nobody") == 0
    assert recorded[0].model_dump(mode="json")["occurred_at"] == "2025-03-04T05:06:07.123456Z"


def test_naive_times_are_taken_as_utc_and_values_become_json(store: EventStore) -> None:
    naive = datetime(2025, 1, 1, 12, 0, 0, 1)
    token = uuid.uuid4()
    [recorded] = store.append([new("s", occurred_at=naive, payload={"id": token, "at": naive, "pair": (1, 2)})])
    [read] = store.read_stream("s")
    assert read.occurred_at == naive.replace(tzinfo=UTC)
    assert read.payload == {"id": str(token), "at": "2025-01-01T12:00:00.000001", "pair": [1, 2]}
    assert read == recorded
    assert store.verify().ok


def test_appending_a_stored_event_id_returns_the_stored_record_and_writes_nothing(store: EventStore) -> None:
    first = new("s", payload={"n": 1})
    [stored] = store.append([first])
    again = new("s", event_id=first.event_id, payload={"n": 2})

    result = store.append([again, new("s"), new("s", event_id=first.event_id)])

    assert result[0] == stored and result[2] == stored
    assert result[1].version == 2
    assert [e.version for e in store.read_stream("s")] == [1, 2]
    assert store.read_stream("s")[0].payload == {"n": 1}


def test_an_expected_version_that_is_not_current_raises_concurrency_error(store: EventStore) -> None:
    store.append([new("saga:1"), new("saga:1")])

    with pytest.raises(ConcurrencyError) as caught:
        store.append([new("saga:1")], expected_version=1)

    assert (caught.value.stream, caught.value.expected, caught.value.actual) == ("saga:1", 1, 2)
    assert store.append_one(new("saga:1"), expected_version=2).version == 3
    assert store.append_one(new("saga:new"), expected_version=0).version == 1


def test_retrying_an_append_that_was_stored_returns_it_despite_the_stale_expected_version(store: EventStore) -> None:
    event = new("saga:2")
    stored = store.append_one(event, expected_version=0)
    assert store.append_one(event, expected_version=0) == stored


def test_expected_version_needs_a_single_stream(store: EventStore) -> None:
    with pytest.raises(ValueError, match="one stream"):
        store.append([new("a"), new("b")], expected_version=0)


def test_a_saga_stream_and_task_events_share_a_correlation_id_without_sharing_versions(store: EventStore) -> None:
    store.append([new("wf-1", "task.sent"), new("saga:wf-1", "saga.started", correlation_id="wf-1")])
    store.append([new("wf-1", "task.started")])
    store.append_one(new("saga:wf-1", "saga.step.started", correlation_id="wf-1"), expected_version=1)

    assert [e.type for e in store.by_correlation("wf-1")] == [
        "task.sent",
        "saga.started",
        "task.started",
        "saga.step.started",
    ]
    assert store.stream_version("saga:wf-1") == 2


def test_global_positions_increase_and_pages_cover_the_log_once(store: EventStore) -> None:
    for batch in range(5):
        store.append([new(f"s{i % 3}", payload={"b": batch, "i": i}) for i in range(7)])

    page = store.read_all(after_position=0, limit=10)
    everything = list(store.iter_all(batch_size=6))

    assert len(page) == 10 and page == everything[:10]
    assert len(everything) == 35
    positions = [e.position for e in everything]
    assert positions == sorted(set(positions))
    assert store.read_all(after_position=positions[-1]) == []
    assert store.last_position() == positions[-1]
    assert list(store.iter_all(after_position=positions[29])) == everything[30:]


def _assert_versions_without_gaps(events: list[RecordedEvent], expected: int) -> None:
    assert [e.version for e in events] == list(range(1, expected + 1))
    assert len({e.event_id for e in events}) == expected
    assert [e.position for e in events] == sorted(e.position for e in events)


def test_threads_appending_to_one_stream_get_versions_one_to_n(store: EventStore) -> None:
    threads, appends = 8, 15
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(appends):
                store.append([new("hot"), new("hot")])
        except BaseException as error:  # surfaced in the main thread below
            errors.append(error)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)

    assert not errors
    _assert_versions_without_gaps(store.read_stream("hot"), threads * appends * 2)
    assert store.verify().ok


def _append_in_child(store: EventStore, stream: str, count: int) -> None:
    for i in range(count):
        store.append([new(stream, payload={"i": i})])


def test_forked_processes_appending_to_one_stream_get_versions_one_to_n(store: EventStore) -> None:
    store.append([new("warm-up")])  # the parent's pool now holds a connection the children inherit
    context = multiprocessing.get_context("fork")
    children = [context.Process(target=_append_in_child, args=(store, "shared", 25)) for _ in range(4)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=120)

    assert [child.exitcode for child in children] == [0, 0, 0, 0]
    _assert_versions_without_gaps(store.read_stream("shared"), 100)
    assert store.append_one(new("warm-up")).version == 2  # the parent's connections still work
    assert store.verify().ok


def test_of_writers_racing_with_the_same_expected_version_exactly_one_wins(db: Database) -> None:
    stores = [db.open() for _ in range(4)]
    barrier = threading.Barrier(len(stores))
    outcomes: list[str] = []

    def race(store: EventStore) -> None:
        barrier.wait(timeout=30)
        try:
            store.append([new("saga:race"), new("saga:race")], expected_version=0)
            outcomes.append("won")
        except ConcurrencyError:
            outcomes.append("conflict")

    workers = [threading.Thread(target=race, args=(s,)) for s in stores]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)

    assert sorted(outcomes) == ["conflict", "conflict", "conflict", "won"]
    assert stores[0].stream_version("saga:race") == 2


def test_a_follower_reading_after_its_last_position_misses_no_event_of_concurrent_writers(db: Database) -> None:
    stores = [db.open() for _ in range(4)]
    follower = db.open()
    writers_done = threading.Event()
    seen: list[int] = []
    errors: list[BaseException] = []

    def write(store: EventStore, n: int) -> None:
        try:
            for i in range(30):
                store.append([new(f"w{n}-{i % 3}"), new(f"w{n}-{i % 3}")])
        except BaseException as error:
            errors.append(error)

    def follow() -> None:
        last = 0
        while True:
            finished = writers_done.is_set()  # read before the page: the drain after it is complete
            page = follower.read_all(after_position=last, limit=50)
            seen.extend(e.position for e in page)
            last = page[-1].position if page else last
            if finished and not page:
                return

    threads = [threading.Thread(target=write, args=(s, n)) for n, s in enumerate(stores)]
    reader = threading.Thread(target=follow)
    reader.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    writers_done.set()
    reader.join(timeout=120)

    assert not errors
    everything = [e.position for e in follower.iter_all()]
    assert len(everything) == 4 * 30 * 2
    assert seen == everything  # each once, in order: no event committed below a position already read


def test_append_new_writes_only_the_events_not_stored_and_keeps_the_chain(store: EventStore) -> None:
    stream = f"s-{uuid.uuid4().hex[:8]}"
    first = store.append([NewEvent(event_id=f"{stream}:sent", stream_id=stream, type="task.sent")])[0]
    batch = [NewEvent(event_id=f"{stream}:{kind}", stream_id=stream, type=f"task.{kind}")
             for kind in ("sent", "received", "started", "succeeded")]
    assert store.append_new(batch) == 3
    assert store.append_new(batch) == 0  # a second copy of the whole batch writes nothing
    stored = store.read_stream(stream)
    assert [e.type for e in stored] == ["task.sent", "task.received", "task.started", "task.succeeded"]
    assert stored[0] == first and [e.version for e in stored] == [1, 2, 3, 4]
    assert store.verify().ok


def test_a_batch_of_several_insert_chunks_and_a_rest_reads_back_in_order_and_chained(store: EventStore) -> None:
    # SQLite writes full chunks of _insert._SQLITE_ROWS rows as multi-row INSERTs and the rest by executemany.
    events = [new(f"s{i % 3}", payload={"i": i}) for i in range(257)]

    recorded = store.append(events)

    assert [e.event_id for e in recorded] == [e.event_id for e in events]
    positions = [e.position for e in recorded]
    assert positions == sorted(positions) and len(set(positions)) == 257
    for stream in ("s0", "s1", "s2"):
        read = store.read_stream(stream)
        assert [e.payload["i"] for e in read] == [i for i in range(257) if f"s{i % 3}" == stream]
        assert [e.version for e in read] == list(range(1, len(read) + 1))
        assert read == [e for e in recorded if e.stream_id == stream]
    assert store.verify().ok
    # Stored events in a batch of a full chunk: the multi-row INSERT meets the unique event id, the stored records
    # come back and only the new events are written.
    more = [new("s0", payload={"i": i}) for i in range(257, 357)]
    again = store.append([*events[150:160], *more])
    assert again[:10] == recorded[150:160]
    assert [e.version for e in again[10:]] == list(range(87, 187)) and store.stream_version("s0") == 186
    assert store.verify().ok
