"""``relaybus dlq requeue`` requeues each letter exactly once per call (issue 13, fault 10).

With a worker consuming the queue, a requeued poison letter fails again at once and is dead-lettered
back to the DLQ while the requeue still walks it: 300 letters gave "requeued 340", 40 of them twice. Here
a real worker fails every requeued letter again (its input does not validate) while ``requeue`` runs.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kombu import Exchange

from relaybus.celery import topology_of
from relaybus.dlq import REQUEUE_RUN_HEADER, peek, requeue
from relaybus.tasks.runtime.context import REDRIVE_HEADER
from relaybus.tasks.runtime.deadletter import reason_headers
from tests.chaos.services import PrivateRabbitMQ, PrivateRedis
from tests.harness import Worker, celery_headers, delete_namespace, make_app, make_settings, queue_depth, wait_for

LETTERS = 300


@pytest.fixture
def app(rabbitmq: PrivateRabbitMQ, redis_server: PrivateRedis, tmp_path: Path) -> Iterator[Any]:
    app = make_app(make_settings(tmp_path, rabbitmq.url, redis_server.url))
    with app.connection_for_write() as conn:
        topology_of(app).declare(conn)
    yield app
    delete_namespace(app)


def dead_letter_poison(app: Any, count: int) -> list[str]:
    """``count`` letters in the probe agent's DLQ, as the worker leaves them: an input that never validates."""
    topology = topology_of(app)
    queue, dlq = topology.queue_name("probe"), topology.dlq_name("probe")
    body = json.dumps([[], {"label": "no key"}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
    ids = []
    with app.connection_for_write() as conn:
        producer = conn.Producer()
        for _ in range(count):
            headers = celery_headers("agents.probe", **reason_headers(reason="invalid-input", error=None, attempts=1,
                                                                      original_queue=queue))
            producer.publish(body, exchange=Exchange(topology.dead_letter_exchange.name, type="direct"),
                             routing_key=dlq, headers=headers, content_type="application/json",
                             content_encoding="utf-8", serializer=None, delivery_mode=2)
            ids.append(headers["id"])
    return ids


def test_requeue_sends_each_letter_back_once_while_a_worker_fails_them_again(app: Any, tmp_path: Path) -> None:
    settings = app.conf.relaybus_runtime
    topology = topology_of(app)
    queue, dlq = topology.queue_name("probe"), topology.dlq_name("probe")
    ids = dead_letter_poison(app, LETTERS)
    assert queue_depth(app, dlq) == LETTERS

    worker = Worker(make_settings(tmp_path, app.conf.broker_url, app.conf.result_backend,
                                  namespace=settings.namespace), ("probe",), tmp_path, concurrency=2)
    try:
        worker.wait_ready(app)
        moved = requeue(app, ["probe"])

        counts = Counter(letter.task_id for letter in moved)
        assert len(moved) == LETTERS, f"requeued {len(moved)} of {LETTERS} letters; twice: {counts.most_common(3)}"
        assert set(counts) == set(ids)

        # Every letter fails again and is back in the DLQ, redriven exactly once.
        wait_for(lambda: queue_depth(app, dlq) == LETTERS and queue_depth(app, queue) == 0, timeout=120,
                 what=f"the {LETTERS} letters back in {dlq}")
    finally:
        worker.stop()
    letters = peek(app, ["probe"], limit=10 * LETTERS)
    assert Counter(letter.task_id for letter in letters) == Counter(ids)
    assert {letter.redrives for letter in letters} == {1}, Counter(letter.redrives for letter in letters)
    assert all(letter.reason for letter in letters)


def test_a_second_call_requeues_the_letters_again_under_its_own_run(app: Any) -> None:
    topology = topology_of(app)
    dead_letter_poison(app, 3)
    first = requeue(app, ["probe"])
    # Nobody consumes the queue: dead-letter them again by hand, as a worker does (their headers, the run
    # stamp among them, plus the reason).
    with app.connection_for_write() as conn:
        channel = conn.channel()
        producer = conn.Producer()
        while (raw := channel.basic_get(topology.queue_name("probe"), no_ack=False)) is not None:
            message = channel.message_to_python(raw)
            assert message.headers[REQUEUE_RUN_HEADER]
            headers = {**message.headers, **reason_headers(reason="invalid-input", error=None, attempts=1,
                                                           original_queue=topology.queue_name("probe"))}
            producer.publish(message.body, exchange=Exchange(topology.dead_letter_exchange.name, type="direct"),
                             routing_key=topology.dlq_name("probe"), headers=headers,
                             content_type=message.content_type, content_encoding=message.content_encoding,
                             serializer=None, delivery_mode=2)
            message.ack()
        channel.close()
    second = requeue(app, ["probe"])
    assert len(first) == len(second) == 3
    assert {m.task_id for m in first} == {m.task_id for m in second}
    with app.connection_for_write() as conn:
        channel = conn.channel()
        raw = channel.basic_get(topology.queue_name("probe"), no_ack=True)
        assert raw is not None and channel.message_to_python(raw).headers[REDRIVE_HEADER] == 2
        channel.close()
