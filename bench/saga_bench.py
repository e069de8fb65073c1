"""Benchmark: relaybus sagas against celery-saga 0.1.1, the same four no-op steps, interleaved rounds.

::

    python -m bench.saga_bench [--sagas 50] [--alone 20] [--rounds 4] [--postgres URL]

Four variants, each with one prefork worker of concurrency 4 on the same RabbitMQ, measured round by
round in a rotating order so that the load of the shared machine falls on all of them alike:

* **relaybus, SQLite log** and **relaybus, PostgreSQL log** (a schema of its own): the saga
  ``bench_noop_saga`` of :mod:`bench.saga_steps`, in a namespace of its own; the worker consumes the
  steps' queue and the system queue;
* **celery-saga, defaults** and **celery-saga, matched** (:mod:`bench.saga_peer`): its own queue and
  Redis prefix; *matched* gives it relaybus's delivery guarantees (late ack, prefetch 1, persistent
  messages, publisher confirms). Its worker and client run in processes that never import relaybus.

Per variant and round: the worker's CPU time per saga (its main process and pool, from ``/proc``);
**under load**, ``n`` sagas started back to back (``starts_per_s`` is the
client's rate) and sagas per second from the first start to the last end; **alone**, sagas one after
another, p50/p95 of their duration. Both for the success path and for the failure path (the last step
fails for good; the three before it are compensated, last first), where ``failure_to_compensated`` runs
from the failed step's end to the saga's compensated end. Times come from each system's own record
(relaybus: the event log's ``occurred_at``; celery-saga: its state document's timestamps). The figures
are medians over rounds; ``saga_vs_celery_saga_<metric>`` is relaybus / celery-saga (rates: higher is
better; times: lower is better), against *matched* and against *defaults*.

relaybus's run also says where a saga's time goes (``breakdown``, from the log of the alone sagas)
and how many events and messages one saga costs. Everything made (queues, exchanges, Redis keys, the
PostgreSQL schema) is deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from kombu import Connection
from sqlalchemy import create_engine, text

from bench.peers import ensure_peers
from bench.saga_steps import AGENT, NAME
from relaybus.celery import create_app, topology_of
from relaybus.eventstore import EventStore, RecordedEvent, open_store
from relaybus.sagas import saga_stream
from relaybus.settings import Settings, get_settings
from relaybus.tasks.saga import repository, start_saga
from relaybus.workers import WorkerProcess, worker_argv

ROOT = Path(__file__).resolve().parents[1]
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
VARIANTS = ("relaybus_sqlite", "relaybus_postgresql", "celery_saga_defaults", "celery_saga_matched")
ENDS = ("saga.completed", "saga.compensated", "saga.compensation_failed")
#: The figures compared, and whether more is better.
METRICS: dict[str, bool] = {
    "success_sagas_per_s": True,
    "success_p50_ms": False,
    "success_p95_ms": False,
    "failure_sagas_per_s": True,
    "failure_p50_ms": False,
    "failure_p95_ms": False,
    "failure_to_compensated_p50_ms": False,
    "failure_to_compensated_p95_ms": False,
    "starts_per_s": True,
    "worker_cpu_ms_per_saga": False,
}
CONCURRENCY = 4
#: As bench.saga_peer's (not imported: celery-saga stays out of this process): how often the driver looks for ended
#: sagas, alone and under load. Times come from the sagas' records, so this only sets what the looking costs.
POLL_ALONE_S = 0.02
POLL_LOADED_S = 0.02


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100), nearest-rank."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def _ms(start: datetime, end: datetime) -> float:
    return (end - start).total_seconds() * 1000


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


def group_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of the process group ``pgid``
    (a worker started in a session of its own: its main process and its pool)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid:  # pgrp; after the command come state, ppid, pgrp, ...
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def _broker(broker_url: str) -> Any:
    """A connection to the broker (kombu's classes are only partly typed)."""
    return Connection(broker_url)  # type: ignore[no-untyped-call]


def _has_consumer(broker_url: str, queue: str) -> bool:
    return _consumers(broker_url, queue) > 0


def _consumers(broker_url: str, queue: str) -> int:
    with _broker(broker_url) as conn:
        try:
            return int(conn.default_channel.queue_declare(queue=queue, passive=True)[2])
        except Exception:
            return 0


# -- relaybus ----------------------------------------------------------------------------------------


@dataclass
class Relaybus:
    """One relaybus variant: its app (namespace), event store and worker."""

    name: str
    app: Celery
    store: EventStore
    worker: WorkerProcess

    def start(self, fail: bool) -> str:
        return start_saga(NAME, {"n": 1, "fail": fail}, app=self.app)

    def ended(self, ids: list[str], after: int, timeout: float, interval: float) -> None:
        """Wait until every saga of ``ids`` has ended: two queries per poll, whatever the number of sagas."""
        want = {saga_stream(i) for i in ids}
        seen: set[str] = set()
        deadline = time.monotonic() + timeout
        while True:
            for type_ in ENDS:
                seen.update(r.stream_id for r in self.store.find(type=type_, after_position=after, limit=10_000))
            if want <= seen:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(want - seen)} relaybus sagas did not end in {timeout}s ({self.name})")
            time.sleep(interval)

    def records(self, saga_id: str) -> list[RecordedEvent]:
        return self.store.read_stream(saga_stream(saga_id))

    def times(self, saga_id: str, fail: bool) -> tuple[datetime, datetime, float | None]:
        records = self.records(saga_id)
        end = records[-1]
        want = "saga.compensated" if fail else "saga.completed"
        if end.type != want:
            raise AssertionError(f"relaybus saga {saga_id} ended {end.type}, expected {want}")
        recovery = None
        if fail:
            (failed,) = [r for r in records if r.type == "saga.step.failed"]
            recovery = _ms(failed.occurred_at, end.occurred_at)
        return records[0].occurred_at, end.occurred_at, recovery

    def alone(self, count: int, *, fail: bool) -> dict[str, Any]:
        totals, recoveries, ids = [], [], []
        for _ in range(count):
            after = self.store.last_position()
            saga_id = self.start(fail)
            self.ended([saga_id], after, 60, POLL_ALONE_S)
            began, end, recovery = self.times(saga_id, fail)
            totals.append(_ms(began, end))
            ids.append(saga_id)
            if recovery is not None:
                recoveries.append(recovery)
        figures: dict[str, Any] = {"p50_ms": percentile(totals, 50), "p95_ms": percentile(totals, 95)}
        if fail:
            figures |= {
                "failure_to_compensated_p50_ms": percentile(recoveries, 50),
                "failure_to_compensated_p95_ms": percentile(recoveries, 95),
            }
        figures["_ids"] = ids
        return figures

    def loaded(self, n: int, *, fail: bool) -> dict[str, Any]:
        after = self.store.last_position()
        began = time.perf_counter()
        ids = [self.start(fail) for _ in range(n)]
        starting = time.perf_counter() - began
        self.ended(ids, after, 300, POLL_LOADED_S)
        spans = [self.times(i, fail) for i in ids]
        first = min(s[0] for s in spans)
        last = max(s[1] for s in spans)
        return {
            "sagas": n,
            "sagas_per_s": n / (last - first).total_seconds(),
            "starts_per_s": n / starting,
            "loaded_p50_ms": statistics.median(_ms(s[0], s[1]) for s in spans),
        }

    def round(self, n: int, count: int) -> dict[str, Any]:
        cpu = group_cpu_s(self.worker.proc.pid)
        figures: dict[str, Any] = {
            "success": self.loaded(n, fail=False) | self.alone(count, fail=False),
            "compensation": self.loaded(n, fail=True) | self.alone(count, fail=True),
        }
        figures["worker_cpu_ms_per_saga"] = (group_cpu_s(self.worker.proc.pid) - cpu) * 1000 / (2 * (n + count))
        return figures

    def cost(self, saga_id: str) -> dict[str, int]:
        """What one saga wrote and sent: events in its correlation (saga and task records), messages."""
        events = self.store.by_correlation(saga_id)
        return {
            "events": len(events),
            "saga_events": sum(e.type.startswith("saga.") for e in events),
            "messages": sum(e.type == "task.sent" for e in events),
        }

    def breakdown(self, saga_ids: list[str]) -> dict[str, float]:
        """Where a step's time goes, mean ms per step over ``saga_ids``: from ``saga.step.started`` (the
        decision that sent it) to the step's ``task.started`` (publish, queue, delivery), to its
        ``task.succeeded`` (fence and run), to the saga's ``saga.step.succeeded`` (recording the outcome,
        deciding, and before that the callback's hop when there was one)."""
        to_start, run, advance, whole = [], [], [], []
        for saga_id in saga_ids:
            events = self.store.by_correlation(saga_id)
            by_task: dict[tuple[str | None, str], datetime] = {(e.task_id, e.type): e.occurred_at for e in events}
            for started in (e for e in events if e.type == "saga.step.started"):
                done = next(
                    (e for e in events if e.type == "saga.step.succeeded" and e.task_id == started.task_id), None
                )
                task_started = by_task.get((started.task_id, "task.started"))
                task_done = by_task.get((started.task_id, "task.succeeded"))
                if done is None or task_started is None or task_done is None:
                    continue
                to_start.append(_ms(started.occurred_at, task_started))
                run.append(_ms(task_started, task_done))
                advance.append(_ms(task_done, done.occurred_at))
                whole.append(_ms(started.occurred_at, done.occurred_at))
        mean = statistics.fmean
        return {
            "step_ms": mean(whole),
            "sent_to_started_ms": mean(to_start),
            "started_to_succeeded_ms": mean(run),
            "succeeded_to_saga_advanced_ms": mean(advance),
            "steps": len(whole),
        }


