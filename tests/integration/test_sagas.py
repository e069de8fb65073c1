"""Sagas over real RabbitMQ, Redis, PostgreSQL and worker processes (never eager mode).

One namespace and one PostgreSQL schema for the module (event store and side-effect tables both
live there); one worker per queue (researcher, writer, reviewer, publisher, system), started once.
Each test isolates itself by saga id: faults are scoped to the saga, side effects are read by saga.
Waits are polls with deadlines.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import Engine, create_engine, text

import relaybus
import relaybus.tasks.saga.client as saga_client
from relaybus.celery import create_app
from relaybus.eventstore import EventStore, StoreUnavailable, open_store
from relaybus.sagas import SagaView, dispatch_id
from relaybus.settings import Settings
from relaybus.tasks.agents.content_store import clear_fault, engine_for, live_items, saga_items, saga_runs, set_fault
from relaybus.tasks.runtime.hooks import Call
from relaybus.tasks.runtime.recording import NullRecorder
from relaybus.tasks.saga import dispatch, repository, saga_status, start_saga, sweep_sagas, wait_for_saga
from relaybus.tasks.saga.advance import AdvanceSaga
from relaybus.tasks.saga.client import _first_step_fenced
from relaybus.tasks.saga.dispatch import dispatch_decision, saga_root_id
from relaybus.tasks.saga.registry import saga_definition
from relaybus.tasks.saga.steps import SAGA_STARTING_HEADER
from tests.harness import (
    ROOT,
    Worker,
    delete_namespace,
    make_app,
    make_settings,
    queue_depth,
    read_letters_of,
    read_queue,
    wait_for,
)
from tests.services import require_postgres, require_rabbitmq, require_redis

pytestmark = pytest.mark.integration

STEPS = ["research", "writing", "review", "publishing"]
KIND = {"writing": "draft", "review": "review", "publishing": "publication"}
ROLES = {"system": 1, "researcher": 1, "writer": 2, "reviewer": 1, "publisher": 1}


@dataclass
class SagaSystem:
    settings: Settings
    app: Celery
    content: Engine
    store: EventStore
    tmp: Path
    workers: dict[str, Worker] = field(default_factory=dict)
    started: list[Worker] = field(default_factory=list)

    def start_worker(self, agent: str) -> Worker:
        name = f"{agent}-{uuid.uuid4().hex[:4]}"
        worker = Worker(self.settings, (agent,), self.tmp, concurrency=ROLES[agent], name=name)
        self.workers[agent] = worker
        self.started.append(worker)
        return worker

    def logs(self) -> str:
        return "\n".join(f"--- {w.name}\n{w.log()[-3000:]}" for w in self.workers.values())


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SagaSystem]:
    broker, redis_url, pg = require_rabbitmq(), require_redis(), require_postgres()
    schema = f"sagas_{uuid.uuid4().hex[:10]}"
    admin = create_engine(pg)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    open_store(pg, schema=schema, create=True).close()  # the migrations, as `relaybus db upgrade` runs them
    url = f"{pg}?options=-csearch_path%3D{schema}"
    tmp = tmp_path_factory.mktemp("sagas")
    settings = make_settings(
        tmp,
        broker,
        redis_url,
        eventstore_url=url,
        record_events=True,
        max_retries=3,
        extra_modules=("tests.agents", "tests.saga_definitions"),
    )
    app = make_app(settings)
    with app.connection_for_write() as conn:
        app.conf.relaybus_topology.declare(conn)
    env = SagaSystem(settings, app, engine_for(url), repository(app).store, tmp)
    try:
        for agent in ROLES:
            env.start_worker(agent)
        for worker in env.workers.values():
            worker.wait_ready(app)
        yield env
    finally:
        for worker in env.started:
            worker.stop()
        delete_namespace(app)
        app.close()
        env.content.dispose()
        env.store.close()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def new_saga_id() -> str:
    return f"t-{uuid.uuid4().hex[:16]}"


def run_saga(
    system: SagaSystem, saga_id: str, *, topic: str = "How do sagas compensate?", timeout: float = 60
) -> SagaView:
    start_saga("content_creation", {"topic": topic}, saga_id=saga_id, app=system.app)
    try:
        return wait_for_saga(saga_id, timeout, app=system.app)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{system.logs()}") from None


def history(view: SagaView, type_: str) -> list[str]:
    return [h.step for h in view.history if h.type == type_ and h.step is not None]


def run_outcomes(system: SagaSystem, saga_id: str, name: str) -> Counter[str]:
    return Counter(r["outcome"] for r in saga_runs(system.content, saga_id) if r["name"] == name)


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings.to_env(), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "relaybus.cli", "saga", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_content_saga_runs_its_four_steps_and_shows_in_its_workflow_timeline(system):
    saga_id = new_saga_id()
    view = run_saga(system, saga_id)
    assert view.status == "completed", view
    assert [(s.step, s.outcome, s.attempt) for s in view.steps] == [(s, "succeeded", 1) for s in STEPS]
    assert all(s.started_at is not None and s.duration_s is not None for s in view.steps)
    # The saga completed: its compensations will never run.
    assert [s.compensation.status if s.compensation else None for s in view.steps] == [None, *["not_needed"] * 3]
    assert isinstance(view.output, dict) and view.output["url"].startswith("/articles/")
    assert sorted(i["kind"] for i in live_items(system.content, saga_id)) == ["draft", "publication", "review"]

    timeline = system.store.timeline(view.correlation_id)
    assert timeline.workflow is not None and timeline.workflow.status == "completed"
    types = [e.type for e in timeline.events]
    saga_types = [t for t in types if t.startswith("saga.")]
    assert saga_types[0] == "saga.started" and saga_types[-1] == "saga.completed"
    # Every task of the saga ended, its orchestration tasks too (recorded like agents: issue 13, fault 9).
    assert all(step.status in ("succeeded", "failed", "dead_lettered") for step in timeline.steps), timeline.steps
    assert {"task.sent", "task.started", "task.succeeded"} <= set(types), "the steps' task events share the timeline"
    steps = {e.task_id: e for e in timeline.events if e.type == "saga.step.started"}
    assert set(steps) <= {s.task_id for s in timeline.steps}, "each saga step names the task that ran it"
    sent = [e.payload["task"] for e in timeline.events if e.type == "task.sent"]
    assert sorted(set(sent)) == sorted(f"agents.{a}" for a in (
        "researcher.saga_research", "writer.saga_draft", "reviewer.saga_review", "publisher.saga_publish"
    )), "one message per step: each step advanced the saga itself, no orchestration callback was sent"
    assert len(saga_types) == 10, "started, 4 x (step started, step succeeded), completed"


def test_a_step_commits_its_own_end_record_in_the_transaction_that_records_its_outcome_in_the_saga(system):
    view = run_saga(system, new_saga_id())
    assert view.status == "completed", view
    events = system.store.by_correlation(view.correlation_id)
    ended = {e.task_id: e for e in events if e.type == "task.succeeded"}
    moves = [e for e in events if e.type == "saga.step.succeeded"]
    assert len(moves) == 4
    for move in moves:
        own = ended[move.task_id]
        # One commit: one recorded_at for the batch, the task's record first.
        assert (own.recorded_at, own.position < move.position) == (move.recorded_at, True), (own, move)


def test_a_failed_step_commits_its_failure_and_dead_letter_records_in_the_transaction_of_its_saga_move(system):
    saga_id = new_saga_id()
    set_fault(system.content, "step:writing", saga_id=saga_id, error="permanent")
    view = run_saga(system, saga_id)
    assert view.status == "compensated", view
    events = system.store.by_correlation(view.correlation_id)
    (move,) = [e for e in events if e.type == "saga.step.failed"]
    own = [e for e in events if e.task_id == move.task_id and e.type in ("task.failed", "task.dead_lettered")]
    assert [e.type for e in own] == ["task.failed", "task.dead_lettered"], own
    assert own[1].payload["reason"] == "permanent-error"
    # One commit: one recorded_at for the batch, the task's records first.
    assert all((e.recorded_at, e.position < move.position) == (move.recorded_at, True) for e in own), (own, move)
    # Published after the commit (no ack without the record), as the record says.
    read_letters_of(system.app, f"{system.settings.namespace}.writer.dlq", [move.task_id])


def test_a_step_that_is_a_plain_agent_task_advances_the_saga_through_the_orchestration_callbacks(system):
    saga_id = new_saga_id()
    notes = {"topic": "Plain steps", "audience": "ops", "notes": ["n"], "sources": []}
    start_saga("test_plain_step", notes, saga_id=saga_id, app=system.app)
    view = wait_for_saga(saga_id, 60, app=system.app)

    assert view.status == "completed", view
    assert view.output == {"echoed": f"{saga_id}:echo"}
    sent = [e.payload["task"] for e in system.store.by_correlation(view.correlation_id) if e.type == "task.sent"]
    assert sent == ["agents.writer.saga_draft", "agents.writer.plain_echo", "relaybus.saga.step_done"], sent


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_a_failure_at_step_k_compensates_exactly_the_steps_before_it_in_reverse_and_undoes_their_effects(system, k):
    saga_id = new_saga_id()
    failing = STEPS[k - 1]
    set_fault(system.content, f"step:{failing}", saga_id=saga_id, error="permanent")
    view = run_saga(system, saga_id)

    assert view.status == "compensated", view
    expected = [s for s in reversed(STEPS[: k - 1]) if s in KIND]  # research is read-only: nothing to undo
    assert history(view, "saga.compensation.started") == expected
    assert history(view, "saga.compensation.succeeded") == expected
    outcomes = {s.step: s.outcome for s in view.steps}
    assert outcomes == {
        s: "succeeded" if i < k - 1 else "failed" if i == k - 1 else "pending" for i, s in enumerate(STEPS)
    }
    assert view.steps[k - 1].error["error_type"] == "InjectedFailure"
    # The failed step and those that never ran had nothing to undo: their compensations are not needed.
    undo = {s.step: s.compensation.status for s in view.steps if s.compensation is not None}
    assert undo == {s: "succeeded" if s in expected else "not_needed" for s in STEPS if s in KIND}
    assert live_items(system.content, saga_id) == [], "the side-effect store is back where it started"
    done = saga_items(system.content, saga_id)
    assert sorted(i["kind"] for i in done) == sorted(KIND[s] for s in expected)
    assert all(i["status"] == "undone" for i in done)


def test_a_compensation_that_fails_twice_then_succeeds_is_retried_by_the_task_base_and_the_saga_ends_compensated(
    system,
):
    saga_id = new_saga_id()
    set_fault(system.content, "step:publishing", saga_id=saga_id, error="permanent")
    set_fault(system.content, "compensation:writing", saga_id=saga_id, times=2, error="transient")
    view = run_saga(system, saga_id)

    assert view.status == "compensated", view
    assert history(view, "saga.compensation.succeeded") == ["review", "writing"]
    writing = next(s for s in view.steps if s.step == "writing")
    assert writing.compensation is not None and writing.compensation.attempt == 1, "retries stay inside one dispatch"
    assert run_outcomes(system, saga_id, "compensation:writing") == {"started": 3, "fault": 2, "undone": 1}
    assert live_items(system.content, saga_id) == []


def test_a_compensation_that_always_fails_is_dead_lettered_the_others_still_run_and_resume_finishes_it(system):
    saga_id = new_saga_id()
    set_fault(system.content, "step:publishing", saga_id=saga_id, error="permanent")
    set_fault(system.content, "compensation:review", saga_id=saga_id, error="transient")  # always
    view = run_saga(system, saga_id)

    assert view.status == "compensation_failed", view
    assert history(view, "saga.compensation.failed") == ["review"]
    assert history(view, "saga.compensation.succeeded") == ["writing"], "a failed compensation stops no other"
    assert [i["kind"] for i in live_items(system.content, saga_id)] == ["review"]
    review = next(s for s in view.steps if s.step == "review")
    assert review.compensation is not None and review.compensation.error["error_type"] == "InjectedOutage"

    dlq = f"{system.settings.namespace}.reviewer.dlq"
    letters = wait_for(
        lambda: [
            m
            for m in read_queue(system.app, dlq)
            if m.headers.get("task") == "agents.reviewer.cancel_review"
            and m.headers.get("x_correlation_id") == view.correlation_id
        ],
        30,
        what="the compensation's dead letter",
    )
    headers = letters[0].headers
    assert headers["x_dead_letter_reason"] == "retries-exhausted" and headers["x_attempts"] == 4
    assert "injected transient failure in compensation:review" in headers["x_error_message"]

    clear_fault(system.content, "compensation:review", saga_id=saga_id)  # a person fixed the cause
    resumed = cli(system.settings, "resume", saga_id, "--json")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert json.loads(resumed.stdout)["round"] == 2
    view = wait_for_saga(saga_id, 60, app=system.app)
    assert view.status == "compensated", view
    assert live_items(system.content, saga_id) == []
    assert [h.attempt for h in view.history if h.type == "saga.compensation.started" and h.step == "review"] == [1, 2]
    again = cli(system.settings, "resume", saga_id)
    assert again.returncode == 1 and "cannot be resumed" in again.stdout


def test_a_worker_killed_during_a_step_leaves_the_saga_completed_with_its_effect_applied_once(system):
    saga_id = new_saga_id()
    set_fault(system.content, "step:writing", saga_id=saga_id, times=1, error=None, delay_s=30)  # a slow draft
    start_saga("content_creation", {"topic": "Surviving a dead worker"}, saga_id=saga_id, app=system.app)
    wait_for(lambda: run_outcomes(system, saga_id, "step:writing")["started"] == 1, 30, what="the draft to start")

    system.workers["writer"].kill()  # SIGKILL, main process and pool: the unacked message goes back
    system.start_worker("writer").wait_ready(system.app)
    view = wait_for_saga(saga_id, 60, app=system.app)

    assert view.status == "completed", view
    assert run_outcomes(system, saga_id, "step:writing") == {"started": 2, "applied": 1}
    assert [i["kind"] for i in live_items(system.content, saga_id)].count("draft") == 1
    assert history(view, "saga.step.started").count("writing") == 1, "redelivered by the broker, not re-decided"


def test_a_step_delivered_twice_applies_its_side_effect_once(system):
    saga_id = new_saga_id()
    set_fault(system.content, "step:writing", saga_id=saga_id, times=1, error=None, delay_s=1.5)
    start_saga("content_creation", {"topic": "Exactly once effects"}, saga_id=saga_id, app=system.app)
    wait_for(lambda: run_outcomes(system, saga_id, "step:writing")["started"] == 1, 30, what="the draft to start")

    repo = repository(system.app)
    loaded = repo.load(saga_id)
    (running,) = [f.command for f in repo.in_flight(loaded)]
    assert running.step == "writing"
    dispatch(system.app, loaded.state.saga, loaded.correlation_id, [running])  # the same message, again
    view = wait_for_saga(saga_id, 60, app=system.app)

    assert view.status == "completed", view
    wait_for(lambda: sum(run_outcomes(system, saga_id, "step:writing").values()) == 4, 30, what="both deliveries")
    assert run_outcomes(system, saga_id, "step:writing") == {"started": 2, "applied": 1, "replayed": 1}
    assert [i["kind"] for i in saga_items(system.content, saga_id)] == ["draft", "review", "publication"]
    system_queue = f"{system.settings.namespace}.system"
    wait_for(lambda: queue_depth(system.app, system_queue) == 0, 30, what="the duplicate's callback to be taken")
    view = saga_status(saga_id, app=system.app)
    assert history(view, "saga.step.succeeded") == STEPS, "the second result was recorded as the duplicate it is"
    assert history(view, "saga.step.started") == STEPS, "and caused nothing"


def test_a_step_whose_message_vanished_is_timed_out_by_the_sweep_retried_once_then_compensated(system):
    saga_id = new_saga_id()
    notes = {"topic": "Stalled", "audience": "ops", "notes": ["n"], "sources": []}
    start_saga("test_stalled_step", notes, saga_id=saga_id, app=system.app)
    probe = f"{system.settings.namespace}.probe"
    vanished = wait_for(lambda: read_queue(system.app, probe), 30, what="the stalled step's message")
    assert vanished[0].headers["task"] == "agents.probe.saga_never_answers"
    assert json.loads(vanished[0].body)[1]["idempotency_key"] == f"{saga_id}:stalled:stalled:step"

    swept = cli(system.settings, "sweep", "--json")
    assert swept.returncode == 0, swept.stderr
    assert json.loads(swept.stdout)["open_sagas"] >= 1

    def ended() -> bool:
        sweep_sagas(system.app)  # what beat does every 30 s
        return saga_status(saga_id, app=system.app).status == "compensated"

    wait_for(ended, 30, interval=0.2, what="the sweep to time the step out twice and compensate")
    view = saga_status(saga_id, app=system.app)
    stalled = [(h.type, h.attempt) for h in view.history if h.step == "stalled"]
    assert stalled == [
        ("saga.step.started", 1),
        ("saga.step.timed_out", 1),
        ("saga.step.started", 2),
        ("saga.step.timed_out", 2),
    ]
    assert history(view, "saga.compensation.succeeded") == ["writing"]
    assert live_items(system.content, saga_id) == []


def test_the_cli_starts_lists_and_shows_sagas_and_names_what_is_wrong(system):
    saga_id = new_saga_id()
    started = cli(
        system.settings, "start", "content_creation", "--input", '{"topic": "CLI sagas"}', "--id", saga_id, "--json"
    )
    assert started.returncode == 0, started.stdout + started.stderr
    assert json.loads(started.stdout)["saga_id"] == saga_id
    wait_for_saga(saga_id, 60, app=system.app)

    listed = json.loads(cli(system.settings, "list", "--status", "completed", "--json").stdout)
    assert saga_id in [s["saga_id"] for s in listed]
    shown: dict[str, Any] = json.loads(cli(system.settings, "show", saga_id, "--json").stdout)
    assert shown["status"] == "completed" and [s["step"] for s in shown["steps"]] == STEPS
    assert all(s["started_at"] and s["ended_at"] for s in shown["steps"])
    assert saga_id in cli(system.settings, "show", saga_id).stdout

    missing = cli(system.settings, "show", "no-such-saga")
    assert missing.returncode == 1 and "no-such-saga" in missing.stdout
    unknown = cli(system.settings, "start", "no_such_saga")
    assert unknown.returncode == 2 and "NAME" in unknown.stderr and "content_creation" in unknown.stderr
    bad_json = cli(system.settings, "start", "content_creation", "--input", "{nope")
    assert bad_json.returncode == 2 and "--input" in bad_json.stderr
    bad_id = cli(system.settings, "start", "content_creation", "--id", "has spaces")
    assert bad_id.returncode == 2 and "--id" in bad_id.stderr
    # The first step's input model refuses it in the caller, naming the field; nothing is started.
    extra_id = new_saga_id()
    extra = cli(system.settings, "start", "content_creation", "--input", '{"topic": "x", "extra": 1}', "--id", extra_id)
    assert extra.returncode == 2 and "--input" in extra.stderr and "input.extra" in extra.stderr, extra.stderr
    assert cli(system.settings, "show", extra_id).returncode == 1


def test_a_step_that_cannot_advance_its_saga_in_its_worker_hands_its_outcome_to_the_system_queue(system):
    saga_id = new_saga_id()
    notes = {"topic": "Hand over", "audience": "ops", "notes": ["n"], "sources": []}
    start_saga("test_stalled_step", notes, saga_id=saga_id, app=system.app)
    probe = f"{system.settings.namespace}.probe"
    (message,) = wait_for(
        lambda: [m for m in read_queue(system.app, probe) if json.loads(m.body)[1]["saga_id"] == saga_id],
        30,
        what="the second step's message",
    )
    kwargs = json.loads(message.body)[1]

    # The step ran in a worker whose event store is away (nothing listens on port 1): its move fails
    # there, so its hook sends the outcome to relaybus.saga.outcome, which the system worker records.
    away = make_settings(
        system.tmp, system.settings.broker_url, system.settings.result_backend,
        namespace=system.settings.namespace, record_events=False,
        eventstore_url="postgresql+psycopg://postgres@127.0.0.1:1/nowhere",
        extra_modules=system.settings.extra_modules,
    )
    request = SimpleNamespace(id=message.headers["id"], headers=message.headers, delivery_info={}, retries=0)
    task = SimpleNamespace(app=create_app(away), saga_kind="step")
    call = Call(task, request, (), kwargs, time.monotonic(), NullRecorder())  # type: ignore[arg-type]
    AdvanceSaga().on_success(call, {"answered": "late, through the system queue"})

    view = wait_for_saga(saga_id, 60, app=system.app)
    assert view.status == "completed", view
    assert view.output == {"answered": "late, through the system queue"}
    assert history(view, "saga.step.succeeded") == ["writing", "stalled"]

    def outcome_task_ended() -> bool:
        events = system.store.by_correlation(view.correlation_id)
        return any(e.type == "task.succeeded" and e.agent == "system" for e in events)

    wait_for(outcome_task_ended, 30, what="relaybus.saga.outcome's end, recorded in the saga's timeline")


def test_an_outcome_handed_over_after_it_was_recorded_sends_again_the_step_it_caused(system):
    saga_id = new_saga_id()
    start_saga("test_handed_over", {"topic": "Recorded, not sent"}, saga_id=saga_id, app=system.app)
    repo = repository(system.app)
    (stalled,) = [f.command for f in repo.in_flight(repo.load(saga_id))]
    ref = {"kind": "step", "saga_id": saga_id, "step": "stalled", "member": "stalled", "attempt": 1}
    # The step's worker recorded its outcome, and with it the start of "echo", then could not send "echo".
    recorded = repo.record(stalled.succeeded({"topic": "Recorded, not sent"}), now=datetime.now(UTC))
    assert [c.step for c in recorded.dispatch] == ["echo"]
    system.app.send_task("relaybus.saga.outcome", kwargs={"ref": ref, "ok": True, "data": {"topic": "x"}})

    view = wait_for_saga(saga_id, 60, app=system.app)
    assert view.status == "completed", view
    assert view.output == {"echoed": f"{saga_id}:echo"}
    assert history(view, "saga.step.started") == ["stalled", "echo"], "echo was started once and sent again"


def _idle_step(system: SagaSystem) -> tuple[str, str, datetime]:
    """Start ``test_idle_step``: its step's message waits on the flaky queue, which no worker consumes yet.
    Returns the saga's correlation id, the step's task id and a time after the message was published."""
    saga_id = new_saga_id()
    start_saga("test_idle_step", {"echoed": saga_id}, saga_id=saga_id, app=system.app)
    queue = f"{system.settings.namespace}.flaky"
    wait_for(lambda: queue_depth(system.app, queue) == 1, 30, what="the idle step's message")
    published = datetime.now(UTC)
    view = saga_status(saga_id, app=system.app)
    task_id = dispatch_id(saga_id, "idle", "idle", "step", 1)
    assert [h.type for h in view.history if h.step == "idle"] == ["saga.step.started"]
    started = [e for e in system.store.by_correlation(view.correlation_id) if e.type == "saga.step.started"]
    assert [e.task_id for e in started] == [task_id]
    return view.correlation_id, task_id, published


def _task_events(system: SagaSystem, correlation_id: str, task_id: str) -> list[Any]:
    events = system.store.by_correlation(correlation_id)
    return [e for e in events if e.task_id == task_id and e.type.startswith("task.")]


def _receive_on_flaky_queue(system: SagaSystem, until: Any, what: str, **worker: Any) -> None:
    receiver = Worker(system.settings, ("flaky",), system.tmp, name=f"flaky-{uuid.uuid4().hex[:4]}", **worker)
    system.started.append(receiver)
    try:
        wait_for(until, 60, 0.1, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{receiver.log()[-3000:]}") from None
    finally:
        receiver.stop()


def test_a_step_revoked_in_its_queue_records_the_task_sent_its_publisher_left_to_the_receiver(system):
    correlation_id, task_id, published = _idle_step(system)
    assert _task_events(system, correlation_id, task_id) == [], (
        "a saga step's publisher leaves its task.sent to the worker that receives it")
    assert relaybus.revoke(task_id, app=system.app) == [task_id]

    def revoked() -> bool:
        return "task.revoked" in [e.type for e in _task_events(system, correlation_id, task_id)]

    _receive_on_flaky_queue(system, revoked, "the revoke to be recorded")
    events = _task_events(system, correlation_id, task_id)
    assert [e.type for e in events] == ["task.sent", "task.revoked"], events
    sent = events[0]
    # The publisher's time and host, which the message carried; the record written with the revoke's.
    assert sent.occurred_at <= published < events[1].occurred_at, (sent.occurred_at, published, events[1])
    (moved,) = [e for e in system.store.by_correlation(correlation_id) if e.type == "saga.step.started"]
    assert moved.occurred_at <= sent.occurred_at, "sent after the saga's move that decided it, to the microsecond"
    assert sent.worker_host == socket.gethostname() and sent.recorded_at == events[1].recorded_at
    assert sent.payload["task"] == "agents.flaky.saga_idle"
    assert sent.payload["input"]["kwargs"]["step"] == "idle"


def test_a_step_refused_by_the_receiving_worker_records_the_task_sent_its_publisher_left_to_it(system):
    correlation_id, task_id, published = _idle_step(system)
    assert _task_events(system, correlation_id, task_id) == []

    def refused() -> bool:
        return "task.dead_lettered" in [e.type for e in _task_events(system, correlation_id, task_id)]

    # A worker that does not know the step's task (its module is not loaded there): the consumer dead-letters it.
    _receive_on_flaky_queue(system, refused, "the unknown task to be dead-lettered",
                            extra_env={"RELAYBUS_EXTRA_MODULES": "tests.agents"})
    events = _task_events(system, correlation_id, task_id)
    assert [e.type for e in events] == ["task.sent", "task.dead_lettered"], events
    assert events[0].occurred_at <= published and events[1].payload["reason"] == "unknown-task"
    assert events[0].payload["input"]["kwargs"]["step"] == "idle"
    letters = read_letters_of(system.app, f"{system.settings.namespace}.flaky.dlq", [task_id])
    assert [m.headers["id"] for m in letters] == [task_id]


def test_a_step_that_arrives_after_its_saga_stopped_is_recorded_rejected_and_not_dead_lettered(system):
    saga_id = new_saga_id()
    start_saga("test_late_step", {"echoed": saga_id}, saga_id=saga_id, app=system.app)
    queue = f"{system.settings.namespace}.flaky"
    wait_for(lambda: queue_depth(system.app, queue) == 1, 30, what="the late step's message")
    task_id = dispatch_id(saga_id, "idle", "idle", "step", 1)

    def ended() -> bool:
        sweep_sagas(system.app)  # what beat does every 30 s
        return saga_status(saga_id, app=system.app).status != "running"

    wait_for(ended, 30, interval=0.2, what="the sweep to time the waiting step out")
    before = saga_status(saga_id, app=system.app)
    assert before.status == "compensated", before
    correlation_id = before.correlation_id

    def rejected() -> bool:
        return "task.rejected" in [e.type for e in _task_events(system, correlation_id, task_id)]

    _receive_on_flaky_queue(system, rejected, "the late step's rejection to be recorded")
    events = _task_events(system, correlation_id, task_id)
    assert [e.type for e in events] == ["task.sent", "task.received", "task.started", "task.rejected"], events
    end = events[-1]
    assert end.payload["reason"] == "stale-step" and end.payload["error_type"] == "StaleStep", end.payload
    assert "is compensated" in end.payload["error_message"], end.payload
    letters = read_queue(system.app, f"{queue}.dlq")
    assert task_id not in [m.headers["id"] for m in letters], "nothing ran: nothing for a person to redrive"
    after = saga_status(saga_id, app=system.app)
    assert after.status == "compensated" and after.history == before.history, "its saga is told nothing"
    def stale_lines() -> list[str]:
        return [line for line in system.started[-1].log().splitlines() if "StaleStep" in line]

    # Celery logs the refusal after the task's hooks recorded it: the line may trail the record.
    logged = wait_for(stale_lines, 15, 0.05, "Celery's log line of the refused step")
    assert all("INFO/" in line and "raised expected" in line for line in logged), logged


# -- a new saga's start recorded while its first step is sent ------------------------------------------------


def _planned_first_step(system: SagaSystem, topic: str, until: float) -> tuple[Any, str]:
    """A new content saga's start, planned and its first step sent with SAGA_STARTING_HEADER = ``until``, not
    recorded: what start_saga does, with the record held back. Returns the plan and the step's task id."""
    saga_id = new_saga_id()
    definition = saga_definition("content_creation", system.app)
    planned = repository(system.app).plan_start(definition, saga_id, {"topic": topic}, now=datetime.now(UTC))
    (task_id,) = dispatch_decision(system.app, planned.decision, {SAGA_STARTING_HEADER: until})
    assert task_id == saga_root_id(system.app, "content_creation", saga_id)
    return planned, task_id


