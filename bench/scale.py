"""The event store at scale: append rate and every CLI query's time with 0, 1 M and 5 M events in the log.

    python -m bench.scale [--quick] [--sizes=0,1000000,5000000] [--only=sqlite|postgresql] [--appends-only]

The log is filled directly (``executemany`` on SQLite, ``COPY`` on PostgreSQL, the store's own
insert), not through ``append``, with rows shaped like a busy deployment's: pipelines of 60 events
in one correlation id and stream (``pipeline.started``, eleven tasks' lifecycles with LLM calls,
published events, an outcome), one in ten with a saga of its own stream, a few failed, retried,
dead-lettered or still open; times spread over 30 days, hash chains valid.

At each size: the append rate (batches of 100, as a group commit writes, to new and existing
streams), measured in rounds interleaved with the same appends to an empty reference log on the
same database, so ``append_vs_empty`` is a same-run ratio; then each query behind the CLI, the
median of a few runs, in milliseconds. SQLite uses a temporary file, PostgreSQL a schema of its
own; both are removed after.
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bench.eventstore_bench import POSTGRES_URL, temporary_schema
from relaybus.eventstore import EventStore, NewEvent, open_store
from relaybus.eventstore import types as t
from relaybus.eventstore._insert import insert_rows, time_binder
from relaybus.eventstore.hashing import event_hash_of_json, format_time
from relaybus.tasks.runtime.recording.records import event_id as derived_id

SIZES = (0, 1_000_000, 5_000_000)
QUICK_SIZES = (0, 20_000, 100_000)
AGENTS = ("planner", "researcher", "writer", "critic", "editor", "reviewer")
PIPELINES = ("research", "triage", "digest")
SPAN = timedelta(days=30)
CHUNK = 20_000
PER_PIPELINE = 60


# -- filling the log -------------------------------------------------------------------------------------


def _pipeline(rng: random.Random, n: int) -> list[dict[str, Any]]:
    """One pipeline's events (content fields, in order), 60 of them, plus a saga's for one in ten."""
    cid = f"pl-{n:08d}-{rng.getrandbits(32):08x}"
    events: list[dict[str, Any]] = [
        {
            "type": t.PIPELINE_STARTED,
            "payload": {"pipeline": PIPELINES[n % len(PIPELINES)], "deadline_s": 600, "input": {"topic": f"t{n}"}},
        }
    ]
    failed = rng.random() < 0.02
    for k in range(11):
        agent = AGENTS[(n + k) % len(AGENTS)]
        task = f"{cid}-t{k:02d}"
        common = {"task_id": task, "agent": agent, "queue": f"agents.{agent}", "attempt": 1}
        events += [
            {**common, "type": t.TASK_SENT, "payload": {"args": {"step": k}}},
            {**common, "type": t.TASK_RECEIVED, "payload": {}},
            {**common, "type": t.TASK_STARTED, "payload": {}},
            {**common, "type": t.LLM_COMPLETED, "payload": {"model": "m", "tokens": {"input": 812, "output": 240}}},
        ]
        if failed and k == 10:
            events.append({**common, "type": t.TASK_FAILED, "payload": {"error": "ValueError: bad"}})
        elif rng.random() < 0.005:
            events.append({**common, "type": t.TASK_DEAD_LETTERED, "payload": {"error": "Timeout"}})
        else:
            events.append({**common, "type": t.TASK_SUCCEEDED, "payload": {"result": {"summary": "lorem ipsum " * 6}}})
    events += [{"type": t.EVENT_PUBLISHED, "payload": {"topic": "research.done", "n": i}} for i in range(3)]
    open_ = rng.random() < 0.01
    if not open_:
        events.append({"type": t.PIPELINE_FAILED if failed else t.PIPELINE_COMPLETED, "payload": {"ok": not failed}})
    for e in events:
        e["correlation_id"] = e["stream_id"] = cid
    if n % 10 == 0:
        saga = f"saga:{cid}-s"
        steps = [{"type": t.SAGA_STARTED, "payload": {"saga": "booking", "saga_id": f"{cid}-s"}}]
        for step in ("reserve", "charge", "ship"):
            steps += [
                {"type": t.SAGA_STEP_STARTED, "payload": {"step": step, "member": step, "attempt": 1}},
                {"type": t.SAGA_STEP_SUCCEEDED, "payload": {"step": step, "member": step, "attempt": 1}},
            ]
        steps.append({"type": t.SAGA_COMPLETED, "payload": {}})
        events += [{**e, "stream_id": saga, "correlation_id": cid} for e in steps]
    return events


def _rows(start_position: int, count: int, seed: int, dialect: str, start: datetime) -> Iterator[tuple[Any, ...]]:
    """``count`` rows from ``start_position`` on, in :data:`eventstore._insert.COLUMNS` order, chained."""
    rng = random.Random(seed)
    bind = time_binder(dialect)
    step = SPAN / max(count, 1)
    position, n = start_position, seed * 10_000_000
    heads: dict[str, tuple[int, str | None]] = {}
    while position < start_position + count:
        for e in _pipeline(rng, n):
            if position >= start_position + count:
                break
            at = start + step * (position - start_position)
            version, prev = heads.get(e["stream_id"], (0, None))
            fields = {
                "event_id": uuid.UUID(int=rng.getrandbits(128)).hex, "stream_id": e["stream_id"],
                "version": version + 1, "type": e["type"], "schema_version": 1,
                "correlation_id": e["correlation_id"], "causation_id": None, "occurred_at": at,
                "recorded_at": at, "task_id": e.get("task_id"), "agent": e.get("agent"),
                "queue": e.get("queue"), "priority": 5 if e.get("task_id") else None,
                "attempt": e.get("attempt"), "worker_host": "w1" if e.get("task_id") else None,
            }  # fmt: skip
            payload = _json(e["payload"])
            digest = event_hash_of_json(fields, payload, "{}", prev, format_time(at))
            heads[e["stream_id"]] = (version + 1, digest)
            f = fields
            yield (
                position, f["event_id"], f["stream_id"], f["version"], f["type"], 1, f["correlation_id"], None,
                bind(at), bind(at), f["task_id"], f["agent"], f["queue"], f["priority"], f["attempt"],
                f["worker_host"], payload, "{}", digest, prev, None,  # key_id: a legacy (pre-0005) link
            )  # fmt: skip
            position += 1
        n += 1
        if len(heads) > 50_000:
            heads.clear()  # finished pipelines' streams: never written again


def _json(value: Any) -> str:
    from relaybus.eventstore.hashing import canonical_json

    return canonical_json(value)


def fill(store: EventStore, count: int, *, seed: int, start: datetime) -> float:
    """Add ``count`` generated events after the last position; returns the seconds it took."""
    started = time.perf_counter()
    first = store.last_position() + 1
    rows = _rows(first, count, seed, store.dialect, start)
    engine = store.engine
    while True:
        chunk = [row for _, row in zip(range(CHUNK), rows, strict=False)]
        if not chunk:
            break
        with engine.begin() as conn:
            insert_rows(conn, chunk, len(chunk))
    with engine.begin() as conn:
        if store.dialect == "postgresql":
            conn.execute(
                text("SELECT setval(pg_get_serial_sequence('events', 'position'), (SELECT max(position) FROM events))")
            )
            conn.execute(text("ANALYZE events"))
        else:
            conn.execute(text("ANALYZE"))
    return time.perf_counter() - started


# -- measuring -----------------------------------------------------------------------------------------------


def _new_events(n: int, streams: list[str], *, random_ids: bool = False) -> list[NewEvent]:
    """Half to existing streams (in order), half to new ones, task-shaped; ids the store's own (time-ordered)
    or, with ``random_ids``, UUIDv4s given by the caller (the ids relaybus made before, for comparison)."""
    out = []
    tag = uuid.uuid4().hex[:8]
    for i in range(n):
        stream = streams[i % len(streams)] if (i % 2 and streams) else f"new-{tag}-{i // 20}"
        out.append(
            NewEvent(
                stream_id=stream, type=t.TASK_STARTED, task_id=f"{stream}-x{i}", agent=AGENTS[i % len(AGENTS)],
                queue="agents.default", attempt=1, payload={"args": {"i": i}, "api_key": "sk-x"},
                **({"event_id": str(uuid.uuid4())} if random_ids else {}),
            )
        )  # fmt: skip
    return out


def _task_records(n: int, streams: list[str], *, time_ordered: bool) -> list[NewEvent]:
    """``n`` records of tasks' lives (sent, received, started, llm.completed, succeeded: five a task), half to
    existing streams, with the ids relaybus derives for them (:func:`tasks.runtime.recording.records.event_id`):
    time-ordered by the task's sent time (``time_ordered``, a message with ``x_sent_at``) or the plain uuid5
    of before (a message without it)."""
    out: list[NewEvent] = []
    tag = uuid.uuid4().hex[:8]
    task, sent_ms = "", 0
    for i in range(n):
        k = i % 5
        if k == 0:  # a new task, sent now (its records are written within moments of its send)
            task, sent_ms = str(uuid.uuid4()), time.time_ns() // 1_000_000
        parts = (("sent", 0, 0), ("received", "0:0:0"), ("started", "0:0:0"), ("llm", "0:0:0", "fp"), ("terminal", 0))
        stream = streams[i // 5 % len(streams)] if (i // 5 % 2 and streams) else f"new-{tag}-{i // 25}"
        out.append(
            NewEvent(
                event_id=derived_id(task, *parts[k], at_ms=sent_ms if time_ordered else None),
                stream_id=stream, type=_TASK_TYPES[k], task_id=task, agent=AGENTS[i // 5 % len(AGENTS)],
                queue="agents.default", attempt=1, payload={"args": {"i": i}, "api_key": "sk-x"},
            )
        )  # fmt: skip
    return out


_TASK_TYPES = (t.TASK_SENT, t.TASK_RECEIVED, t.TASK_STARTED, t.LLM_COMPLETED, t.TASK_SUCCEEDED)


def append_rate(store: EventStore, events: list[NewEvent], size: int = 100) -> float:
    started = time.perf_counter()
    for i in range(0, len(events), size):
        store.append(events[i : i + size])
    return len(events) / (time.perf_counter() - started)


def _timed_ms(action: Callable[[], Any], runs: int = 5) -> float:
    action()  # warm (plans, caches) once
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 2)


def queries(store: EventStore, now: datetime, start: datetime) -> dict[str, Callable[[], Any]]:
    """Each query behind the CLI, on rows that exist (a pipeline in the middle of the log)."""
    middle = store.last_position() // 2 or 1
    sample = store.read_all(middle, 200)
    pipeline = next((e.correlation_id for e in sample if e.stream_id.startswith("pl-")), "none")
    task = next((e.task_id for e in sample if e.task_id), "none")
    saga = next((e.stream_id for e in store.read_all(middle, 2000) if e.stream_id.startswith("saga:")), "saga:none")
    hour_at = sample[0].occurred_at if sample else now
    hour = (hour_at, hour_at + timedelta(hours=1))
    return {
        "timeline": lambda: store.timeline(pipeline),
        "events --type task.failed": lambda: store.find(type=t.TASK_FAILED),
        "events --type 'task.*'": lambda: store.find(type="task.*"),
        "events --agent researcher": lambda: store.find(agent="researcher"),
        "events --status dead_lettered": lambda: store.find(status="dead_lettered"),
        "events --correlation-id": lambda: store.find(correlation_id=pipeline),
        "events --since/--until (1 h)": lambda: store.find(since=hour[0], until=hour[1]),
        "events --since (10 days back, no --until)": lambda: store.find(since=now - timedelta(days=10)),
        "events --type task.failed --since (1 h)": lambda: store.find(type=t.TASK_FAILED, since=hour[0]),
        "stats --since/--until (1 h)": lambda: store.agent_stats(hour[0], hour[1]),
        "saga show (read_stream)": lambda: store.read_stream(saga),
        "saga lifecycle page (find type, limit 1000)": lambda: store.find(type=t.SAGA_STARTED, limit=1000),
        "dlq: redeliveries of a task": lambda: store.find(type=t.TASK_REDELIVERED, task_id=task, limit=10_000),
        "dlq: first failure of a workflow": lambda: store.find(type=t.TASK_FAILED, correlation_id=pipeline, limit=1),
        "dlq: task.sent of a task": lambda: store.find(type=t.TASK_SENT, task_id=task, limit=1),
        "newest event of a workflow": lambda: store.find(correlation_id=pipeline, newest_first=True, limit=1),
        "workflows list": lambda: store.projection.workflows(limit=50),
        "workflows list --status failed": lambda: store.projection.workflows(status="failed", limit=50),
        "workflows list, by name (console)": lambda: store.projection.workflows(name=PIPELINES[1], limit=50),
        "workflows list, started in 1 day (console)": lambda: store.projection.workflows(
            started_since=hour[0], started_until=hour[0] + timedelta(days=1), limit=50
        ),
        "workflows list, name + status + 1 day (console)": lambda: store.projection.workflows(
            name=PIPELINES[1],
            status="completed",
            started_since=hour[0],
            started_until=hour[0] + timedelta(days=1),
            limit=50,
        ),
        "workflow names (console's datalist)": lambda: store.projection.names(),
        "workflows idle (running, idle 10 min)": lambda: store.projection.workflows(
            status="running", idle_since=now - timedelta(minutes=10), limit=50
        ),
        "workflows --stuck page (open pipelines, 1 day)": lambda: store.projection.open_workflows(
            opened_by=t.PIPELINE_STARTED, closed_by=t.PIPELINE_OUTCOME_TYPES, since=now - timedelta(days=1), limit=1000
        ),
    }


@contextmanager
def _database(kind: str, directory: Path, name: str) -> Iterator[EventStore]:
    if kind == "sqlite":
        store = open_store(f"sqlite:///{directory / f'{name}.sqlite'}")
        try:
            yield store
        finally:
            store.close()
    else:
        with temporary_schema(POSTGRES_URL) as schema:
            store = open_store(POSTGRES_URL, schema=schema, create=True)
            try:
                yield store
            finally:
                store.close()


def run_one(
    kind: str, sizes: tuple[int, ...], *, rounds: int = 3, n_append: int = 3000, appends_only: bool = False
) -> dict[str, Any]:
    now = datetime.now(UTC)
    start = now - SPAN - timedelta(hours=1)
    results: dict[str, Any] = {}
    with (
        tempfile.TemporaryDirectory(prefix="estore-scale-") as tmp,
        _database(kind, Path(tmp), "big") as big,
        _database(kind, Path(tmp), "empty") as empty,
    ):
        filled, seconds_total = 0, 0.0
        for size in sizes:
            if size > filled:
                seconds_total += fill(big, size - filled, seed=len(results) + 1, start=start)
                filled = size
            rebuild_started = time.perf_counter()
            big.projection.rebuild()
            rebuild_s = time.perf_counter() - rebuild_started
            existing = [e.stream_id for e in big.read_all(max(big.last_position() - 500, 0), 500)]
            ours, random_ids, reference, derived_old, derived_new, tasks_empty = [], [], [], [], [], []
            for _ in range(rounds):  # interleaved with the empty log's
                ours.append(append_rate(big, _new_events(n_append, existing)))
                random_ids.append(append_rate(big, _new_events(n_append, existing, random_ids=True)))
                derived_old.append(append_rate(big, _task_records(n_append, existing, time_ordered=False)))
                derived_new.append(append_rate(big, _task_records(n_append, existing, time_ordered=True)))
                reference.append(append_rate(empty, _new_events(n_append, [])))
                tasks_empty.append(append_rate(empty, _task_records(n_append, [], time_ordered=True)))
            timed = {} if appends_only else {name: _timed_ms(q) for name, q in queries(big, now, start).items()}
            results[str(size)] = {
                "events": big.last_position(),
                "fill_s": round(seconds_total, 1),
                "rebuild_s": round(rebuild_s, 1),
                "append_eps": round(statistics.median(ours), 1),
                "append_empty_eps": round(statistics.median(reference), 1),
                "append_vs_empty": round(statistics.median(ours) / statistics.median(reference), 3),
                # The same appends with random (UUIDv4) event ids, as relaybus made them before UUIDv7.
                "append_random_ids_vs_empty": round(statistics.median(random_ids) / statistics.median(reference), 3),
                # Task records with the ids relaybus derives (the uuid5 of before, and time-ordered by sent
                # time), against the same records appended to the empty log.
                "append_tasks_empty_eps": round(statistics.median(tasks_empty), 1),
                "append_uuid5_vs_empty": round(statistics.median(derived_old) / statistics.median(tasks_empty), 3),
                "append_derived_v7_vs_empty": round(statistics.median(derived_new) / statistics.median(tasks_empty), 3),
                "queries_ms": timed,
            }
    return results


def run(
    quick: bool = False,
    *,
    sizes: tuple[int, ...] | None = None,
    kinds: tuple[str, ...] = ("sqlite", "postgresql"),
    appends_only: bool = False,
) -> dict[str, Any]:
    chosen = sizes or (QUICK_SIZES if quick else SIZES)
    runs = {kind: run_one(kind, chosen, appends_only=appends_only) for kind in kinds}
    return {"sizes": list(chosen), "databases": runs}


def main(argv: list[str]) -> None:
    sizes = None
    kinds: tuple[str, ...] = ("sqlite", "postgresql")
    for arg in argv[1:]:
        if arg.startswith("--sizes="):
            sizes = tuple(int(s) for s in arg.split("=", 1)[1].split(","))
        elif arg.startswith("--only="):
            kinds = (arg.split("=", 1)[1],)
    result = run("--quick" in argv, sizes=sizes, kinds=kinds, appends_only="--appends-only" in argv)
    for kind, by_size in result["databases"].items():
        for size, f in by_size.items():
            print(
                f"\n{kind} at {int(size):,} events (filled in {f['fill_s']} s, rebuild {f['rebuild_s']} s): "
                f"append {f['append_eps']:,.0f}/s, empty log {f['append_empty_eps']:,.0f}/s, "
                f"ratio {f['append_vs_empty']:.2f} (with random UUIDv4 ids: {f['append_random_ids_vs_empty']:.2f}; "
                f"task records, uuid5 ids: {f['append_uuid5_vs_empty']:.2f}, "
                f"time-ordered derived ids: {f['append_derived_v7_vs_empty']:.2f})"
            )
            for name, ms in f["queries_ms"].items():
                flag = "" if ms < 50 else "   <-- over 50 ms"
                print(f"  {name:<48}{ms:>10.2f} ms{flag}")


if __name__ == "__main__":
    main(sys.argv)
