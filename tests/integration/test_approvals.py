"""Durable human approval: workflows park on a row, a person's decision resumes them, one decision wins.

Real RabbitMQ, Redis and worker processes, on a SQLite and a PostgreSQL event log in turn. Decisions are
made as an operator makes them (the ``relaybus`` CLI in a subprocess) and as an application does
(``relaybus.approve``); the sweep runs as ``relaybus sweep``. The definitions: ``tests.approval_definitions``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from relaybus.eventstore import migrations
from relaybus.eventstore.approvals import Approval
from relaybus.tasks.approvals import approve, get_approval, list_approvals, reject
from relaybus.tasks.errors import AlreadyDecided, NotAnApprover
from relaybus.tasks.pipelines.client import PipelineHandle, start
from relaybus.tasks.saga import start_saga, wait_for_saga
from tests.harness import ROOT, wait_for
from tests.integration.system import TEST_MODULES, System, running_system, system_settings
from tests.services import require_postgres, require_rabbitmq, require_redis

pytestmark = pytest.mark.integration

AGENTS = ("system", "probe", "intake", "planner", "researcher", "writer", "reviewer", "publisher")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def system(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    broker, redis = require_rabbitmq(), require_redis()
    tmp: Path = tmp_path_factory.mktemp(f"approvals-{request.param}")
    schema = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp / 'events.sqlite'}"
    else:
        base = require_postgres()
        schema = f"appr_{uuid.uuid4().hex[:12]}"
        migrations.upgrade(base, schema=schema)
        url = f"{base}?options=-csearch_path%3D{schema}"
    settings = system_settings(
        tmp, broker, redis, eventstore_url=url, extra_modules=(*TEST_MODULES, "tests.approval_definitions"),
        approver_roles={"erin": ("editor",)},
    )
    try:
        with running_system(settings, tmp, [(AGENTS, 3)]) as running:
            yield running
    finally:
        if schema is not None:
            engine = create_engine(require_postgres())
            with engine.begin() as conn:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            engine.dispose()


def cli(system: System, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    """``relaybus ARGS`` as an operator runs it, against the test's services."""
    env = {**system.settings.to_env(), "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "COLUMNS": "200"}
    done = subprocess.run([sys.executable, "-m", "relaybus.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == code, done.stdout + done.stderr
    return done


def pending_of(system: System, workflow: str) -> Approval:
    found = wait_for(lambda: list_approvals(status="pending", workflow=workflow, app=system.app), 30, 0.1,
                     f"a pending approval of {workflow}")
    assert len(found) == 1, found
    return found[0]


def records(handle_or_id: PipelineHandle | str, system: System, prefix: str = "approval.") -> list[Any]:
    from relaybus.eventstore import open_store

    store = open_store(system.settings.eventstore_url)
    try:
        cid = handle_or_id if isinstance(handle_or_id, str) else handle_or_id.id
        return [e for e in store.by_correlation(cid) if e.type.startswith(prefix)]
    finally:
        store.close()


def running_tasks(handle: PipelineHandle) -> set[str]:
    """Tasks of the pipeline with a start record and no end record."""
    events = handle.events()
    ended = {e.task_id for e in events if e.type in ("task.succeeded", "task.failed", "task.dead_lettered")}
    return {str(e.task_id) for e in events if e.type == "task.started"} - ended


def show_timeline(system: System, correlation_id: str) -> None:
    """What an operator sees (``relaybus timeline``, ``relaybus events``), printed once (SQLite run) for the record."""
    if system.settings.eventstore_url.startswith("postgresql"):
        return
    print(cli(system, "timeline", correlation_id).stdout)
    print(cli(system, "events", "--correlation-id", correlation_id, "--type", "approval.*").stdout)


def probe(system: System, name: str, **extra: Any) -> PipelineHandle:
    return start(name, {"key": f"approval:{uuid.uuid4().hex}", **extra}, app=system.app)


def test_a_pipeline_parks_on_an_approval_and_the_cli_approves_it_once_refusing_others(system):
    handle = probe(system, "approval-probe", api_key="sk-live-0123456789abcdef0123")
    approval = pending_of(system, handle.id)
    assert handle.status() == "running"
    # Parked, nothing runs: every task the pipeline started has ended (no worker slot waits for the person).
    wait_for(lambda: not running_tasks(handle), 10, 0.1, "the pipeline's tasks to end")
    assert approval.step == "sign_off" and approval.approvers == ("alice", "role:editor")
    assert approval.subject["api_key"] == "[REDACTED]"  # what to approve is stored redacted
    listed = json.loads(cli(system, "approvals", "list", "--json").stdout)
    assert approval.id in [row["id"] for row in listed]

    refused = cli(system, "approvals", "approve", approval.id, "--by", "mallory", code=4)
    assert "'mallory' may not decide" in refused.stderr and "alice, role:editor" in refused.stderr
    done = cli(system, "approvals", "approve", approval.id, "--by", "alice", "--reason", "checked")
    assert f"approval {approval.id} approved by alice" in done.stdout
    cli(system, "approvals", "approve", approval.id, "--by", "alice")  # the same again: a no-op, exit 0
    late = cli(system, "approvals", "reject", approval.id, "--by", "erin", code=4)
    assert "already approved by alice" in late.stderr

    outcome = handle.wait(30)
    assert outcome.status == "completed", outcome
    assert outcome.output and outcome.output.get("label") == "after"
    kinds = [(e.type, e.payload.get("decided_by")) for e in records(handle, system)]
    assert kinds == [("approval.requested", None), ("approval.granted", "alice")]
    requested, granted = records(handle, system)
    assert granted.causation_id == requested.event_id and granted.payload["reason"] == "checked"
    assert requested.correlation_id == granted.correlation_id == handle.id
    show_timeline(system, handle.id)


def test_python_approves_as_a_role_holder_and_a_rejection_fails_the_pipeline(system):
    handle = probe(system, "approval-probe")
    approval = pending_of(system, handle.id)
    decided = approve(approval.id, by="erin", app=system.app)  # erin holds role:editor (RELAYBUS_APPROVER_ROLES)
    assert decided.status == "approved" and decided.decided_by == "erin"
    assert handle.wait(30).status == "completed"
    print("\n".join(f"{e.type} {e.payload}" for e in records(handle, system)))

    rejected = probe(system, "approval-probe")
    approval = pending_of(system, rejected.id)
    with pytest.raises(NotAnApprover):
        reject(approval.id, by="bob", app=system.app)
    reject(approval.id, by="alice", reason="not this one", app=system.app)
    outcome = rejected.wait(30)
    assert outcome.status == "failed" and outcome.stage == "sign_off"
    assert outcome.reason == "approval-rejected: step 'sign_off' rejected by alice: not this one"
    assert not [e for e in rejected.events() if e.type == "task.started" and e.agent == "probe"
                and e.payload.get("kwargs", {}).get("label") == "after"]
    show_timeline(system, rejected.id)


def test_a_missed_deadline_is_expired_by_the_sweep_and_cannot_be_approved_afterwards(system):
    handle = probe(system, "approval-hurry")
    approval = pending_of(system, handle.id)
    wait_for(lambda: approval.deadline < datetime.now(UTC), 10, 0.1, "the deadline to pass")
    with pytest.raises(AlreadyDecided, match="missed its deadline"):
        approve(approval.id, by="alice", app=system.app)
    report = json.loads(cli(system, "sweep", "--json").stdout)
    assert approval.id in report["pipelines"]["approvals_expired"], report
    outcome = handle.wait(30)
    assert outcome.status == "failed" and outcome.reason.startswith("approval-expired: step 'sign_off'"), outcome
    with pytest.raises(AlreadyDecided, match=r"already expired by relaybus\.sweep"):
        approve(approval.id, by="alice", app=system.app)
    assert [e.type for e in records(handle, system)] == ["approval.requested", "approval.expired"]
    assert json.loads(cli(system, "sweep", "--json").stdout)["pipelines"]["approvals_expired"] == []


def test_an_expiry_whose_sweep_died_before_recording_it_is_carried_out_by_the_next_sweep(system):
    from relaybus.tasks.runtime.approvals import approval_store

    handle = probe(system, "approval-hurry")
    approval = pending_of(system, handle.id)
    wait_for(lambda: approval.deadline < datetime.now(UTC), 10, 0.1, "the deadline to pass")
    # What a sweep killed right after its UPDATE leaves: the row expired, no record, the pipeline parked.
    assert approval_store(system.app).approvals.decide(approval.id, "expired", by="relaybus.sweep", reason="x",
                                                       now=datetime.now(UTC))
    report = json.loads(cli(system, "sweep", "--json").stdout)
    assert approval.id in report["pipelines"]["approvals_expired"], report
    assert handle.wait(30).reason.startswith("approval-expired")  # type: ignore[union-attr]
    assert json.loads(cli(system, "sweep", "--json").stdout)["pipelines"]["approvals_expired"] == []


def test_a_rejected_saga_approval_compensates_the_completed_steps_last_first(system):
    saga_id = start_saga("approval_content", {"topic": "durable approvals"}, app=system.app)
    approval = pending_of(system, saga_id)
    assert approval.workflow_kind == "saga" and approval.subject["saga"] == "approval_content"
    cli(system, "approvals", "reject", approval.id, "--by", "alice", "--reason", "off brand")
    view = wait_for_saga(saga_id, 60, app=system.app)
    assert view.status == "compensated", view
    steps = {s.step: s for s in view.steps}
    assert steps["sign_off"].outcome == "failed" and steps["publishing"].outcome == "pending"
    undone = sorted((s for s in view.steps if s.compensation and s.compensation.status == "succeeded"),
                    key=lambda s: s.compensation.started_at)  # type: ignore[union-attr]
    assert [s.step for s in undone] == ["review", "writing"]
    show_timeline(system, saga_id)

    approved = start_saga("approval_content", {"topic": "approved content"}, app=system.app)
    approve(pending_of(system, approved).id, by="alice", app=system.app)
    assert wait_for_saga(approved, 60, app=system.app).status == "completed"


def test_the_reference_pipeline_can_wait_for_approval_before_publishing(system):
    handle = start("research", {"request": "How do sagas compensate?", "max_topics": 2,
                                "approve_before_publish": {"approvers": ["alice"], "timeout_s": 60}}, app=system.app)
    approval = pending_of(system, handle.id)
    assert approval.step == "approve_publication" and approval.subject["title"]
    assert handle.status() == "running"
    approve(approval.id, by="alice", app=system.app)
    outcome = handle.wait(60)
    assert outcome.status == "completed" and outcome.output and outcome.output["sha256"], outcome


def race(system: System, approval_id: str, deciders: dict[str, Callable[..., Approval]]) -> dict[str, Any]:
    """Each decider decides at the same moment, in a thread of its own: who -> status, or the refusal."""
    barrier = threading.Barrier(len(deciders))
    results: dict[str, Any] = {}

    def act(who: str, decide: Callable[..., Approval]) -> None:
        barrier.wait()
        try:
            results[who] = decide(approval_id, by=who, app=system.app).status
        except AlreadyDecided as error:
            results[who] = error

    threads = [threading.Thread(target=act, args=item) for item in deciders.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_two_approvers_racing_make_exactly_one_decision(system):
    handles = [probe(system, "approval-probe") for _ in range(3)]
    for handle in handles:
        approval = pending_of(system, handle.id)
        results = race(system, approval.id, {"alice": approve, "erin": reject})
        winners = [who for who, r in results.items() if isinstance(r, str)]
        assert len(winners) == 1 and len(results) == 2, results
        stored = get_approval(approval.id, app=system.app)
        assert stored.decided_by == winners[0]
        decisions = [e for e in records(handle, system) if e.type != "approval.requested"]
        assert [e.payload["decided_by"] for e in decisions] == winners
        assert handle.wait(30).status == ("completed" if stored.status == "approved" else "failed")


@pytest.mark.parametrize("system", ["sqlite"], indirect=True)  # the console reads the same table on both databases
def test_the_console_lists_pending_approvals_and_decides_behind_csrf_unless_read_only(system, tmp_path):
    import httpx

    from tests.integration.test_web import TOKEN, console

    handle = probe(system, "approval-probe")
    approval = pending_of(system, handle.id)
    auth = {"authorization": f"Bearer {TOKEN}"}
    with console(system.settings, tmp_path, "--read-only") as base, httpx.Client(base_url=base, headers=auth) as c:
        page = c.get("/approvals").text
        assert approval.id in page and "Approve" not in page.split("<h3>")[0].split("</thead>")[1]
        refused = c.post(f"/approvals/{approval.id}/approve", data={"csrf": c.cookies["relaybus_csrf"], "by": "alice"})
        assert refused.status_code == 403
    with console(system.settings, tmp_path) as base, httpx.Client(base_url=base, headers=auth) as c:
        page = c.get("/approvals").text
        assert f'action="/approvals/{approval.id}/approve"' in page and "data-confirm" in page
        forged = c.post(f"/approvals/{approval.id}/approve", data={"by": "alice"})
        assert forged.status_code == 403 and "CSRF" in forged.text
        csrf = c.cookies["relaybus_csrf"]
        stranger = c.post(f"/approvals/{approval.id}/approve", data={"csrf": csrf, "by": "mallory"})
        assert stranger.status_code == 303 and "may+not+decide" in stranger.headers["location"]
        done = c.post(f"/approvals/{approval.id}/approve", data={"csrf": csrf, "by": "alice", "reason": "web"})
        assert done.status_code == 303 and "approved+by+alice" in done.headers["location"]
    assert handle.wait(30).status == "completed"
    assert get_approval(approval.id, app=system.app).reason == "web"
