"""Edge: a task deferred by the LLM rate limiter is revoked while its copy waits out the countdown.

A deferral records ``task.deferred``, publishes a copy of the task (same id) with a countdown and acks the
original (tasks.runtime.deferral). A revoke that arrives meanwhile must stop the copy: it must not call the
provider, nor record a success; it is recorded ``task.revoked`` and its pipeline ends ``failed``. Real
worker processes on the private RabbitMQ, Redis and PostgreSQL; a local OpenAI-compatible server counts
the calls.
"""

from __future__ import annotations

import pytest

from relaybus.tasks.pipelines.client import start
from tests.chaos.conftest import StartRateLimited
from tests.fake_openai import FakeOpenAI
from tests.harness import wait_for

pytestmark = pytest.mark.timeout(180)

#: One call per window: the second pipeline's call waits most of a window, long enough to revoke it.
WINDOW_S = 8.0


def test_a_revoked_deferred_task_never_runs_its_copy_and_its_pipeline_fails(
    rate_limited: StartRateLimited, fake_openai: FakeOpenAI
) -> None:
    system = rate_limited(window_s=WINDOW_S, queues=("system", "asker"), concurrency=2, name="deferral-revoke",
                          extra_modules=("tests.edges_definitions",))
    app, store, worker = system.app, system.store, system.worker
    first = start("edge-ask", {"text": "first"}, app=app)
    assert first.wait(30).status == "completed", worker.log()[-3000:]
    assert len(fake_openai.received) == 1

    second = start("edge-ask", {"text": "second"}, app=app)
    deferred = wait_for(
        lambda: [e for e in store.by_correlation(second.id) if e.type == "task.deferred"],
        30,
        0.05,
        "the second call's deferral",
    )[0]
    assert deferred.payload["wait_s"] > 1, deferred.payload  # the copy is still waiting: revoke it now
    app.control.revoke(str(deferred.task_id))

    outcome = second.wait(WINDOW_S + 30)
    events = store.by_correlation(second.id)
    types = [(e.type, e.task_id) for e in events if e.task_id == deferred.task_id]
    assert outcome.status == "failed", (outcome, types, worker.log()[-3000:])
    assert ("task.revoked", deferred.task_id) in types, types
    assert ("task.succeeded", deferred.task_id) not in types, types
    assert [e for e in events if e.type == "pipeline.failed"], [e.type for e in events]
    assert [r.body["messages"][-1]["content"] for r in fake_openai.received] == ["first"], "the copy ran"