def test_a_saga_started_without_an_id_records_its_start_while_its_first_step_is_sent_and_completes(system):
    assert _first_step_fenced(system.app, saga_definition("content_creation", system.app)), "the path under test"
    saga_id = start_saga("content_creation", {"topic": "Started at once"}, app=system.app)
    view = wait_for_saga(saga_id, 60, app=system.app)
    assert view.status == "completed", view
    events = system.store.by_correlation(view.correlation_id)
    first = saga_root_id(system.app, "content_creation", saga_id)
    (started,) = [e for e in events if e.type == "saga.started"]
    own = [e for e in events if e.task_id == first and e.type.startswith("task.")]
    assert [e.type for e in own] == ["task.sent", "task.received", "task.started", "task.succeeded"], own
    assert all(e.position > started.position for e in own), "the log has the saga before its first step's records"


def test_a_first_step_that_arrives_before_its_saga_is_recorded_waits_for_it_and_runs(system):
    planned, task_id = _planned_first_step(system, "Recorded late", time.time() + 60)

    def running() -> bool:
        active = system.app.control.inspect(timeout=1.0).active() or {}
        return any(t["id"] == task_id for tasks in active.values() for t in tasks)

    wait_for(running, 30, 0.1, "the first step to be running, its saga not recorded")
    repository(system.app).commit_start(planned)
    view = wait_for_saga(planned.decision.saga_id, 60, app=system.app)
    assert view.status == "completed", view
    events = system.store.by_correlation(planned.decision.correlation_id)
    (saga_started,) = [e for e in events if e.type == "saga.started"]
    (task_started,) = [e for e in events if e.task_id == task_id and e.type == "task.started"]
    assert task_started.occurred_at < saga_started.recorded_at, "the step had started before its saga was recorded"


