"""The helpdesk example (examples/helpdesk), run as a user runs it: a worker started with the two settings, and
``relaybus run`` in a subprocess, from a folder of the user's own.

The example's package is on the subprocesses' PYTHONPATH only: this process never imports it, so the test
sees exactly what a user's worker and CLI see. One worker serves the module (starting one costs seconds);
each test runs its own ticket and tells its pipeline apart by id.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from relaybus.celery import create_app, topology_of
from relaybus.eventstore import open_store
from relaybus.settings import Settings
from relaybus.tasks.bus.bus import event_queue_name
from tests.harness import ROOT, Worker, consumer_count, delete_namespace, make_settings, queue_depth, wait_for
from tests.services import require_rabbitmq, require_redis

pytestmark = pytest.mark.integration

EXAMPLE = ROOT / "examples" / "helpdesk"
RELAYBUS = Path(sys.executable).parent / "relaybus"
AGENTS = ("classifier", "answerer", "composer", "notifier")
#: Queues of events: the notifier's subscription, and relaybus's own outcome subscriber on the system agent.
SUBSCRIBERS = ("notifier", "system")

BILLING_TICKET = {
    "ticket_id": "T-1001",
    "customer": "Ada",
    "subject": "Charged twice",
    "body": "Hello. I was charged twice this month, why? And how do I reset my password? Thanks!",
}
OUTAGE_TICKET = {
    "ticket_id": "T-1002",
    "customer": "Grace",
    "subject": "Dashboard is down",
    "body": "The dashboard is down for our whole team since 9:00. When will it be back?",
}


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return make_settings(tmp_path_factory.mktemp("helpdesk"), require_rabbitmq(), require_redis(),
                         extra_modules=("helpdesk.pipeline",), extra_agents=AGENTS, record_events=True)


@pytest.fixture(scope="module")
def app(settings: Settings) -> Iterator[Celery]:
    # Not tests.harness.make_app: that imports RELAYBUS_EXTRA_MODULES here, and only the subprocesses have
    # the example on their path. This app only declares, counts and deletes queues.
    app = create_app(settings)
    with app.connection_for_write() as conn:
        topology_of(app).declare(conn)
    yield app
    delete_namespace(app)
    app.close()


def example_env(settings: Settings) -> dict[str, str]:
    """What a user exports: the RELAYBUS_* settings, and the example on the path."""
    return {**os.environ, **settings.to_env(), "PYTHONPATH": str(EXAMPLE)}


@pytest.fixture(scope="module")
def worker(settings: Settings, app: Celery, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    worker = Worker(settings, ("system", *AGENTS), tmp_path_factory.mktemp("logs"), concurrency=2,
                    extra_env={"PYTHONPATH": str(EXAMPLE)})
    try:
        worker.wait_ready(app)
        for subscriber in SUBSCRIBERS:
            queue = event_queue_name(settings.namespace, subscriber)
            wait_for(lambda q=queue: consumer_count(app, q) > 0, 30, what=f"a consumer on {queue}")
        yield worker
    finally:
        worker.stop()


def relaybus(settings: Settings, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(RELAYBUS), *args], cwd=cwd, env=example_env(settings), capture_output=True,
                          text=True, timeout=60)


def run_ticket(settings: Settings, cwd: Path, ticket: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    result = relaybus(settings, cwd, "run", "helpdesk", "--input", json.dumps(ticket), "--json", "--timeout", "30")
    assert result.stdout.strip(), f"no output (exit {result.returncode}):\n{result.stderr}"
    outcome: dict[str, Any] = json.loads(result.stdout)
    return result.returncode, outcome


def records(settings: Settings, pipeline_id: str) -> list[Any]:
    store = open_store(settings.eventstore_url)
    try:
        return list(store.by_correlation(pipeline_id))
    finally:
        store.close()


def test_a_ticket_with_two_questions_gets_one_reply_answering_both_from_the_knowledge_base(
    settings, worker, tmp_path
):
    code, outcome = run_ticket(settings, tmp_path, BILLING_TICKET)

    assert code == 0, outcome
    assert outcome["status"] == "completed", outcome
    assert outcome["pipeline"] == "helpdesk"
    reply = outcome["output"]
    assert reply["ticket_id"] == "T-1001"
    assert reply["category"] == "billing"
    assert reply["articles"] == ["kb-billing-double-charge", "kb-account-password"]
    text = reply["reply"]
    assert text.startswith("Hello Ada,")
    # The answers come back in the order of the questions, each under its question.
    first, second = text.index("> I was charged twice this month, why?"), text.index("> And how do I reset my")
    assert first < second
    assert "card authorisation" in text[first:second]
    assert "Reset password" in text[second:]

    # The notifier's subscription (Pipeline.on) ran in the same pipeline, under the same id.
    def notified() -> bool:
        logged = records(settings, outcome["pipeline_id"])
        return any(r.type == "task.succeeded" and r.agent == "notifier" for r in logged)

    wait_for(notified, 15, 0.2, "the notifier to handle ticket.classified")

    timeline = relaybus(settings, tmp_path, "timeline", outcome["pipeline_id"], "--json")
    assert timeline.returncode == 0, timeline.stderr
    steps = json.loads(timeline.stdout)["steps"]
    ran = sorted(s["agent"] for s in steps if s["status"] == "succeeded")
    for agent in ("answerer", "answerer", "classifier", "composer", "notifier"):
        assert agent in ran, ran
    assert ran.count("answerer") == 2, ran


def test_an_outage_ticket_fails_the_pipeline_at_the_classifier_and_waits_in_its_dead_letter_queue(
    settings, app, worker, tmp_path
):
    dead_letters = f"{settings.namespace}.classifier.dlq"
    before = queue_depth(app, dead_letters)

    code, outcome = run_ticket(settings, tmp_path, OUTAGE_TICKET)

    assert code == 1, outcome
    assert outcome["status"] == "failed", outcome
    assert outcome["output"] is None
    assert outcome["stage"] == "classifier"
    assert outcome["reason"] == (
        "step 'classifier' (agent classifier) failed: PermanentError: "
        "ticket T-1002 reports an outage: escalated to the on-call engineer"
    )
    # A permanent error is not retried: one attempt, then the dead-letter queue.
    wait_for(lambda: queue_depth(app, dead_letters) == before + 1, 10, what="the ticket in the classifier's DLQ")
    types = [r.type for r in records(settings, outcome["pipeline_id"])]
    assert types.count("task.retried") == 0, types
    assert "pipeline.failed" in types, types


def test_the_cli_lists_the_helpdesk_pipeline_with_its_steps(settings, tmp_path):
    result = relaybus(settings, tmp_path, "pipelines")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "helpdesk" in result.stdout
    for agent in ("classifier", "answerer", "composer"):
        assert agent in result.stdout
