"""Re-driving recorded pipelines from a chosen step, with real workers on RabbitMQ."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from relaybus.eventstore import open_store
from relaybus.replay import RedriveError, redrive
from relaybus.tasks.agents.pipeline_models import ResearchRequest
from relaybus.tasks.pipelines.client import PipelineHandle, start
from tests.integration.system import System, running_system, system_settings
from tests.services import require_rabbitmq, require_redis

pytestmark = pytest.mark.integration

AGENTS = ("system", "intake", "planner", "researcher", "writer", "reviewer", "publisher")


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    broker, redis = require_rabbitmq(), require_redis()
    tmp: Path = tmp_path_factory.mktemp("replay")
    with running_system(system_settings(tmp, broker, redis), tmp, [(AGENTS, 2)]) as running:
        yield running


def original_run(system: System) -> PipelineHandle:
    handle = start("research", ResearchRequest(request="How do sagas and dead-letter queues compare?",
                                               max_topics=2), app=system.app)
    assert handle.wait(60).status == "completed"
    return handle


def test_a_redrive_from_the_planner_reuses_the_recorded_intake_and_reaches_the_same_outcome(system):
    original = original_run(system)
    store = open_store(system.settings.eventstore_url)
    try:
        result = redrive(system.app, store, original.id, "planner", deterministic=True)
        replayed = PipelineHandle(result.correlation_id, system.app)
        outcome = replayed.wait(60)
        assert outcome.status == "completed"
        assert replayed.result() == original.result()
        events = store.by_correlation(result.correlation_id)
        agents_sent = [e.agent for e in events if e.type == "task.sent"]
        assert "intake" not in agents_sent, "steps before the chosen one must not run again"
        assert agents_sent[0] == "planner"
        marker = next(e for e in events if e.type == "workflow.replayed")
        assert marker.payload["replay_of"] == original.id
    finally:
        store.close()


def test_a_deterministic_redrive_of_the_whole_run_is_identical_step_by_step(system):
    original = original_run(system)
    store = open_store(system.settings.eventstore_url)
    try:
        result = redrive(system.app, store, original.id, "1", deterministic=True)
        assert PipelineHandle(result.correlation_id, system.app).wait(60).status == "completed"
        difference = store.diff(original.id, result.correlation_id)
        assert difference.identical, difference.first_difference
    finally:
        store.close()


def test_a_redrive_names_the_problem_when_the_step_cannot_be_redriven(system):
    original = original_run(system)
    store = open_store(system.settings.eventstore_url)
    try:
        with pytest.raises(RedriveError, match="no step 'nobody'"):
            redrive(system.app, store, original.id, "nobody")
        with pytest.raises(RedriveError, match="fan-out"):
            redrive(system.app, store, original.id, "researcher")
        with pytest.raises(RedriveError, match="no events"):
            redrive(system.app, store, "no-such-run", "1")
    finally:
        store.close()


def test_relaybus_run_starts_a_pipeline_from_the_command_line_and_reports_its_outcome(system):
    import json
    import os
    import subprocess
    import sys

    from tests.harness import ROOT

    env = {**os.environ, **system.settings.to_env(), "PYTHONPATH": str(ROOT)}
    ran = subprocess.run(
        [sys.executable, "-m", "relaybus.cli", "run", "research", "--input",
         json.dumps({"request": "What is a dead-letter queue?", "max_topics": 1}), "--priority", "high", "--json"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    outcome = json.loads(ran.stdout)
    assert outcome["status"] == "completed"
    failed = subprocess.run(
        [sys.executable, "-m", "relaybus.cli", "run", "research", "--input",
         json.dumps({"request": "What is a saga?", "fail_researchers": [0]})],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "failed" in failed.stdout
