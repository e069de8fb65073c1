"""Edge: a task deferred by the LLM rate limiter is revoked while its copy waits out the countdown.

A deferral records ``task.deferred``, publishes a copy of the task (same id) with a countdown and acks the
original (tasks.runtime.deferral). A revoke that arrives meanwhile must stop the copy: it must not call the
provider, nor record a success; it is recorded ``task.revoked`` and its pipeline ends ``failed``. Real
worker processes on the private RabbitMQ, Redis and PostgreSQL; a local OpenAI-compatible server counts
the calls.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from relaybus.eventstore import open_store
from relaybus.tasks.llm import RateLimit
from relaybus.tasks.pipelines.client import start
from tests.chaos.services import PrivatePostgres, PrivateRabbitMQ, PrivateRedis
from tests.chaos.system import new_schema
from tests.fake_openai import FakeOpenAI, Reply, chat_completion, serving
from tests.harness import Worker, delete_namespace, make_app, make_settings, wait_for

pytestmark = pytest.mark.timeout(180)

#: One call per window: the second pipeline's call waits most of a window, long enough to revoke it.
WINDOW_S = 8.0


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    yield from serving(Reply(body=chat_completion(text="ok", model="fake-model", usage=(9, 1))))


def test_a_revoked_deferred_task_never_runs_its_copy_and_its_pipeline_fails(
    rabbitmq: PrivateRabbitMQ,
    redis_server: PrivateRedis,
    postgres: PrivatePostgres,
    fake_openai: FakeOpenAI,
    tmp_path: Path,
) -> None:
    settings = make_settings(
        tmp_path,
        rabbitmq.url,
        redis_server.url,
        eventstore_url=new_schema(postgres.url),
        extra_modules=("tests.agents", "tests.limited_agents", "tests.edges_definitions"),
        extra_agents=("probe", "asker"),
        llm_provider="openai",
        llm_base_url=fake_openai.base_url,
        llm_model="fake-model",
        llm_rate_limits={"openai/fake-model": RateLimit(requests=1, period_s=WINDOW_S)},
        llm_rate_limit_urgent_reserve=0.0,
    )
    app = make_app(settings)
    store = open_store(settings.eventstore_url)
    with app.connection_for_write() as conn:
        app.conf.relaybus_topology.declare(conn)
    worker = Worker(settings, ("system", "asker"), tmp_path, concurrency=2, name="deferral-revoke")
    try:
        worker.wait_ready(app, timeout=90)
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
    finally:
        worker.stop()
        store.close()
        delete_namespace(app)
        app.close()
