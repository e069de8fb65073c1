"""Event store throughput against eventsourcing's recorders, on the same databases, in the same run.

    python -m bench.eventstore_bench [--quick] [--rounds N] [--stores relaybus_sqlite,relaybus_sqlite_keyed,...]

Stores measured, each on a fresh database per round (a temporary SQLite file, a throwaway
PostgreSQL schema in ``RELAYBUS_TEST_POSTGRES_URL``, default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``):

- ``relaybus_sqlite`` (``synchronous=NORMAL``, the default) and ``relaybus_sqlite_full``
  (``synchronous=FULL``, the durability eventsourcing's SQLite recorder runs with);
- ``eventsourcing_sqlite``: :class:`eventsourcing.sqlite.SQLiteApplicationRecorder`;
- ``relaybus_postgresql`` and ``eventsourcing_postgresql``
  (:class:`eventsourcing.postgres.PostgresApplicationRecorder`);
- ``relaybus_sqlite_keyed`` and ``relaybus_postgresql_keyed``: the same with a chain key (HMAC links,
  verified with the key), for the ratios ``keyed_vs_unkeyed_<db>_<metric>`` (issue 15: keying must
  cost under 10 % of append throughput).

Metrics, in events/s: ``single`` (one event per append), ``batch100`` and ``batch500`` (events of
several streams per append, as a group commit sends them), ``replay`` (every event read back with
its payload decoded, in pages). relaybus also gets ``rebuild`` (the workflow-status projection from
the log) and ``verify`` (every hash recomputed).

Fairness: both sides start from the same Python dicts. eventsourcing is handed each event's payload
and metadata serialised with ``json.dumps`` inside the timed section (its mapper's least work);
relaybus redacts (every event carries a secret), bounds, hashes and serialises them. Replay on
eventsourcing decodes each notification's state with ``json.loads``, as relaybus decodes payloads.

The machine may be shared: rounds are interleaved (round 1 of every store, then round 2...), the
median of the rounds is kept, and the ratios ``store_vs_eventsourcing_<db>_<metric>`` are what to
read, not the absolute figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import create_engine, make_url, text

from bench.peers import ensure_peers
from relaybus.eventstore import ChainKeys, EventStore, NewEvent, StoreConfig, open_store

POSTGRES_URL = os.environ.get("RELAYBUS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
AGENTS = ("planner", "researcher", "writer", "critic")
TYPES = ("task.sent", "task.received", "task.started", "llm.completed", "task.succeeded")
PER_STREAM = 20
BENCH_KEYS = ChainKeys({"bench1": b"a chain key for the benchmark only, 48 bytes...."})
ROUNDS = 3
APPEND_METRICS = ("single", "batch100", "batch500")
METRICS = (*APPEND_METRICS, "replay")


@dataclass(frozen=True)
class Sizes:
    single: int
    batch100: int
    batch500: int
    replay: int


FULL = Sizes(single=1000, batch100=20_000, batch500=50_000, replay=100_000)
QUICK = Sizes(single=200, batch100=3000, batch500=5000, replay=10_000)


def make_events(n: int, *, tag: str) -> list[NewEvent]:
    """Task-shaped events, 20 per stream, with a payload of a few hundred bytes holding a secret."""
    now = datetime.now(UTC)
    events = []
    for i in range(n):
        workflow = f"{tag}-wf-{i // PER_STREAM}"
        task = f"{workflow}-t{(i % PER_STREAM) // 5}"
        events.append(
            NewEvent(
                stream_id=workflow,
                type=TYPES[i % 5],
                task_id=task,
                agent=AGENTS[(i // 5) % 4],
                queue="agents.default",
                priority=5,
                attempt=1,
                worker_host="bench-host",
                occurred_at=now,
                payload={
                    "input": {"topic": f"topic {i}", "depth": 3, "notes": "x" * 120},
                    "output": {"summary": "lorem ipsum dolor sit amet " * 4, "score": i / 7},
                    "api_key": "sk-bench",
                },
                metadata={"trace_id": uuid.uuid4().hex},
            )
        )
    return events


def interleave(events: list[NewEvent]) -> list[NewEvent]:
    """The same events, streams interleaved (each batch spans many streams, in version order per stream)."""
    streams: dict[str, list[NewEvent]] = {}
    for event in events:
        streams.setdefault(event.stream_id, []).append(event)
    rows = list(streams.values())
    return [row[i] for i in range(PER_STREAM) for row in rows if i < len(row)]


# -- the stores under test ------------------------------------------------------------------------------


class Subject(Protocol):
    """One store on one fresh database."""

    def append(self, batch: list[NewEvent]) -> None: ...
    def iterate(self) -> Iterator[Any]: ...
    def close(self) -> None: ...


class RelaybusSubject:
    def __init__(self, store: EventStore) -> None:
        self.store = store

    def append(self, batch: list[NewEvent]) -> None:
        self.store.append(batch)

    def iterate(self) -> Iterator[Any]:
        """Every event, read back in full (payload decoded), in position order."""
        yield from self.store.iter_all()

    def rebuild(self) -> int:
        return int(self.store.projection.rebuild())

    def verify(self) -> int:
        report = self.store.verify()
        assert report.ok, report
        assert report.keyed == (self.store.chain_keys is not None), report  # the keyed stores verify with the key
        return int(report.events_checked)

    def close(self) -> None:
        self.store.close()


class EventsourcingSubject:
    """An eventsourcing application recorder, fed the same events as ``StoredEvent`` rows."""

    def __init__(self, recorder: Any, close: Callable[[], None]) -> None:
        from eventsourcing.persistence import StoredEvent

        self.recorder = recorder
        self._close = close
        self._stored_event = StoredEvent
        self._versions: dict[str, int] = {}
        self._ids: dict[str, uuid.UUID] = {}

    def append(self, batch: list[NewEvent]) -> None:
        rows = []
        for event in batch:
            version = self._versions.get(event.stream_id, 0) + 1
            self._versions[event.stream_id] = version
            originator = self._ids.get(event.stream_id)
            if originator is None:
                originator = self._ids[event.stream_id] = uuid.uuid5(uuid.NAMESPACE_URL, event.stream_id)
            state = json.dumps({"payload": event.payload, "metadata": event.metadata}).encode()
            rows.append(self._stored_event(originator, version, event.type, state))
        self.recorder.insert_events(rows)

    def iterate(self) -> Iterator[Any]:
        """Every notification, in pages of 5,000 as ``iter_all``, its state decoded."""
        start = 1
        while True:
            page = self.recorder.select_notifications(start, 5000)
            for notification in page:
                yield notification, json.loads(notification.state)
            if len(page) < 5000:
                return
            start = page[-1].id + 1

    def close(self) -> None:
        self._close()


@contextmanager
def temporary_schema(url: str) -> Iterator[str]:
    """A PostgreSQL schema that exists for the block and is dropped (with everything in it) after."""
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        yield schema
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def _relaybus_sqlite(synchronous: str, keys: ChainKeys | None = None) -> Callable[[Path, str | None], Subject]:
    def build(directory: Path, _schema: str | None) -> Subject:
        url = f"sqlite:///{directory / f'relaybus-{uuid.uuid4().hex[:6]}.sqlite'}"
        return RelaybusSubject(open_store(url, config=StoreConfig(sqlite_synchronous=synchronous), chain_keys=keys))

    return build


def _relaybus_postgresql(keys: ChainKeys | None = None) -> Callable[[Path, str | None], Subject]:
    def build(_directory: Path, schema: str | None) -> Subject:
        return RelaybusSubject(open_store(POSTGRES_URL, schema=schema, create=True, chain_keys=keys))

    return build


def _eventsourcing_sqlite(directory: Path, _schema: str | None) -> Subject:
    from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteDatastore

    datastore = SQLiteDatastore(str(directory / f"es-{uuid.uuid4().hex[:6]}.sqlite"))
    recorder = SQLiteApplicationRecorder(datastore)
    recorder.create_table()
    return EventsourcingSubject(recorder, datastore.close)


def _eventsourcing_postgresql(_directory: Path, schema: str | None) -> Subject:
    from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore

    url = make_url(POSTGRES_URL)
    datastore = PostgresDatastore(
        dbname=url.database or "postgres",
        host=url.host or "127.0.0.1",
        port=url.port or 5432,
        user=url.username or "postgres",
        password=url.password or "",
        schema=schema or "",
    )
    recorder = PostgresApplicationRecorder(datastore)
    recorder.create_table()
    return EventsourcingSubject(recorder, datastore.close)


STORES: dict[str, tuple[str, Callable[[Path, str | None], Subject]]] = {
    # name: (database, factory)
    "relaybus_sqlite": ("sqlite", _relaybus_sqlite("NORMAL")),
    "relaybus_sqlite_keyed": ("sqlite", _relaybus_sqlite("NORMAL", BENCH_KEYS)),
    "relaybus_sqlite_full": ("sqlite", _relaybus_sqlite("FULL")),
    "eventsourcing_sqlite": ("sqlite", _eventsourcing_sqlite),
    "relaybus_postgresql": ("postgresql", _relaybus_postgresql()),
    "relaybus_postgresql_keyed": ("postgresql", _relaybus_postgresql(BENCH_KEYS)),
    "eventsourcing_postgresql": ("postgresql", _eventsourcing_postgresql),
}


# -- measuring ------------------------------------------------------------------------------------------


def _rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else float("inf")


def _timed(action: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = action()
    return result, time.perf_counter() - started


BLOCKS = 10
"""Each metric is measured in this many blocks per round, the stores taking turns block by block, so a
burst of load from elsewhere on the machine falls on every store alike."""


def _timed_blocks(actions: dict[str, list[Callable[[], Any]]]) -> dict[str, float]:
    """Run the stores' blocks in turns (block i of every store, then block i + 1...); seconds per store.

    The garbage collector is settled before each block, untimed (``gc.collect``, the bench's own
    event lists frozen out of it first): collections are triggered by allocation counts, so otherwise
    a store that allocates, or pauses the collector (relaybus does, around batches), leaves collections
    due that the next store's block pays for, and a full collection walks this process's large heap."""
    seconds = dict.fromkeys(actions, 0.0)
    gc.collect()
    gc.freeze()
    try:
        for i in range(max(len(blocks) for blocks in actions.values())):
            for name, blocks in actions.items():
                if i < len(blocks):
                    gc.collect()
                    _, took = _timed(blocks[i])
                    seconds[name] += took
    finally:
        gc.unfreeze()
    return seconds


def _append_blocks(subject: Subject, events: list[NewEvent], size: int) -> list[Callable[[], Any]]:
    batches = [events[i : i + size] for i in range(0, len(events), size)]
    per_block = max(1, len(batches) // BLOCKS)

    def block(chunk: list[list[NewEvent]]) -> Callable[[], None]:
        def go() -> None:
            for batch in chunk:
                subject.append(batch)

        return go

    return [block(batches[i : i + per_block]) for i in range(0, len(batches), per_block)]


def _replay_blocks(subject: Subject, expected: int) -> tuple[list[Callable[[], Any]], list[int]]:
    """The replay in ``BLOCKS`` parts: each part reads the next tenth of the log from the one iterator."""
    events = subject.iterate()
    counted = [0]
    step = max(1, expected // BLOCKS)

    def part() -> None:
        for _ in range(step):
            if next(events, None) is None:
                return
            counted[0] += 1

    return [part for _ in range(BLOCKS + 1)], counted


def one_round(subjects: dict[str, Subject], sizes: Sizes) -> dict[str, dict[str, float]]:
    """Every metric of every store, each on its fresh database, the stores taking turns block by block."""
    figures: dict[str, dict[str, float]] = {name: {} for name in subjects}
    for metric, count, size in (
        ("single", sizes.single, 1),
        ("batch100", sizes.batch100, 100),
        ("batch500", sizes.batch500, 500),
    ):
        actions = {}
        for name, subject in subjects.items():
            events = make_events(count, tag=f"{uuid.uuid4().hex[:6]}{metric}")
            actions[name] = _append_blocks(subject, events if size == 1 else interleave(events), size)
        for name, seconds in _timed_blocks(actions).items():
            figures[name][metric] = _rate(count, seconds)
    written = sizes.single + sizes.batch100 + sizes.batch500
    for subject in subjects.values():
        if written < sizes.replay:  # top up, untimed
            extra = interleave(make_events(sizes.replay - written, tag=f"{uuid.uuid4().hex[:6]}r"))
            for start in range(0, len(extra), 500):
                subject.append(extra[start : start + 500])
    replays = {name: _replay_blocks(subject, max(written, sizes.replay)) for name, subject in subjects.items()}
    for name, seconds in _timed_blocks({name: blocks for name, (blocks, _) in replays.items()}).items():
        count = replays[name][1][0]
        assert count >= sizes.replay, (name, count)
        figures[name]["replay"] = _rate(count, seconds)
    ours = {name: subject for name, subject in subjects.items() if isinstance(subject, RelaybusSubject)}
    for metric in ("rebuild", "verify"):
        # Three times each, the stores taking turns (keyed and unkeyed verify are compared): the median.
        rates: dict[str, list[float]] = {name: [] for name in ours}
        for _ in range(3 if metric == "verify" else 1):
            for name, subject in ours.items():
                done, seconds = _timed(subject.rebuild if metric == "rebuild" else subject.verify)
                rates[name].append(_rate(done, seconds))
        for name, measured in rates.items():
            figures[name][metric] = statistics.median(measured)
    return figures


def _postgres_available() -> bool:
    try:
        engine = create_engine(POSTGRES_URL)
        with engine.connect():
            pass
        engine.dispose()
        return True
    except Exception:  # no server: the PostgreSQL stores are left out
        return False


def run(quick: bool = False, *, rounds: int = ROUNDS, stores: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Every store, ``rounds`` interleaved rounds; medians per store and metric, and the ratios.

    Returns ``{"stores": {store: {metric: events/s}}, "rounds": {store: [per-round figures]},
    "ratios": {"store_vs_eventsourcing_<db>_<metric>": relaybus / eventsourcing}}``.
    """
    sizes = QUICK if quick else FULL
    chosen = [s for s in (stores or tuple(STORES)) if s in STORES]
    if not _postgres_available():
        chosen = [s for s in chosen if STORES[s][0] != "postgresql"]
    per_round: dict[str, list[dict[str, float]]] = {s: [] for s in chosen}
    with tempfile.TemporaryDirectory(prefix="estore-bench-") as tmp:
        for _ in range(rounds):
            with ExitStack() as stack:
                subjects: dict[str, Subject] = {}
                for name in chosen:
                    database, factory = STORES[name]
                    schema = stack.enter_context(_database(database, POSTGRES_URL))
                    subjects[name] = factory(Path(tmp), schema)
                    stack.callback(subjects[name].close)
                for name, figures in one_round(subjects, sizes).items():
                    per_round[name].append(figures)
    medians = {
        name: {metric: statistics.median(r[metric] for r in results) for metric in results[0]}
        for name, results in per_round.items()
        if results
    }
    ratios: dict[str, float] = {}
    for db in ("sqlite", "postgresql"):
        ours, theirs = medians.get(f"relaybus_{db}"), medians.get(f"eventsourcing_{db}")
        if ours and theirs:
            for metric in METRICS:
                ratios[f"store_vs_eventsourcing_{db}_{metric}"] = round(ours[metric] / theirs[metric], 3)
    for db in ("sqlite", "postgresql"):
        unkeyed, keyed = medians.get(f"relaybus_{db}"), medians.get(f"relaybus_{db}_keyed")
        if unkeyed and keyed:
            for metric in (*METRICS, "verify"):
                ratios[f"keyed_vs_unkeyed_{db}_{metric}"] = round(keyed[metric] / unkeyed[metric], 3)
    full, theirs_sqlite = medians.get("relaybus_sqlite_full"), medians.get("eventsourcing_sqlite")
    if full and theirs_sqlite:
        for metric in METRICS:
            ratios[f"store_vs_eventsourcing_sqlite_full_{metric}"] = round(full[metric] / theirs_sqlite[metric], 3)
    return {"sizes": sizes.__dict__, "rounds": per_round, "stores": medians, "ratios": ratios}


