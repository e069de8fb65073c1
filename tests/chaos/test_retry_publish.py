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
