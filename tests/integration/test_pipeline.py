"""The reference pipeline end to end: real RabbitMQ and Redis, two worker processes (never eager mode).

One worker serves the researchers, the other every other agent of the pipeline and the test's
auditor; all tests share them and isolate themselves by pipeline id (= correlation id).
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relaybus.tasks.agents.pipeline_models import ResearchRequest, ReviewPolicy
from relaybus.tasks.errors import InvalidInput, PipelineFailure
from relaybus.tasks.pipelines.client import PipelineHandle, start
from tests.harness import redis_list, wait_for
from tests.integration.system import System, running_system, system_settings
from tests.services import require_rabbitmq, require_redis

pytestmark = pytest.mark.integration

FIVE_TOPICS = "Compare retries, sagas, idempotency, chords and dead-letter queues for agent pipelines"
PIPELINE_AGENTS = ("system", "intake", "planner", "writer", "reviewer", "publisher", "auditor")


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    broker, redis = require_rabbitmq(), require_redis()
    tmp: Path = tmp_path_factory.mktemp("pipeline")
    settings = system_settings(tmp, broker, redis)
    with running_system(settings, tmp, [(PIPELINE_AGENTS, 2), (("researcher",), 2)]) as running:
        yield running


def run(system: System, timeout: float = 60.0, priority: str | None = None, **request: Any) -> PipelineHandle:
    handle = start("research", ResearchRequest(**request), priority=priority, app=system.app)
    try:
        handle.wait(timeout)
    except TimeoutError:
        raise AssertionError(f"pipeline {handle.id} hung\n{system.logs()}") from None
    return handle


def count(events: list[Any], type_: str, **where: Any) -> int:
    return sum(1 for e in events if e.type == type_ and all(_field(e, k) == v for k, v in where.items()))


def _field(event: Any, name: str) -> Any:
    return event.payload.get(name) if name in ("event_type", "reason") else getattr(event, name)


def settled_events(handle: PipelineHandle) -> list[Any]:
    """The pipeline's log once its outcome is recorded (the log may trail the result by a few ms)."""
    return wait_for(lambda: (ev := handle.events()) and any(e.type.startswith("pipeline.") and
                             e.type != "pipeline.started" for e in ev) and ev, 30, what="the outcome record")


def test_the_reference_pipeline_with_five_researchers_completes_and_the_writer_runs_once(system):
    handle = run(system, request=FIVE_TOPICS, max_topics=5)
    assert handle.status() == "completed"
    article = handle.result()
    assert article["rounds"] == 1 and article["sources"] and article["sha256"]
    assert article["body"].count("\n## ") == 5

    events = settled_events(handle)
    assert {e.correlation_id for e in events} == {handle.id}
    assert count(events, "task.succeeded", agent="researcher") == 5
    assert count(events, "task.started", agent="writer") == 1
    assert count(events, "event.published", event_type="draft.written") == 1
    assert count(events, "event.published", event_type="research.completed") == 5
    for agent in ("intake", "planner", "writer", "reviewer", "publisher"):
        assert count(events, "task.succeeded", agent=agent) == 1, agent
    assert [e.type for e in events if e.type.startswith("pipeline.")] == ["pipeline.started", "pipeline.completed"]


def test_a_rejected_draft_goes_back_to_the_writer_with_feedback_and_the_next_draft_passes(system):
    handle = run(system, request=FIVE_TOPICS, max_topics=2, review=ReviewPolicy(max_rounds=3, reject_drafts=1))
    assert handle.result()["rounds"] == 2
    assert "Revision 2, after review: rejected by policy" in handle.result()["body"]
    events = settled_events(handle)
    assert count(events, "event.published", event_type="draft.rejected") == 1
    assert count(events, "event.published", event_type="draft.written") == 2
    assert count(events, "event.delivered", event_type="draft.rejected", agent="writer") == 1


def test_after_k_rejected_drafts_the_pipeline_fails_with_the_reason_in_its_timeline(system):
    handle = run(system, request=FIVE_TOPICS, max_topics=1, review=ReviewPolicy(max_rounds=2, reject_drafts=5))
    assert handle.status() == "failed"
    with pytest.raises(PipelineFailure, match=r"reviewer rejected 2 of 2 allowed rounds \(draft.written\)"):
        handle.result()
    events = settled_events(handle)
    assert count(events, "event.published", event_type="draft.written") == 2
    assert count(events, "event.published", event_type="draft.approved") == 0
    (failed,) = [e for e in events if e.type == "pipeline.failed"]
    assert failed.payload["stage"] == "review"
    assert "rejected by policy" in failed.payload["reason"]