def test_a_first_step_whose_saga_is_never_recorded_is_refused_once_its_wait_is_over_and_does_not_run(system):
    until = time.time() + 3
    planned, task_id = _planned_first_step(system, "Never recorded", until)

    def rejected() -> list[Any]:
        return [e for e in system.store.find(task_id=task_id) if e.type == "task.rejected"]

    (refusal,) = wait_for(rejected, 60, 0.1, "the orphan step's refusal")
    assert refusal.payload["reason"] == "stale-step" and "no saga" in refusal.payload["error_message"]
    assert refusal.occurred_at.timestamp() >= until - 0.1, "it waited for its saga until its message said"
    assert [e.type for e in system.store.find(task_id=task_id)] == [
        "task.sent", "task.received", "task.started", "task.rejected"]
    assert system.store.read_stream(f"saga:{planned.decision.saga_id}") == []
    assert saga_runs(system.content, planned.decision.saga_id) == [], "the step's body never ran"


def _client_app(system: SagaSystem, **away: str) -> Celery:
    """An app as a client's, with the system's sagas and steps known, and a store or broker that is ``away``."""
    settings = make_settings(
        system.tmp, away.get("broker_url", system.settings.broker_url), system.settings.result_backend,
        namespace=system.settings.namespace, record_events=True,
        eventstore_url=away.get("eventstore_url", system.settings.eventstore_url),
        extra_modules=system.settings.extra_modules,
    )
    app = create_app(settings)
    app.loader.import_default_modules()
    return app