def _relaybus_settings(base: Settings, url: str) -> Settings:
    return base.model_copy(
        update={
            "namespace": f"bsaga{uuid.uuid4().hex[:8]}",
            "eventstore_url": url,
            "record_events": True,
            "llm_provider": "offline",
            "extra_modules": (*base.extra_modules, "bench.saga_steps"),
            "extra_agents": (*base.extra_agents, AGENT),
        }
    )


@contextmanager
def relaybus_variant(name: str, base: Settings, workdir: Path, postgres: str | None) -> Iterator[Relaybus]:
    schema = f"bench_saga_{uuid.uuid4().hex[:8]}" if postgres else None
    admin = create_engine(postgres) if postgres else None
    with ExitStack() as undo:
        if postgres and schema and admin is not None:
            with admin.begin() as conn:
                conn.execute(text(f'CREATE SCHEMA "{schema}"'))

            def drop() -> None:
                assert admin is not None
                with admin.begin() as conn:
                    conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
                admin.dispose()

            undo.callback(drop)
            open_store(postgres, schema=schema, create=True).close()
            url = f"{postgres}?options=-csearch_path%3D{schema}"
        else:
            url = f"sqlite:///{workdir / f'{name}.sqlite'}"
        settings = _relaybus_settings(base, url)
        app = create_app(settings)
        app.loader.import_default_modules()
        topology = topology_of(app)
        with app.connection_for_write() as conn:
            topology.declare(conn)

        def delete_namespace() -> None:
            with app.connection_for_write() as conn:
                topology.delete(conn)

        undo.callback(delete_namespace)
        argv = worker_argv(
            topology, [AGENT, "system"], concurrency=CONCURRENCY, hostname=f"{name}@%h", loglevel="WARNING"
        )
        worker = WorkerProcess(
            [*argv, "--without-mingle", "--without-gossip"], settings, workdir / f"{name}.log", cwd=ROOT
        )
        undo.callback(worker.stop)
        for agent in (AGENT, "system"):
            queue = topology.queue_name(agent)
            _wait(partial(_has_consumer, settings.broker_url, queue), 60, f"a consumer on {queue}")
        store = repository(app).store
        yield Relaybus(name, app, store, worker)