@contextmanager
def _database(database: str, admin_url: str) -> Iterator[str | None]:
    if database == "postgresql":
        with temporary_schema(admin_url) as schema:
            yield schema
    else:
        yield None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv`` without the program name; None: ``sys.argv[1:]``)."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.eventstore_bench",
        description=(__doc__ or "").splitlines()[0],
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"small sizes ({QUICK.single} single, {QUICK.batch100} batch100, {QUICK.batch500} batch500, "
        f"{QUICK.replay} replay events) instead of the full ones",
    )
    parser.add_argument(
        "--stores",
        type=lambda value: tuple(name for name in value.split(",") if name),
        default=None,
        metavar="NAME,NAME,...",
        help=f"the stores to measure, comma-separated (default: all): {', '.join(STORES)}",
    )
    parser.add_argument(
        "--rounds", type=int, default=ROUNDS, help=f"interleaved rounds, the median kept (default: {ROUNDS})"
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.stores or () if name not in STORES]
    if unknown:
        parser.error(f"unknown store(s): {', '.join(unknown)} (known: {', '.join(STORES)})")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    stores: tuple[str, ...] | None = args.stores
    if stores is None or any(name.startswith("eventsourcing") for name in stores):
        ensure_peers()
    result = run(quick=args.quick, rounds=args.rounds, stores=stores)
    metrics = sorted({m for figures in result["stores"].values() for m in figures}, key=_metric_order)
    print(f"{'store':<26}" + "".join(f"{m:>12}" for m in metrics))
    for name, figures in result["stores"].items():
        print(f"{name:<26}" + "".join(f"{figures.get(m, 0):>12,.0f}" for m in metrics))
    for name, ratio in result["ratios"].items():
        print(f"{name:<48}{ratio:>8.2f}")


def _metric_order(metric: str) -> int:
    order = (*METRICS, "rebuild", "verify")
    return order.index(metric) if metric in order else len(order)


if __name__ == "__main__":
    main()
