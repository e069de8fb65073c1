"""A publish waits ``publish_timeout_s`` at most for the broker, then says why (issue 13, fault 4).

Publisher confirms had no timeout: with RabbitMQ blocking publishers (a memory alarm) or its node
SIGSTOPped, ``apply_async`` was still blocked after 90 s and ``relaybus.start`` after 60 s. Here the private
RabbitMQ is blocked (``vm_memory_high_watermark`` 0) or stopped, and every publish must raise a relaybus
error naming the broker's state within the timeout plus a little slack, record no ``task.sent``, and the
first publish after the broker recovers must go through.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kombu.exceptions import OperationalError

from relaybus.eventstore import open_store
from relaybus.tasks.agents.pipeline_models import ResearchRequest
from relaybus.tasks.errors import BrokerUnreachable, PublishFailed, PublishTimeout
from relaybus.tasks.pipelines.client import start
from relaybus.tasks.pipelines.registry import start_task_id
from relaybus.tasks.runtime.deadletter import publish_dead_letter
from tests.chaos.services import PrivateRabbitMQ, PrivateRedis, free_port
from tests.harness import delete_namespace, make_app, make_settings, queue_depth, wait_for

TIMEOUT_S = 3.0
SLACK_S = 1.5  # the broker's connection setup, the sent event's own publish, a busy machine


@pytest.fixture
def app(rabbitmq: PrivateRabbitMQ, redis_server: PrivateRedis, tmp_path: Path) -> Iterator[Any]:
    app = make_app(make_settings(tmp_path, rabbitmq.url, redis_server.url, publish_timeout_s=TIMEOUT_S))
    app.tasks["agents.probe"].apply_async(kwargs={"key": "warm-up"})  # a pooled connection, as in a live app
    yield app
    delete_namespace(app)


@pytest.fixture
def memory_alarm(rabbitmq: PrivateRabbitMQ) -> Iterator[Callable[[], None]]:
    """Block publishers as a memory alarm does; the returned function lifts the alarm."""
    rabbitmq.ctl("set_vm_memory_high_watermark", "0")
    wait_for(lambda: "memory" in rabbitmq.alarms(), timeout=30, what="RabbitMQ's memory alarm")

    def lift() -> None:
        rabbitmq.ctl("set_vm_memory_high_watermark", "0.4")
        wait_for(lambda: "memory" not in rabbitmq.alarms(), timeout=30, what="the memory alarm to clear")

    try:
        yield lift
    finally:
        lift()


@pytest.fixture
def stopped_node(rabbitmq: PrivateRabbitMQ) -> Iterator[Callable[[], None]]:
    """SIGSTOP the node's Erlang VM; the returned function lets it run again."""
    assert rabbitmq.proc is not None
    beam = int((rabbitmq.base / "pid").read_text().strip())
    os.kill(beam, signal.SIGSTOP)

    def resume() -> None:
        os.kill(beam, signal.SIGCONT)

    try:
        yield resume
    finally:
        resume()


def timed(publish: Callable[[], Any]) -> tuple[BaseException, float]:
    began = time.monotonic()
    with pytest.raises(PublishFailed) as raised:
        publish()
    return raised.value, time.monotonic() - began


def sent_records(app: Any, *task_ids: str) -> list[Any]:
    store = open_store(app.conf.relaybus_runtime.eventstore_url)
    try:
        return [e for e in store.iter_all() if e.type == "task.sent" and e.task_id in task_ids]
    finally:
        store.close()


def send_probe(app: Any, task_id: str) -> None:
    app.tasks["agents.probe"].apply_async(kwargs={"key": f"publish-timeout-{task_id}"}, task_id=task_id)


def start_research(app: Any, pipeline_id: str) -> None:
    start("research", ResearchRequest(request="blocked broker"), correlation_id=pipeline_id, app=app)


def test_publishing_to_a_broker_that_blocks_publishers_fails_in_time_and_recovers(
    app: Any, memory_alarm: Callable[[], None]
) -> None:
    task_id, pipeline_id = str(uuid.uuid4()), str(uuid.uuid4())

    error, waited = timed(lambda: send_probe(app, task_id))
    assert isinstance(error, PublishTimeout) and error.blocked == "low on memory"
    assert "broker blocked publishers (memory/disk alarm): low on memory" in str(error)
    assert waited < TIMEOUT_S + SLACK_S, f"apply_async waited {waited:.1f}s"

    error, waited = timed(lambda: start_research(app, pipeline_id))
    assert "broker blocked publishers (memory/disk alarm)" in str(error)
    assert waited < TIMEOUT_S + SLACK_S, f"start() waited {waited:.1f}s"

    # What a worker publishes itself (a dead letter here; chain steps and retries go through apply_async).
    error, waited = timed(lambda: publish_dead_letter(
        app, body=b"{}", content_type="application/json", content_encoding="utf-8", headers={},
        original_queue=f"{app.conf.relaybus_runtime.namespace}.probe"))
    assert isinstance(error, PublishTimeout) and waited < TIMEOUT_S + SLACK_S, (error, waited)

    assert sent_records(app, task_id, start_task_id(pipeline_id)) == []

    memory_alarm()
    after = str(uuid.uuid4())
    send_probe(app, after)  # a fresh connection: the timed-out one was dropped
    assert [e.task_id for e in sent_records(app, after)] == [after]


def test_publishing_to_a_stopped_node_fails_in_time_and_recovers(
    app: Any, rabbitmq: PrivateRabbitMQ, stopped_node: Callable[[], None]
) -> None:
    queue = f"{app.conf.relaybus_runtime.namespace}.probe"
    depth = queue_depth(app, queue)
    ids = [str(uuid.uuid4()) for _ in range(2)]
    pipeline_id = str(uuid.uuid4())

    # The pooled connection waits for a confirm that never comes...
    error, waited = timed(lambda: send_probe(app, ids[0]))
    assert isinstance(error, PublishTimeout) and error.blocked is None
    assert f"no confirm from the broker within {TIMEOUT_S:g} s" in str(error)
    assert waited < TIMEOUT_S + SLACK_S, f"apply_async waited {waited:.1f}s"
    # ... and a new one gets no answer to its handshake.
    error, waited = timed(lambda: send_probe(app, ids[1]))
    assert isinstance(error, BrokerUnreachable | PublishTimeout), error
    assert waited < TIMEOUT_S + SLACK_S, f"apply_async waited {waited:.1f}s"
    error, waited = timed(lambda: start_research(app, pipeline_id))
    assert waited < TIMEOUT_S + SLACK_S, f"start() waited {waited:.1f}s"

    assert sent_records(app, *ids, start_task_id(pipeline_id)) == []

    stopped_node()
    after = str(uuid.uuid4())
    send_probe(app, after)
    assert [e.task_id for e in sent_records(app, after)] == [after]
    assert queue_depth(app, queue) >= depth + 1


def test_a_broker_refusing_connections_is_named_as_such(redis_server: PrivateRedis, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, f"amqp://guest:guest@127.0.0.1:{free_port()}//", redis_server.url,
                             publish_timeout_s=TIMEOUT_S)
    app = make_app(settings)
    error, waited = timed(lambda: send_probe(app, str(uuid.uuid4())))
    assert isinstance(error, BrokerUnreachable) and "Connection refused" in str(error)
    assert isinstance(error, OperationalError), "callers that caught kombu's error still catch it"
    assert waited < TIMEOUT_S + SLACK_S
