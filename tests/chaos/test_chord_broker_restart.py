"""RabbitMQ away as a complete chord publishes its callback: the member comes back and publishes it.

Celery 5.7 publishes a complete chord's callback once (three quick retries of a refused connection). If
that fails it runs the chord's error path, whose error callbacks are publishes to the same absent broker:
both were lost, the chord's keys cleaned up, and the member's redelivery found nothing left to do. The
workflow hung until its deadline; the chaos suite's RabbitMQ restart met it about one run in six (a
pipeline whose researchers had all succeeded, redelivered after the restart, and whose writer never ran).

Here the fault is placed exactly: the private RabbitMQ is stopped from the callback's own
``before_task_publish`` signal, so the publish meets a broker that is gone. The member's part return must
give its message back (``Reject(requeue=True)``) without running the chord's error path; once RabbitMQ is
back, the member's next run publishes the callback, once, and it reaches its queue.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import signals, signature, states
from celery.app.task import Context
from celery.exceptions import Reject

from relaybus.tasks.runtime.chords import RedisBackend
from tests.chaos.services import PrivateRabbitMQ, PrivateRedis
from tests.harness import delete_namespace, make_app, make_settings, queue_depth, wait_for

ERRBACK = "relaybus.test.chord_errback"


@pytest.fixture
def app(rabbitmq: PrivateRabbitMQ, redis_server: PrivateRedis, tmp_path: Path) -> Iterator[Any]:
    app = make_app(make_settings(tmp_path, rabbitmq.url, redis_server.url, publish_timeout_s=3.0))
    app.tasks["agents.probe"].apply_async(kwargs={"key": "warm-up"})  # a pooled connection, as in a live app
    yield app
    delete_namespace(app)


def test_broker_lost_as_the_callback_is_published_requeues_the_member_which_publishes_it_later(
    app: Any, rabbitmq: PrivateRabbitMQ
) -> None:
    backend = app.backend
    assert isinstance(backend, RedisBackend)
    probe = app.tasks["agents.probe"]
    queue = f"{app.conf.relaybus_runtime.namespace}.probe"
    callback_id = str(uuid.uuid4())
    callback = probe.s(key="chord-broker-lost").set(task_id=callback_id, link_error=[signature(ERRBACK)])
    gid = str(uuid.uuid4())
    backend.set_chord_size(gid, 1)
    member = Context(
        id=str(uuid.uuid4()), group=gid, group_index=0, chord=dict(callback), root_id=gid, delivery_info={}
    )
    published: list[str] = []

    def on_publish(sender: str | None = None, **_: Any) -> None:
        published.append(str(sender))
        if sender == probe.name and published.count(probe.name) == 1:
            rabbitmq.stop()  # the fault: the broker goes away as the callback is published

    signals.before_task_publish.connect(on_publish, weak=False)
    try:
        with pytest.raises(Reject) as rejected:
            backend.on_chord_part_return(member, states.SUCCESS, {"n": 1})
        assert rejected.value.requeue, "the member's message goes back to the queue"
        assert ERRBACK not in published, f"the chord's error path ran for a broker that was away: {published}"
        assert backend.get_state(callback_id) != states.FAILURE
        client = backend.client
        assert client.exists(backend.get_key_for_group(gid, ".j")), "the chord's results are kept"
        assert client.exists(backend.get_key_for_group(gid, ".s")), "the chord's size is kept"
        assert not client.exists(backend.get_key_for_group(gid, ".c")), "the dispatch claim was given back"

        rabbitmq.start()
        depth = queue_depth(app, queue)
        backend.on_chord_part_return(member, states.SUCCESS, {"n": 1})  # the member's redelivery returns again
    finally:
        signals.before_task_publish.disconnect(on_publish)
        if rabbitmq.proc is None or rabbitmq.proc.poll() is not None:
            rabbitmq.start()  # a failure above must not leave the session's broker stopped for the tests after

    assert published.count(probe.name) == 2, f"published once more, by the member's next run: {published}"
    assert ERRBACK not in published, published
    wait_for(lambda: queue_depth(app, queue) == depth + 1, 30, 0.2, "the callback in its queue")
    assert backend.client.get(backend.get_key_for_group(gid, ".c")) == b"done"
