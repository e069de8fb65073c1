"""A fan-out member revoked while it waits in its queue: the chord's error path ends the pipeline ``failed``
at once (not at its deadline), and the revoked member never runs."""

from __future__ import annotations

from pathlib import Path

import pytest

import relaybus
from relaybus.tasks.agents.pipeline_models import ResearchRequest
from relaybus.tasks.pipelines.client import start
from tests.harness import Worker, wait_for
from tests.integration.system import running_system, system_settings
from tests.services import require_rabbitmq, require_redis

pytestmark = pytest.mark.integration

PIPELINE_AGENTS = ("system", "intake", "planner", "writer", "reviewer", "publisher", "auditor")
TOPICS = "Compare retries, sagas and idempotency for agent pipelines"


def test_a_fan_out_member_revoked_while_queued_ends_its_pipeline_failed(tmp_path: Path) -> None:
    settings = system_settings(tmp_path, require_rabbitmq(), require_redis())
    with running_system(settings, tmp_path, [(PIPELINE_AGENTS, 2)]) as system:  # no researcher worker yet
        handle = start("research", ResearchRequest(request=TOPICS, max_topics=3), app=system.app)
        members = wait_for(
            lambda: (sent := [e.task_id for e in handle.events() if e.type == "task.sent" and e.agent == "researcher"])
            and len(sent) == 3 and sent, 60, 0.1, "the three researchers to be sent")
        relaybus.revoke(members[1], app=system.app)
        researchers = Worker(settings, ("researcher",), tmp_path, concurrency=2)
        system.workers.append(researchers)
        researchers.wait_ready(system.app)
        outcome = handle.wait(90)
        assert outcome.status == "failed", outcome
        assert "revoked" in (outcome.reason or "").lower(), outcome
        events = handle.events()
        assert [e.type for e in events if e.task_id == members[1] and e.type in ("task.started", "task.revoked")] == [
            "task.revoked"
        ]