def test_a_start_the_log_refuses_raises_and_its_first_step_already_sent_is_refused_unrun(system, monkeypatch):
    monkeypatch.setattr(saga_client, "SAGA_STARTING_WAIT_MAX_S", 3.0)  # the client's header: wait 3 s, not 30
    app = _client_app(system, eventstore_url="postgresql+psycopg://postgres@127.0.0.1:1/nowhere")
    try:
        assert _first_step_fenced(app, saga_definition("content_creation", app)), "the path under test"
        sent_before = {e.task_id for e in system.store.find(type="task.rejected")}
        with pytest.raises(StoreUnavailable):
            start_saga("content_creation", {"topic": "Refused by the log"}, app=app)
    finally:
        app.close()

    def refused() -> list[Any]:
        return [e for e in system.store.find(type="task.rejected") if e.task_id not in sent_before
                and e.agent == "researcher"]

    (refusal,) = wait_for(refused, 60, 0.1, "the orphan first step's refusal")
    assert refusal.payload["reason"] == "stale-step" and "no saga" in refusal.payload["error_message"]
    saga_id = refusal.correlation_id  # a saga's own id, unless its starter gave it another
    assert system.store.read_stream(f"saga:{saga_id}") == [] and saga_runs(system.content, saga_id) == []


def test_a_start_whose_first_step_the_broker_refuses_raises_and_leaves_its_saga_for_the_sweep(system):
    app = _client_app(system, broker_url="amqp://guest:guest@127.0.0.1:1//")
    try:
        assert _first_step_fenced(app, saga_definition("content_creation", app)), "the path under test"
        before = {r.stream_id for r in system.store.find(type="saga.started")}
        with pytest.raises(Exception) as raised:
            start_saga("content_creation", {"topic": "Refused by the broker"}, app=app)
        assert not isinstance(raised.value, StoreUnavailable), raised.value
    finally:
        app.close()
    (stream,) = {r.stream_id for r in system.store.find(type="saga.started")} - before
    saga_id = stream.removeprefix("saga:")
    repo = repository(system.app)
    loaded = repo.load(saga_id)
    assert loaded.state.status == "running", "recorded, as a start whose client died before sending would be"
    assert [f.command.step for f in repo.in_flight(loaded)] == ["research"], "what the sweep times out or resends"
