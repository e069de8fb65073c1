"""``python -m bench.recording_cpu [--n N] [--writers W] [--profile]``: the recording path's CPU per task, in one
process.

What a pool process spends recording one no-op agent task, without Celery, a broker or a worker: the records
of its start (the checked copy of ``task.sent``, ``task.received``, ``task.started``) built and held, then
written with ``task.succeeded`` in one append, as :class:`~tasks.runtime.recording.eventlog.EventRecorder`
does in a prefork child. The publisher's ``task.sent`` is stored first (outside the measure), as in the
throughput benchmark. Measured in process CPU time (``time.process_time``), so the figure holds on a
shared machine; the PostgreSQL figure leaves out the server's work and the round trips' waits. ``--writers 2``
alternates the tasks between two recorders (two connections), as two pool processes do: each then finds the
other's commits, which on SQLite drop its page cache. The tasks' messages carry what a client stamps on them (a
time-ordered correlation id and its sent time), so their records get time-ordered ids, as in a worker.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bench.throughput import _drop_schema, _postgres_schema
from relaybus.eventstore import open_store
from relaybus.eventstore.ids import uuid7_ms
from relaybus.tasks.runtime.context import CORRELATION_HEADER, SENT_AT_HEADER, new_id
from relaybus.tasks.runtime.recording import records
from relaybus.tasks.runtime.recording.eventlog import EventRecorder
from relaybus.tasks.runtime.recording.held import HeldStarts


class _Task(SimpleNamespace):
    name = "agents.bench_noop"
    spec = SimpleNamespace(name="bench_noop", start_records=None)


def _headers(task_id: str) -> dict[str, Any]:
    """What a client's publish stamps on a task's message (tasks.runtime.context.propagate_ids): a time-ordered
    correlation id and the sent time it gives, which orders the task's record ids (eventstore.ids)."""
    correlation = new_id()
    return {CORRELATION_HEADER: correlation, SENT_AT_HEADER: uuid7_ms(correlation)}


def _request(task_id: str, headers: dict[str, Any]) -> Any:
    # Celery moves a message's own headers onto its request, as attributes.
    return SimpleNamespace(
        id=task_id, retries=0, headers={}, hostname="celery@bench", group=None, eta=None, callbacks=None,
        errbacks=None, chain=None, chord=None, delivery_info={"routing_key": "bench.agents", "priority": 0,
                                                             "redelivered": False},
        correlation_id=task_id, causation_id=None, **headers,
    )


def _recorder(url: str) -> EventRecorder:
    """A prefork pool process's recorder (no group commit, no host writer) on ``url``."""
    recorder = EventRecorder.__new__(EventRecorder)
    recorder.store = open_store(url)
    recorder.host = "bench"
    recorder._group = None
    recorder.held = HeldStarts(recorder.store.append_new)
    recorder._writer = None
    return recorder


def measure(url: str, n: int, profile: str | None = None, writers: int = 1) -> float:
    """CPU ms per task for ``n`` tasks recorded through ``writers`` fresh recorders on ``url``, in turn; with
    ``profile`` (a pstats sort key), the profile of the measured part is printed."""
    recorders = [_recorder(url) for _ in range(writers)]
    recorder = recorders[0]
    task = _Task()
    kwargs = {"key": "bench", "n": 0, "work_ms": 0.0}
    ids = [str(uuid.uuid4()) for _ in range(n + 50)]
    stamped = {task_id: _headers(task_id) for task_id in ids}
    sent = []
    for task_id in ids:  # the publishers' task.sent, stored before the tasks run
        headers = {"task": task.name, "id": task_id, "retries": 0, "correlation_id": task_id, **stamped[task_id]}
        sent.append(records.sent(headers, [[], kwargs, {}], "bench.agents", 0, "client"))
    for chunk in range(0, len(sent), 500):
        recorder.store.append(sent[chunk : chunk + 500])

    def one(task_id: str, i: int) -> None:
        recorder = recorders[i % writers]
        request = _request(task_id, stamped[task_id])
        recorder.task_started(task, request, (), kwargs)
        recorder.task_succeeded(task, request, {"n": i}, 0.0001)

    for i, task_id in enumerate(ids[:50]):  # warm up: connections, prepared statements
        one(task_id, i)
    profiler = cProfile.Profile(time.process_time) if profile else None
    started = time.process_time()
    if profiler:
        profiler.enable()
    for i, task_id in enumerate(ids[50:]):
        one(task_id, i)
    if profiler:
        profiler.disable()
    spent = time.process_time() - started
    for each in recorders:
        each.store.close()
    if profiler and profile:
        pstats.Stats(profiler).sort_stats(profile).print_stats(40)
    return 1000 * spent / n


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.recording_cpu")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--writers", type=int, default=1, help="recorders taking turns (pool processes)")
    parser.add_argument("--profile", nargs="?", const="tottime", help="print a profile sorted by this key")
    parser.add_argument("--only", choices=("sqlite", "postgres"))
    args = parser.parse_args()
    figures: dict[str, list[float]] = {"sqlite": [], "postgres": []}
    for _ in range(args.rounds):
        for backend in ("sqlite", "postgres"):
            if args.only and backend != args.only:
                continue
            if backend == "sqlite":
                with tempfile.TemporaryDirectory() as tmp:
                    url = f"sqlite:///{Path(tmp) / 'e.sqlite'}"
                    figures[backend].append(measure(url, args.n, args.profile, args.writers))
            else:
                schema, url = _postgres_schema()
                try:
                    figures[backend].append(measure(url, args.n, args.profile, args.writers))
                finally:
                    _drop_schema(schema)
    for backend, values in figures.items():
        if values:
            print(f"{backend}: {' '.join(f'{v:.3f}' for v in values)} ms CPU per task (min {min(values):.3f})")


if __name__ == "__main__":
    main()
