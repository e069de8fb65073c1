"""Edge: RabbitMQ blocks publishers (a memory alarm) while a deferral publishes its delayed copy.

A deferred task acks its original only once its copy is confirmed (tasks.runtime.deferral). Here the copy
cannot be: the private RabbitMQ's memory alarm is raised just before the task, held by the worker with a
countdown, becomes due and meets the rate limiter. The publish times out (``publish_timeout_s``), the
original is given back, and the task goes round again until the alarm is lifted. Then: nothing lost (the
task completes), and nothing run twice: the provider is asked once for it, one success is recorded, even
though the copies published into a blocked connection may still land once the broker reads again.
"""

from __future__ import annotations

import pytest

from tests.chaos.conftest import StartRateLimited
from tests.chaos.services import PrivateRabbitMQ
from tests.fake_openai import FakeOpenAI
from tests.harness import queue_depth, wait_for

pytestmark = pytest.mark.timeout(240)

WINDOW_S = 10.0
PUBLISH_TIMEOUT_S = 2.0


def test_a_deferral_into_a_blocked_broker_loses_nothing_and_runs_once(
    rabbitmq: PrivateRabbitMQ, rate_limited: StartRateLimited, fake_openai: FakeOpenAI
) -> None:
    system = rate_limited(window_s=WINDOW_S, queues=("asker",), concurrency=1, name="deferral-blocked",
                          publish_timeout_s=PUBLISH_TIMEOUT_S)
    app, store, worker = system.app, system.store, system.worker
    task = app.tasks["agents.asker"]
    queue = f"{system.settings.namespace}.asker"
    assert task.apply_async(kwargs={"text": "first"}).get(timeout=30)["attempt"] == 1  # the window is used

    second = task.apply_async(kwargs={"text": "second"}, countdown=3)
    wait_for(lambda: queue_depth(app, queue) == 0, 10, 0.05, "the worker to hold the delayed task")
    rabbitmq.ctl("set_vm_memory_high_watermark", "0")
    try:
        wait_for(lambda: "memory" in rabbitmq.alarms(), 30, 0.2, "RabbitMQ's memory alarm")
        wait_for(
            lambda: worker.log().count("could not be published") >= 2,
            60,
            0.2,
            "two deferrals whose copy the blocked broker did not confirm",
        )
    finally:
        rabbitmq.ctl("set_vm_memory_high_watermark", "0.4")
    wait_for(lambda: "memory" not in rabbitmq.alarms(), 30, 0.2, "the alarm to clear")

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