# -- celery-saga -------------------------------------------------------------------------------------


@dataclass
class Peer:
    """One celery-saga variant: its environment (queue, Redis prefix, delivery options) and worker."""

    name: str
    env: dict[str, str]
    pid: int

    def round(self, n: int, count: int) -> dict[str, Any]:
        cpu = group_cpu_s(self.pid)
        done = subprocess.run(
            [sys.executable, "-m", "bench.saga_peer", "drive", "--sagas", str(n), "--alone", str(count)],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=900,
        )
        if done.returncode != 0:
            raise RuntimeError(f"celery-saga ({self.name}) failed:\n{done.stderr[-4000:]}")
        figures: dict[str, Any] = json.loads(done.stdout)
        figures["worker_cpu_ms_per_saga"] = (group_cpu_s(self.pid) - cpu) * 1000 / (2 * (n + count))
        return figures


@contextmanager
def peer_variant(name: str, matched: bool, settings: Settings, workdir: Path) -> Iterator[Peer]:
    tag = f"csaga{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "CSAGA_QUEUE": tag,
        "CSAGA_PREFIX": f"{tag}:",
        "CSAGA_MATCHED": "1" if matched else "0",
        "CSAGA_BROKER": settings.broker_url,
        "CSAGA_REDIS": settings.result_backend,
    }
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "bench.saga_peer",
        "worker",
        "-Q",
        tag,
        "-c",
        str(CONCURRENCY),
        "-P",
        "prefork",
        "-l",
        "WARNING",
        "--without-mingle",
        "--without-gossip",
        "--without-heartbeat",
        "-n",
        f"{tag}@%h",
    ]
    log = open(workdir / f"{name}.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait(partial(_has_consumer, settings.broker_url, tag), 60, f"a consumer on {tag}")
        yield Peer(name, env, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(20)
        log.close()
        with _broker(settings.broker_url) as conn:
            conn.default_channel.queue_delete(tag)
            conn.default_channel.exchange_delete(tag)
        client = redis.Redis.from_url(settings.result_backend)
        keys = list(client.scan_iter(match=f"{tag}:*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
        client.close()


# -- the run -----------------------------------------------------------------------------------------


def _flat(r: dict[str, Any]) -> dict[str, float]:
    s, c = r["success"], r["compensation"]
    return {
        "success_sagas_per_s": s["sagas_per_s"],
        "success_p50_ms": s["p50_ms"],
        "success_p95_ms": s["p95_ms"],
        "failure_sagas_per_s": c["sagas_per_s"],
        "failure_p50_ms": c["p50_ms"],
        "failure_p95_ms": c["p95_ms"],
        "failure_to_compensated_p50_ms": c["failure_to_compensated_p50_ms"],
        "failure_to_compensated_p95_ms": c["failure_to_compensated_p95_ms"],
        "starts_per_s": statistics.fmean([s["starts_per_s"], c["starts_per_s"]]),
        "worker_cpu_ms_per_saga": r["worker_cpu_ms_per_saga"],
    }


def ratios(ours: dict[str, float], peer: dict[str, float]) -> dict[str, float]:
    """``saga_vs_celery_saga_<metric>``: relaybus / celery-saga."""
    return {f"saga_vs_celery_saga_{m}": ours[m] / peer[m] for m in METRICS if peer.get(m)}


def run(
    n: int = 50,
    *,
    alone: int = 20,
    rounds: int = 4,
    postgres: str | None = PG_URL,
    base: Settings | None = None,
) -> dict[str, Any]:
    """Start the four variants, measure ``rounds`` interleaved rounds, stop and clean up; the figures."""
    base = base or get_settings()
    workdir = Path(tempfile.mkdtemp(prefix="relaybus-saga-bench-"))
    per_round: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    with ExitStack() as stack:
        variants: dict[str, Relaybus | Peer] = {
            "relaybus_sqlite": stack.enter_context(relaybus_variant("relaybus_sqlite", base, workdir, None)),
            "celery_saga_defaults": stack.enter_context(peer_variant("celery_saga_defaults", False, base, workdir)),
            "celery_saga_matched": stack.enter_context(peer_variant("celery_saga_matched", True, base, workdir)),
        }
        if postgres:
            variants["relaybus_postgresql"] = stack.enter_context(
                relaybus_variant("relaybus_postgresql", base, workdir, postgres)
            )
        names = [v for v in VARIANTS if v in variants]
        for name in names:  # warm up: imports, connections, tables; not counted
            variants[name].round(3, 2)
        last: dict[str, dict[str, Any]] = {}
        for index in range(rounds):
            order = names[index % len(names) :] + names[: index % len(names)]
            for name in order:
                result = variants[name].round(n, alone)
                per_round[name].append(_flat(result))
                last[name] = result
        extra: dict[str, Any] = {}
        for name in names:
            variant = variants[name]
            if isinstance(variant, Relaybus):
                ok_ids, fail_ids = last[name]["success"]["_ids"], last[name]["compensation"]["_ids"]
                extra[name] = {
                    "success_cost": variant.cost(ok_ids[0]),
                    "failure_cost": variant.cost(fail_ids[0]),
                    "breakdown": variant.breakdown(ok_ids),
                }
    figures = {
        name: {m: statistics.median(r[m] for r in rounds_) for m in METRICS}
        for name, rounds_ in per_round.items()
        if rounds_
    }
    compared: dict[str, dict[str, dict[str, float]]] = {}
    for ours in ("relaybus_sqlite", "relaybus_postgresql"):
        if ours in figures:
            compared[ours] = {
                "vs_matched": ratios(figures[ours], figures["celery_saga_matched"]),
                "vs_defaults": ratios(figures[ours], figures["celery_saga_defaults"]),
            }
    return {
        "sagas_under_load": n,
        "sagas_alone": alone,
        "rounds": rounds,
        "concurrency": CONCURRENCY,
        "figures": figures,
        "ratios": compared,
        "relaybus": extra,
        "per_round": per_round,
    }


def table(r: dict[str, Any]) -> str:
    """The figures as a markdown table, then the ratios."""
    header = ["variant", *METRICS]
    lines = [" | ".join(header), " | ".join("---" for _ in header)]
    for name, f in r["figures"].items():
        lines.append(" | ".join([name, *(f"{f[m]:.1f}" for m in METRICS)]))
    lines.append("")
    for ours, against in r["ratios"].items():
        for peer, values in against.items():
            lines.append(
                f"{ours} {peer}: "
                + ", ".join(f"{k.removeprefix('saga_vs_celery_saga_')} {v:.2f}" for k, v in values.items())
            )
    for name, extra in r["relaybus"].items():
        lines.append(f"{name}: {json.dumps(extra)}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sagas", type=int, default=50, help="sagas started at once, per path and round")
    parser.add_argument("--alone", type=int, default=20, help="sagas run one after another, per path and round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--postgres", default=PG_URL, help="PostgreSQL for relaybus's second variant ('' to skip)")
    parser.add_argument("--json", default="", help="also write the figures to this file")
    args = parser.parse_args()
    ensure_peers()
    r = run(args.sagas, alone=args.alone, rounds=args.rounds, postgres=args.postgres or None)
    print(table(r))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2, default=str))


if __name__ == "__main__":
    main()
