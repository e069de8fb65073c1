"""Edges of human approvals: a pipeline that ends while (or before) it is parked on a person.

* The pipeline deadline ends a pipeline whose step is slow; the step finishes late and its pipeline parks
  on an approval: the approval is closed as it is requested (the pipeline has its outcome), so a person
  approving afterwards resumes nothing.
* A pipeline parked on an approval is failed by another of its steps (the error callback a revoked or
  failed step runs, ``pipelines.fail``): the outcome closes the pending approval.
* A saga compensates for a failed step while the approval beside it is pending: it waits for the approval
  member to end, so the sweep closes the approval (its workflow stopped going forward) and the saga ends.
* The decider is killed between its decision's record and the message that resumes the pipeline: the
  workflow sweep finds a decision its workflow never followed and carries it out again, once.

Real worker processes on the private RabbitMQ, Redis and PostgreSQL.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from celery import Celery

from relaybus.eventstore import EventStore, open_store
from relaybus.eventstore.approvals import Approval
from relaybus.settings import Settings
from relaybus.tasks.approvals import approve, list_approvals
from relaybus.tasks.errors import AlreadyDecided
from relaybus.tasks.pipelines.client import PipelineHandle, start
from relaybus.tasks.pipelines.deadline import sweep_pipelines
from relaybus.tasks.pipelines.registry import FAIL_TASK
from relaybus.tasks.runtime.approvals import ENDED_PRINCIPAL, RESUME_GRACE_S
from relaybus.tasks.runtime.context import CORRELATION_HEADER
from relaybus.tasks.saga import saga_status, start_saga, wait_for_saga
from tests.chaos.services import PrivatePostgres, PrivateRabbitMQ, PrivateRedis
from tests.chaos.system import new_schema
from tests.harness import ROOT, Worker, delete_namespace, make_app, make_settings, wait_for

pytestmark = pytest.mark.timeout(180)

DEADLINE_S = 3.0


class Running:
    def __init__(self, settings: Settings, app: Celery, store: EventStore, worker: Worker) -> None:
        self.settings, self.app, self.store, self.worker = settings, app, store, worker

    def approvals_of(self, handle: PipelineHandle) -> list[Approval]:
        return list_approvals(workflow=handle.id, app=self.app)

    def ran(self, key: str) -> list[bytes]:
        """Every start the probes of the run ``key`` noted."""
        return [n for n in redis.Redis.from_url(self.settings.result_backend).lrange(key, 0, -1) if b'"start"' in n]

    def ran_after(self, key: str) -> list[bytes]:
        """The starts of the probe after the approval (tests.agents notes each in the Redis list ``key``)."""
        return [n for n in self.ran(key) if b'"label": "after"' in n]


@pytest.fixture
def running(
    rabbitmq: PrivateRabbitMQ,
    redis_server: PrivateRedis,
    postgres: PrivatePostgres,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Running]:
    settings = make_settings(
        tmp_path,
        rabbitmq.url,
        redis_server.url,
        eventstore_url=new_schema(postgres.url),
        extra_modules=("tests.agents", "tests.limited_agents", "tests.edges_definitions"),
        extra_agents=("probe", "asker"),
        pipeline_deadline_s=DEADLINE_S,
    )
    app = make_app(settings)
    store = open_store(settings.eventstore_url)
    with app.connection_for_write() as conn:
        app.conf.relaybus_topology.declare(conn)
    worker = Worker(
        settings,
        ("system", "probe"),
        tmp_path,
        concurrency=2,
        name="approval-edges",
        extra_env={"RELAYBUS_TEST_REDIS_URL": redis_server.url},
    )
    try:
        worker.wait_ready(app, timeout=90)
        yield Running(settings, app, store, worker)
    finally:
        worker.stop()
        store.close()
        delete_namespace(app)
        app.close()


def test_a_pipeline_timed_out_before_its_late_step_parks_it_cannot_be_approved_into_running_again(
    running: Running,
) -> None:
    key = f"late-park-{uuid.uuid4().hex[:8]}"
    handle = start("edge-park", {"key": key, "sleep_s": DEADLINE_S + 4}, app=running.app)
    # The probe sleeps past the pipeline's deadline: the sweep ends the pipeline while the step still runs.
    wait_for(lambda: handle.id in sweep_pipelines(running.app).timed_out, 30, 0.5, "the sweep to time it out")
    assert handle.wait(10).status == "timed_out"

    # The step finishes late; its pipeline's next stage asks for an approval of a pipeline that has ended.
    approval = wait_for(lambda: running.approvals_of(handle), 30, 0.1, "the late approval request")[0]
    approval = wait_for(
        lambda: [a for a in running.approvals_of(handle) if a.status != "pending"],
        10,
        0.1,
        f"the late approval to be closed (it is {approval.status})",
    )[0]
    assert approval.status == "expired" and approval.decided_by == ENDED_PRINCIPAL, approval
    assert "pipeline.timed_out" in (approval.reason or ""), approval.reason
    with pytest.raises(AlreadyDecided):
        approve(approval.id, by="alice", app=running.app)

    types = [e.type for e in running.store.by_correlation(handle.id) if e.type.startswith("approval.")]
    assert types == ["approval.requested", "approval.expired"], types
    assert handle.status() == "timed_out"
    assert not running.ran_after(key), "a step ran after the pipeline timed out, resumed by a person"


def test_a_parked_pipeline_failed_by_a_revoked_steps_error_callback_cannot_be_approved_into_running_again(
    running: Running,
) -> None:
    keys = [f"parked-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    handles = [start("edge-park", {"key": key}, app=running.app) for key in keys]
    approvals = [wait_for(lambda h=h: running.approvals_of(h), 30, 0.1, "the pipeline to park")[0] for h in handles]
    # What a revoked step of each pipeline runs (tasks.runtime.request: a revoke runs its error callbacks).
    for handle in handles:
        running.app.send_task(FAIL_TASK, kwargs={"pipeline": "edge-park"}, headers={CORRELATION_HEADER: handle.id})
        assert handle.wait(30).status == "failed"

    # The first is decided by a person: refused, the approval closed instead of resuming an ended pipeline.
    with pytest.raises(AlreadyDecided, match=r"relaybus\.workflow-ended"):
        approve(approvals[0].id, by="alice", app=running.app)
    # Nobody decides the second: the sweep closes it, so nobody is asked for nothing.
    later = datetime.now(UTC) + timedelta(seconds=RESUME_GRACE_S + 1)
    assert sweep_pipelines(running.app, now=later).approvals_expired == [approvals[1].id]
    for handle, key in zip(handles, keys, strict=True):
        closed = running.approvals_of(handle)[0]
        assert closed.status == "expired" and closed.decided_by == ENDED_PRINCIPAL, closed
        assert "pipeline.failed" in (closed.reason or ""), closed.reason
        types = [e.type for e in running.store.by_correlation(handle.id) if e.type.startswith("approval.")]
        assert types == ["approval.requested", "approval.expired"], types
        assert handle.status() == "failed" and not running.ran_after(key)
    assert sweep_pipelines(running.app, now=later).approvals_expired == []


#: A decider that dies right after recording its decision, before the pipeline's next step is sent.
DYING_DECIDER = """
import os, sys
from relaybus.settings import Settings
from tests.harness import make_app
app = make_app(Settings())
import relaybus.tasks.api  # the resumers
from relaybus.tasks.pipelines.approval import PipelineResumer
PipelineResumer.approved = lambda *args: os._exit(9)
from relaybus.tasks.approvals import approve
approve(sys.argv[1], by="alice", app=app)
"""


def test_a_decision_whose_decider_died_before_resuming_is_carried_out_once_by_the_sweep(running: Running) -> None:
    key = f"lost-resume-{uuid.uuid4().hex[:8]}"
    handle = start("edge-park-hour", {"key": key}, app=running.app)
    approval = wait_for(lambda: running.approvals_of(handle), 30, 0.1, "the pipeline to park")[0]
    env = {**os.environ, **running.settings.to_env(), "PYTHONPATH": str(ROOT)}
    died = subprocess.run(
        [sys.executable, "-c", DYING_DECIDER, approval.id],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert died.returncode == 9, died.stdout + died.stderr
    assert [a.status for a in running.approvals_of(handle)] == ["approved"]
    types = [e.type for e in running.store.by_correlation(handle.id) if e.type.startswith("approval.")]
    assert types == ["approval.requested", "approval.granted"], types
    assert handle.status() == "running" and not running.ran_after(key)

    now = datetime.now(UTC)
    assert approval.id not in sweep_pipelines(running.app, now=now).approvals_resumed, "resumed within its grace"
    later = now + timedelta(seconds=RESUME_GRACE_S + 1)
    assert sweep_pipelines(running.app, now=later).approvals_resumed == [approval.id]
    outcome = handle.wait(30)
    assert outcome.status == "completed", outcome
    assert sweep_pipelines(running.app, now=later).approvals_resumed == [], "its workflow moved on: left alone"
    assert len(running.ran_after(key)) == 1 and len(running.ran(key)) == 2
    types = [e.type for e in running.store.by_correlation(handle.id) if e.type.startswith("approval.")]
    assert types == ["approval.requested", "approval.granted"], "the decision is recorded once"


def test_a_saga_compensating_beside_a_pending_approval_has_it_closed_by_the_sweep_and_ends(running: Running) -> None:
    saga_id = start_saga("edge_gate", {"key": f"gate-{uuid.uuid4().hex[:8]}"}, app=running.app)
    approval = wait_for(lambda: list_approvals(workflow=saga_id, app=running.app), 30, 0.1, "the approval")[0]
    # The member beside the approval failed: the saga compensates, and waits for the approval member to end.
    wait_for(lambda: saga_status(saga_id, app=running.app).status == "compensating", 30, 0.1, "compensating")
    assert list_approvals(workflow=saga_id, app=running.app)[0].status == "pending"

    later = datetime.now(UTC) + timedelta(seconds=RESUME_GRACE_S + 1)
    report = sweep_pipelines(running.app, now=later)
    assert approval.id in report.approvals_expired, report
    assert wait_for_saga(saga_id, 30, app=running.app).status == "compensated"
    closed = list_approvals(workflow=saga_id, app=running.app)[0]
    assert closed.status == "expired" and closed.decided_by == ENDED_PRINCIPAL, closed
    assert "saga.compensating" in (closed.reason or ""), closed.reason
    with pytest.raises(AlreadyDecided):
        approve(approval.id, by="alice", app=running.app)
    types = [e.type for e in running.store.by_correlation(saga_id) if e.type.startswith("approval.")]
    assert types == ["approval.requested", "approval.expired"], types
    assert sweep_pipelines(running.app, now=later).approvals_expired == []
