"""A retry the broker does not take gives the message back (issue 13, fault 8).

Celery's ``Task.retry`` publishes the retry and, if that publish fails (RabbitMQ restarting, blocked, or
refusing the message), raises ``Reject(requeue=False)``: the worker stores the task as FAILURE, fails its
chord (``ChordError … raised reject requeue=False``) and drops the message. The long chaos run met it once:
a pipeline that should complete ended failed. Here the private RabbitMQ is stopped and an agent's transient
error is retried in-process against it: the task base must raise ``Reject(requeue=True)`` instead.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery.exceptions import Reject

from tests.chaos.services import PrivateRabbitMQ, PrivateRedis
from tests.harness import delete_namespace, make_app, make_settings


@pytest.fixture
def app(rabbitmq: PrivateRabbitMQ, redis_server: PrivateRedis, tmp_path: Path) -> Iterator[Any]:
    app = make_app(make_settings(tmp_path, rabbitmq.url, redis_server.url))
    yield app
    delete_namespace(app)


def test_a_retry_that_cannot_be_published_requeues_the_original_message(app: Any, rabbitmq: PrivateRabbitMQ) -> None:
    flaky = app.tasks["agents.flaky"]
    app.conf.broker_connection_max_retries = 1  # the retry's publish gives up within seconds
    request = {"id": str(uuid.uuid4()), "retries": 0, "delivery_info": {"routing_key": "flaky"}, "headers": {},
               "called_directly": False}
    rabbitmq.stop()
    flaky.push_request(**request)
    try:
        with pytest.raises(Reject) as refused:
            flaky(key=f"retry-publish-{request['id']}")
    finally:
        flaky.pop_request()
        rabbitmq.start()
    assert refused.value.requeue is True, "the message must go back to the queue, not be dropped"
    assert "the retry could not be published" in str(refused.value.reason)


def test_a_continuation_that_cannot_be_published_gives_the_message_back(app: Any, rabbitmq: PrivateRabbitMQ) -> None:
    """The body returned, then its chain's next step or callback cannot be sent (the broker restarting): Celery
    would mark the task failed and run its error callbacks (a saga compensated a step whose effect was applied,
    in the long chaos run). The publish raises ``Reject(requeue=True)`` instead: the task runs again later."""
    from celery._state import _task_stack

    from relaybus.tasks.runtime.context import mark_continuing

    probe = app.tasks["agents.probe"]
    app.conf.broker_connection_max_retries = 1
    task_id = str(uuid.uuid4())
    probe.push_request(id=task_id, retries=0, delivery_info={"routing_key": "probe"}, headers={},
                       called_directly=False)
    _task_stack.push(probe)
    rabbitmq.stop()
    try:
        mark_continuing(task_id)
        with pytest.raises(Reject) as refused:
            probe.apply_async(kwargs={"key": f"next-{task_id}"})
        mark_continuing(None)
        with pytest.raises(Exception) as plain:  # inside a body, a failed publish is the task's own error
            probe.apply_async(kwargs={"key": f"body-{task_id}"})
    finally:
        _task_stack.pop()
        probe.pop_request()
        rabbitmq.start()
    assert refused.value.requeue is True
    assert "continuation could not be published" in str(refused.value.reason)
    assert not isinstance(plain.value, Reject)
