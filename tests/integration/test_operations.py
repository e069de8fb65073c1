"""Operating relaybus through its CLI against the real broker: status and the dead-letter queue."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest
from sqlalchemy import create_engine, text

from relaybus.tasks.runtime.context import workflow_context
from tests.harness import ROOT, queue_depth, redis_list, wait_for

pytestmark = pytest.mark.integration


def cli(settings, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    import os

    env = {**os.environ, **settings.to_env(), "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "relaybus.cli", *args], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_status_json_reports_the_queue_depths_a_test_enqueued(app, settings):
    probe = app.tasks["agents.probe"]
    for i in range(7):
        probe.apply_async(kwargs={"key": "k", "label": str(i)})
    rows = {r["agent"]: r for r in json.loads(cli(settings, "status", "--json").stdout)}
    assert rows["probe"]["depth"] == 7
    assert rows["probe"]["consumers"] == 0
    assert rows["flaky"]["depth"] == 0


def test_a_dead_letter_stays_until_a_person_requeues_it_and_then_gets_a_fresh_retry_budget(
    app, settings, start_worker, redis_client
):
    k = f"test:{uuid.uuid4().hex}"
    start_worker("flaky")
    result = app.tasks["agents.flaky"].apply_async(kwargs={"key": k})
    dlq = f"{settings.namespace}.flaky.dlq"
    wait_for(lambda: queue_depth(app, dlq) == 1, 60, what="the first dead letter")

    listed = json.loads(cli(settings, "dlq", "list", "--agents", "flaky", "--json").stdout)
    assert [d["task_id"] for d in listed] == [result.id]
    assert listed[0]["reason"] == "retries-exhausted" and listed[0]["attempts"] == 3
    assert queue_depth(app, dlq) == 1, "listing must not consume"

    shown = json.loads(cli(settings, "dlq", "show", result.id, "--json").stdout)
    assert shown["error_type"] == "TransientError"
    assert cli(settings, "dlq", "show", "no-such-id", check=False).returncode == 1

    moved = json.loads(cli(settings, "dlq", "requeue", "--id", result.id, "--json").stdout)
    assert [m["task_id"] for m in moved] == [result.id]
    wait_for(lambda: len(redis_list(redis_client, k)) == 6, 60, what="three more attempts after the requeue")
    wait_for(lambda: queue_depth(app, dlq) == 1, 60, what="the second dead letter")
    (again,) = json.loads(cli(settings, "dlq", "list", "--json").stdout)
    assert again["redrives"] == 1

    purged = cli(settings, "dlq", "purge", "--yes", "--agents", "flaky")
    assert "purged 1" in purged.stdout
    assert queue_depth(app, dlq) == 0


def test_verify_through_the_cli_detects_a_payload_changed_by_hand(app, settings, start_worker):
    start_worker("intake")
    with workflow_context():
        app.tasks["agents.intake"].apply_async(kwargs={"request": "What is a saga?"}).get(timeout=60)
    assert cli(settings, "verify").returncode == 0
    engine = create_engine(settings.eventstore_url)
    with engine.begin() as conn:
        conn.execute(text("DROP TRIGGER events_no_update"))
        conn.execute(text("UPDATE events SET payload = '{\"tampered\": true}' WHERE type = 'task.succeeded'"))
    engine.dispose()
    broken = cli(settings, "verify", check=False)
    assert broken.returncode == 1
    assert "BROKEN" in broken.stderr
