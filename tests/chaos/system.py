"""A relaybus under chaos: real workers on the private services, a killer thread, the workloads, the verdict.

Every worker serves every agent of the reference pipeline and of the reference saga (so any worker
can take over from any other), with a small prefork pool. Pipelines and sagas are started through
their public clients (:func:`tasks.client.start`, :func:`tasks.saga.start_saga`) and followed to
their end, all within one deadline; what the end must be is decided by their input. The end is read
from the event log (the record), not from Redis (a cache that one of the tests restarts).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from celery import Celery
from sqlalchemy import Engine, create_engine, text

from relaybus.eventstore import EventStore, open_store
from relaybus.settings import Settings
from relaybus.tasks.agents.content_store import engine_for, live_items, saga_runs, set_fault
from relaybus.tasks.agents.pipeline_models import ResearchRequest, ReviewPolicy
from relaybus.tasks.bus.bus import declare_subscriptions, event_queue_name, subscribers
from relaybus.tasks.pipelines.client import start
from relaybus.tasks.runtime.context import new_id
from relaybus.tasks.runtime.system import SystemTask
from relaybus.tasks.runtime.task import AgentTask
from relaybus.tasks.saga import saga_status, start_saga
from tests.chaos.audit import Findings, audit
from tests.chaos.figures import Figures
from tests.harness import Worker, consumer_count, delete_namespace, make_app, make_settings, queue_depth, wait_for

AGENTS = ("system", "intake", "planner", "researcher", "writer", "reviewer", "publisher")
SAGA_ENDS = ("completed", "compensated", "compensation_failed")
T = TypeVar("T")


def served_subscribers() -> list[str]:
    """The subscribers the chaos workers serve (other tests' subscribers may be registered in this process)."""
    return [s for s in subscribers() if s in AGENTS]


def new_schema(postgres_url: str) -> str:
    """A fresh schema on the private cluster for the event log (and the saga's side-effect tables)."""
    schema = f"chaos_{uuid.uuid4().hex[:10]}"
    engine = create_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    open_store(postgres_url, schema=schema, create=True).close()
    return f"{postgres_url}?options=-csearch_path%3D{schema}"


def chaos_settings(tmp: Path, broker_url: str, redis_url: str, eventstore_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "eventstore_url": eventstore_url,
        "record_events": True,
        "extra_modules": (),
        "extra_agents": (),
        "max_retries": 5,
        "retry_backoff_s": 0.2,
        "retry_backoff_max_s": 2.0,
    }
    values.update(overrides)
    return make_settings(tmp, broker_url, redis_url, **values)


def edge_system(
    tmp: Path, broker_url: str, redis_url: str, postgres_url: str, **overrides: Any
) -> tuple[Settings, Celery, EventStore]:
    """Settings, app (its topology declared) and event store for the edge agents (tests.edge_agents) on the private
    services, with a fresh schema for the log; the caller closes the store and app."""
    settings = chaos_settings(
        tmp, broker_url, redis_url, new_schema(postgres_url),
        extra_modules=("tests.agents", "tests.edge_agents"), extra_agents=("probe", "flaky", "edgy"), **overrides,
    )
    app = make_app(settings)
    with app.connection_for_write() as conn:
        app.conf.relaybus_topology.declare(conn)
    return settings, app, open_store(settings.eventstore_url)


def retrying(call: Callable[[], T], deadline_s: float = 120.0) -> T:
    """``call()``, again until it stops raising (a service is restarting), within ``deadline_s``."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return call()
        except Exception:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.25)


@dataclass
class ChaosSystem:
    settings: Settings
    app: Celery
    store: EventStore
    content: Engine
    tmp: Path
    concurrency: int = 2
    workers: list[Worker] = field(default_factory=list)
    retired: list[Worker] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start_worker(self) -> Worker:
        worker = Worker(
            self.settings, AGENTS, self.tmp, concurrency=self.concurrency, name=f"chaos-{uuid.uuid4().hex[:6]}"
        )
        with self.lock:
            self.workers.append(worker)
        return worker

    def live_workers(self) -> list[Worker]:
        with self.lock:
            return [w for w in self.workers if w.proc.poll() is None]

    def ready_workers(self) -> list[Worker]:
        return [w for w in self.live_workers() if " ready." in w.log()]

    def retire(self, worker: Worker) -> None:
        with self.lock:
            if worker in self.workers:
                self.workers.remove(worker)
            self.retired.append(worker)

    def agent_tasks(self) -> set[str]:
        """The tasks whose every transition is recorded: agents and relaybus's system tasks."""
        return {name for name, task in self.app.tasks.items() if isinstance(task, AgentTask | SystemTask)}

    def queues(self) -> list[str]:
        ns = self.settings.namespace
        return [f"{ns}.{a}" for a in AGENTS] + [event_queue_name(ns, s) for s in served_subscribers()]

    def wait_consumed(self, timeout: float = 90.0) -> None:
        """Every agent queue and every subscriber's event queue has a consumer."""
        wait_for(
            lambda: all(consumer_count(self.app, q) > 0 for q in self.queues()),
            timeout,
            0.2,
            "a consumer on every queue",
        )

    def wait_idle(self, timeout: float = 60.0) -> None:
        """No message left in any queue: stray duplicates have run and recorded themselves."""
        wait_for(lambda: all(queue_depth(self.app, q) == 0 for q in self.queues()), timeout, 0.2, "idle queues")

    def logs(self, tail: int = 2500) -> str:
        return "\n".join(f"--- {w.name}\n{w.log()[-tail:]}" for w in [*self.retired, *self.workers][-6:])


@contextmanager
def chaos_system(settings: Settings, tmp: Path, *, workers: int = 3, concurrency: int = 2) -> Iterator[ChaosSystem]:
    app = make_app(settings)
    store = open_store(settings.eventstore_url)
    system = ChaosSystem(settings, app, store, engine_for(settings.eventstore_url), tmp, concurrency)
    try:
        with app.connection_for_write() as conn:
            app.conf.relaybus_topology.declare(conn)
        declare_subscriptions(app, served_subscribers())
        for _ in range(workers):
            system.start_worker()
        for worker in system.live_workers():
            worker.wait_ready(app, timeout=90)
        system.wait_consumed()
        yield system
    finally:
        for worker in [*system.workers, *system.retired]:
            worker.stop()
        with contextlib.suppress(Exception):
            delete_namespace(app)
        app.close()
        store.close()


# -- the killer ------------------------------------------------------------------------------------


def pool_children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def is_host_writer(pid: int) -> bool:
    """Whether ``pid`` is a worker's group-commit writer (tasks.runtime.recording.hostwriter)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"recording.writer_process" in f.read()
    except OSError:
        return False


class Killer(threading.Thread):
    """SIGKILLs a random worker every ``interval`` seconds and starts a replacement.

    Most kills take the whole worker (main process and pool: its connection drops and the broker
    redelivers what it held); ``child_share`` of them kill one pool child only (the main process
    sees the child die and requeues its task), and ``writer_share`` the worker's host writer only (its pool
    processes write their records themselves from then on); the first kill of a run is a host writer's. A
    kill needs two workers ready, so one always serves.
    """

    def __init__(
        self,
        system: ChaosSystem,
        *,
        interval: tuple[float, float] = (1.0, 2.0),
        child_share: float = 0.25,
        writer_share: float = 0.1,
        seed: int | None = None,
    ) -> None:
        super().__init__(name="chaos-killer", daemon=True)
        self.system = system
        self.interval = interval
        self.child_share = child_share
        self.writer_share = writer_share
        self.random = random.Random(seed)
        self.stopping = threading.Event()
        self.kills: Counter[str] = Counter()
        self.errors: list[BaseException] = []

    def run(self) -> None:
        try:
            while not self.stopping.wait(self.random.uniform(*self.interval)):
                self.kill_one()
        except BaseException as exc:  # surfaced by stop()
            self.errors.append(exc)

    def kill_one(self) -> None:
        ready = self.system.ready_workers()
        if len(ready) < 2:
            return
        victim = self.random.choice(ready)
        children = pool_children(victim.proc.pid)
        writers = [c for c in children if is_host_writer(c)]
        children = [c for c in children if c not in writers]
        if writers and (not self.kills["host writer"] or self.random.random() < self.writer_share):
            with contextlib.suppress(ProcessLookupError):
                os.kill(writers[0], signal.SIGKILL)
            self.kills["host writer"] += 1
            return
        if children and self.random.random() < self.child_share:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.random.choice(children), signal.SIGKILL)
            self.kills["pool child"] += 1
            return
        victim.kill(signal.SIGKILL)
        self.kills["worker"] += 1
        self.system.retire(victim)
        self.system.start_worker()

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=60)
        if self.errors:
            raise self.errors[0]


# -- workloads -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workflow:
    kind: str  # "pipeline" | "saga"
    id: str
    expect: str  # the end its input asks for


def pipeline_request(i: int, rng: random.Random) -> tuple[ResearchRequest, str]:
    """A mix: plain runs of 1-4 researchers, a rejected first draft, a partial fan-in, failures asked for."""
    text_ = f"Compare retries, sagas and dead-letter queues for chaos tenant {i}"
    kind = i % 10
    if kind == 6:
        return ResearchRequest(
            request=text_, max_topics=1, review=ReviewPolicy(max_rounds=1, reject_drafts=1)
        ), "failed"
    if kind == 7:
        return ResearchRequest(
            request=text_, max_topics=2, review=ReviewPolicy(max_rounds=3, reject_drafts=1)
        ), "completed"
    if kind == 8:
        return ResearchRequest(request=text_, max_topics=3, fail_researchers=(1,)), "failed"
    if kind == 9:
        return ResearchRequest(
            request=text_, max_topics=3, fail_researchers=(0,), on_research_failure="partial"
        ), "completed"
    return ResearchRequest(request=text_, max_topics=rng.randint(1, 4)), "completed"


def start_workflows(
    system: ChaosSystem,
    pipelines: int,
    sagas: int,
    *,
    pace_s: float = 0.0,
    seed: int = 7,
    into: list[Workflow] | None = None,
) -> list[Workflow]:
    """Start ``pipelines`` and ``sagas``, interleaved, ``pace_s`` apart. Every fourth saga is made to
    fail at publishing (it must end compensated). Starts are retried under the same id, so a start
    that met a restarting service is neither lost nor doubled. Each is appended to ``into`` (if given)
    as soon as it has started, so another thread can follow the progress."""
    rng = random.Random(seed)
    kinds = ["pipeline"] * pipelines + ["saga"] * sagas
    rng.shuffle(kinds)
    started: list[Workflow] = [] if into is None else into
    n_pipe = n_saga = 0
    for kind in kinds:
        if kind == "pipeline":
            request, expect = pipeline_request(n_pipe, rng)
            pipeline_id = new_id()
            retrying(lambda: start("research", request, correlation_id=pipeline_id, app=system.app))  # noqa: B023
            started.append(Workflow("pipeline", pipeline_id, expect))
            n_pipe += 1
        else:
            saga_id = f"chaos-{n_saga}-{uuid.uuid4().hex[:10]}"
            expect = "completed"
            if n_saga % 4 == 3:
                set_fault(system.content, "step:publishing", saga_id=saga_id, error="permanent")
                expect = "compensated"
            topic = f"Surviving chaos, part {n_saga}"
            retrying(lambda: start_saga("content_creation", {"topic": topic}, saga_id=saga_id, app=system.app))  # noqa: B023
            started.append(Workflow("saga", saga_id, expect))
            n_saga += 1
        if pace_s:
            time.sleep(pace_s)  # spreading the starts over the chaos is the point, not a wait for anything
    return started


def end_of(system: ChaosSystem, workflow: Workflow) -> str | None:
    """How the workflow ended, from the event log; None while it runs (or the log is unreachable)."""
    try:
        if workflow.kind == "pipeline":
            for status in ("completed", "failed"):
                if system.store.find(correlation_id=workflow.id, type=f"pipeline.{status}", limit=1):
                    return status
            return None
        status = saga_status(workflow.id, app=system.app).status
        return status if status in SAGA_ENDS else None
    except Exception:
        return None


def records_of(system: ChaosSystem, workflows: list[Workflow]) -> str:
    """A hung workflow's records, one line each (what it did last is where it stopped)."""
    lines = []
    for w in workflows:
        try:
            events = system.store.by_correlation(w.id)
        except Exception as error:  # a report of a failure: say why it has no records
            lines.append(f"--- {w.kind} {w.id}: its records could not be read ({error})")
            continue
        lines.append(f"--- {w.kind} {w.id}: {len(events)} records")
        lines += [f"  {e.position} {e.occurred_at:%H:%M:%S.%f} {e.type} {e.agent or ''} {e.task_id or ''}"
                  for e in events]
    return "\n".join(lines)


