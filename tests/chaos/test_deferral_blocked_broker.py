"""Edge: RabbitMQ blocks publishers (a memory alarm) while a deferral publishes its delayed copy.

A deferred task acks its original only once its copy is confirmed (tasks.runtime.deferral). Here the copy
cannot be: the private RabbitMQ's memory alarm is raised just before the task, held by the worker with a
countdown, becomes due and meets the rate limiter. The publish times out (``publish_timeout_s``), the
original is given back, and the task goes round again until the alarm is lifted. Then: nothing lost (the
task completes), and nothing run twice: the provider is asked once for it, one success is recorded, even
though the copies published into a blocked connection may still land once the broker reads again.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from relaybus.eventstore import open_store
from relaybus.tasks.llm import RateLimit
from tests.chaos.services import PrivatePostgres, PrivateRabbitMQ, PrivateRedis
from tests.chaos.system import new_schema
from tests.fake_openai import FakeOpenAI, Reply, chat_completion, serving
from tests.harness import Worker, delete_namespace, make_app, make_settings, queue_depth, wait_for

pytestmark = pytest.mark.timeout(240)

WINDOW_S = 10.0
PUBLISH_TIMEOUT_S = 2.0


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    yield from serving(Reply(body=chat_completion(text="ok", model="fake-model", usage=(9, 1))))


def alarms(rabbitmq: PrivateRabbitMQ) -> str:
    return rabbitmq.ctl("eval", "rabbit_alarm:get_alarms().").stdout


def test_a_deferral_into_a_blocked_broker_loses_nothing_and_runs_once(
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
        extra_modules=("tests.agents", "tests.limited_agents"),
        extra_agents=("probe", "asker"),
        llm_provider="openai",
        llm_base_url=fake_openai.base_url,
        llm_model="fake-model",
        llm_rate_limits={"openai/fake-model": RateLimit(requests=1, period_s=WINDOW_S)},
        llm_rate_limit_urgent_reserve=0.0,
        publish_timeout_s=PUBLISH_TIMEOUT_S,
    )
    app = make_app(settings)
    store = open_store(settings.eventstore_url)
    with app.connection_for_write() as conn:
        app.conf.relaybus_topology.declare(conn)
    worker = Worker(settings, ("asker",), tmp_path, concurrency=1, name="deferral-blocked")
    task = app.tasks["agents.asker"]
    queue = f"{settings.namespace}.asker"
    try:
        worker.wait_ready(app, timeout=90)
        assert task.apply_async(kwargs={"text": "first"}).get(timeout=30)["attempt"] == 1  # the window is used

        second = task.apply_async(kwargs={"text": "second"}, countdown=3)
        wait_for(lambda: queue_depth(app, queue) == 0, 10, 0.05, "the worker to hold the delayed task")
        rabbitmq.ctl("set_vm_memory_high_watermark", "0")
        try:
            wait_for(lambda: "memory" in alarms(rabbitmq), 30, 0.2, "RabbitMQ's memory alarm")
            wait_for(
                lambda: worker.log().count("could not be published") >= 2,
                60,
                0.2,
                "two deferrals whose copy the blocked broker did not confirm",
            )
        finally:
            rabbitmq.ctl("set_vm_memory_high_watermark", "0.4")
        wait_for(lambda: "memory" not in alarms(rabbitmq), 30, 0.2, "the alarm to clear")

        assert second.get(timeout=60)["attempt"] == 1, worker.log()[-3000:]
        # Every copy that landed has been run or dropped: nothing queued, nothing held for later.
        inspect = app.control.inspect(timeout=2.0)
        wait_for(
            lambda: (
                queue_depth(app, queue) == 0
                and not any((inspect.scheduled() or {}).values())
                and not any((inspect.active() or {}).values())
            ),
            60,
            0.5,
            "every copy to be run or dropped",
        )
        asked = [r.body["messages"][-1]["content"] for r in fake_openai.received]
        succeeded = store.find(type="task.succeeded", task_id=second.id, limit=100)
        started = store.find(type="task.started", task_id=second.id, limit=100)
        print(
            f"\nasked {asked}; {len(started)} starts, {len(succeeded)} successes recorded for the deferred task; "
            f"{worker.log().count('could not be published')} unconfirmed copies"
        )
        assert asked == ["first", "second"], "the deferred task asked the provider more than once"
        assert len(succeeded) == 1
    finally:
        worker.stop()
        store.close()
        delete_namespace(app)
        app.close()