def test_a_subscriber_declared_only_in_the_tests_receives_every_research_event(system, redis_client):
    handle = run(system, request=FIVE_TOPICS, max_topics=4)
    notes = wait_for(lambda: len(redis_list(redis_client, f"test:audit:{handle.id}")) >= 4
                     and redis_list(redis_client, f"test:audit:{handle.id}"), 30, what="four research events")
    assert sorted(n["data"]["index"] for n in notes) == [0, 1, 2, 3]
    published = {e.event_id for e in handle.events()
                 if e.type == "event.published" and e.payload["event_type"] == "research.completed"}
    assert {n["causation_id"] for n in notes} == published
    assert {n["correlation_id"] for n in notes} == {handle.id}


def test_a_failing_researcher_takes_the_chords_error_path_and_the_pipeline_ends_failed(system):
    handle = run(system, request=FIVE_TOPICS, max_topics=3, fail_researchers=(1,))
    with pytest.raises(PipelineFailure, match="injected failure: researcher 1"):
        handle.result()
    events = settled_events(handle)
    (failed,) = [e for e in events if e.type == "pipeline.failed"]
    assert failed.payload["stage"] == "researcher"
    assert failed.payload["reason"].startswith(
        "step 'researcher' (agent researcher) failed: PermanentError: injected failure: researcher 1"
    )
    assert count(events, "task.failed", agent="researcher") == 1
    assert count(events, "task.dead_lettered", agent="researcher") == 1
    assert count(events, "task.started", agent="writer") == 0
    assert count(events, "pipeline.failed") == 1


def test_the_same_failing_input_fails_with_the_same_reason_every_time(system):
    reasons = set()
    for _ in range(3):
        handle = run(system, request=FIVE_TOPICS, max_topics=3, fail_researchers=(0, 2))
        (failed,) = [e for e in settled_events(handle) if e.type == "pipeline.failed"]
        reasons.add((failed.payload["stage"], failed.payload["reason"].split(": injected")[0]))
    assert reasons == {("researcher", "step 'researcher' (agent researcher) failed: PermanentError")}


def test_in_partial_mode_the_writer_gets_the_findings_that_arrived_with_the_failure_marked(system):
    handle = run(system, request=FIVE_TOPICS, max_topics=3, fail_researchers=(0,), on_research_failure="partial")
    article = handle.result()
    assert article["failed_topics"] and "injected failure: researcher 0" in article["failed_topics"][0]
    assert article["body"].count("\n## ") == 3  # two findings and the "Not covered" section
    events = settled_events(handle)
    assert count(events, "task.failed", agent="researcher") == 1
    assert count(events, "task.started", agent="writer") == 1


@pytest.mark.parametrize("n", [0, 1])
def test_zero_and_one_researchers_work(system, n):
    handle = run(system, request=FIVE_TOPICS, max_topics=n)
    article = handle.result()
    assert article["body"].count("\n## ") == n
    events = settled_events(handle)
    assert count(events, "task.succeeded", agent="researcher") == n
    assert count(events, "event.published", event_type="draft.written") == article["rounds"]


def test_twenty_pipelines_started_at_once_with_mixed_priorities_all_complete_with_their_own_timelines(system):
    priorities = ["low", "normal", "high", "urgent"]
    requests = [f"Explain retries, sagas and chords for tenant {i}" for i in range(20)]
    handles = [
        start("research", ResearchRequest(request=text, max_topics=2), priority=priorities[i % 4], app=system.app)
        for i, text in enumerate(requests)
    ]
    for handle in handles:
        try:
            handle.wait(120)
        except TimeoutError:
            raise AssertionError(f"pipeline {handle.id} hung\n{system.logs()}") from None
    assert Counter(h.status() for h in handles) == {"completed": 20}
    for i, handle in enumerate(handles):
        events = settled_events(handle)
        assert {e.correlation_id for e in events} == {handle.id}
        (started,) = [e for e in events if e.type == "pipeline.started"]
        assert started.payload["input"]["request"] == requests[i]
        assert f"tenant {i}" in handle.result()["title"]
        assert count(events, "task.succeeded", agent="researcher") == 2
        assert count(events, "task.started", agent="writer") == 1
        assert count(events, "pipeline.completed") == 1
        sent = {e.priority for e in events if e.type == "task.sent"}
        assert sent == {system.app.conf.relaybus_runtime.priority(priorities[i % 4])}, sent


def test_invalid_input_is_refused_by_the_client_before_anything_is_sent(system):
    with pytest.raises(InvalidInput, match="max_topics"):
        start("research", {"request": "Explain sagas", "max_topics": 99}, app=system.app)
    handle = PipelineHandle(str(uuid.uuid4()), system.app)
    assert handle.status() == "pending"