def wait_for_ends(system: ChaosSystem, workflows: list[Workflow], deadline_s: float) -> dict[str, str]:
    """Every workflow's end, within one deadline for all; AssertionError naming those that hung."""
    deadline = time.monotonic() + deadline_s
    ended: dict[str, str] = {}
    pending = list(workflows)
    while pending:
        still = []
        for w in pending:
            status = end_of(system, w)
            if status is None:
                still.append(w)
            else:
                ended[w.id] = status
        pending = still
        if not pending:
            break
        if time.monotonic() >= deadline:
            hung = [f"{w.kind} {w.id}" for w in pending]
            raise AssertionError(
                f"{len(pending)} workflows did not end within {deadline_s}s: {hung[:10]}\n"
                f"{records_of(system, pending[:3])}\n{system.logs()}"
            )
        time.sleep(0.25)
    return ended


def ended_by_count(system: ChaosSystem, workflows: list[Workflow]) -> int:
    return sum(1 for w in workflows if end_of(system, w) is not None)


# -- the verdict -----------------------------------------------------------------------------------


@dataclass
class Verdict:
    figures: Figures
    findings: Findings
    wrong_ends: list[str]
    saga_effects: list[str]


def why(system: ChaosSystem, workflow: Workflow) -> str:
    if workflow.kind == "pipeline":
        failed = system.store.find(correlation_id=workflow.id, type="pipeline.failed", limit=1)
        return str(failed[0].payload.get("reason")) if failed else "no failure recorded"
    return "; ".join(f"{h.type} {h.step}" for h in saga_status(workflow.id, app=system.app).history[-3:])


def saga_side_effects(system: ChaosSystem, workflows: list[Workflow], ended: dict[str, str]) -> list[str]:
    """Each saga step applied its effect at most once, and what is live matches how the saga ended."""
    problems = []
    for w in workflows:
        if w.kind != "saga":
            continue
        applied = Counter(r["name"] for r in saga_runs(system.content, w.id) if r["outcome"] == "applied")
        problems += [f"saga {w.id}: {name} applied {n} times" for name, n in applied.items() if n > 1]
        live = sorted(i["kind"] for i in live_items(system.content, w.id))
        want = ["draft", "publication", "review"] if ended.get(w.id) == "completed" else []
        if live != want:
            problems.append(f"saga {w.id} ended {ended.get(w.id)} with live effects {live}")
    return problems


def verdict(
    system: ChaosSystem, test: str, workflows: list[Workflow], ended: dict[str, str], started_at: float, **counts: int
) -> Verdict:
    """Audit the log of every workflow once the queues are idle, and fill in the figures."""
    system.wait_idle()
    pipelines = [w.id for w in workflows if w.kind == "pipeline"]
    sagas = [w.id for w in workflows if w.kind == "saga"]
    # The log may trail the last outcome by a few records (a handler's terminal event): audit until it
    # is whole or the deadline passes, and report what is still missing then.
    findings = audit(system.store, pipelines, sagas, agent_tasks=system.agent_tasks())
    deadline = time.monotonic() + 30
    while findings.missing and time.monotonic() < deadline:
        time.sleep(0.5)
        findings = audit(system.store, pipelines, sagas, agent_tasks=system.agent_tasks())
    wrong = [
        f"{w.kind} {w.id} ended {ended.get(w.id)} ({why(system, w)}), its input asks for {w.expect}"
        for w in workflows
        if ended.get(w.id) != w.expect
    ]
    effects = saga_side_effects(system, workflows, ended)
    figures = Figures(
        test=test,
        pipelines=len(pipelines),
        sagas=len(sagas),
        events_checked=findings.events_checked,
        tasks_checked=findings.tasks_checked,
        duplicates=len(findings.duplicates) + sum("applied" in p for p in effects),
        missing_transitions=len(findings.missing),
        redeliveries_after_terminal=findings.reruns_after_terminal,
        reruns=findings.reruns,
        ended=dict(Counter(ended.values())),
        seconds=time.monotonic() - started_at,
        **counts,
    )
    return Verdict(figures, findings, wrong, effects)


def problems(result: Verdict, *, allowed_wrong_end: str | None = None) -> str:
    """Everything the verdict found wrong, in one message ('' when clean): wrong ends (except those
    whose reason contains ``allowed_wrong_end``), missing transitions, duplicates, side effects."""
    wrong = [w for w in result.wrong_ends if not (allowed_wrong_end and allowed_wrong_end in w)]
    parts = [
        (f"{len(wrong)} wrong ends", wrong),
        (f"{len(result.findings.missing)} missing transitions", result.findings.missing),
        (f"{len(result.findings.duplicates)} duplicates", result.findings.duplicates),
        (f"{len(result.saga_effects)} saga side-effect problems", result.saga_effects),
    ]
    return "\n".join(f"{title}:\n  " + "\n  ".join(items[:12]) for title, items in parts if items)
