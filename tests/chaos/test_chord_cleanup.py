"""Redis away while a chord member returns: nothing fails that the restart did not make fail.

Celery 5.7's Redis backend publishes a complete chord's callback and then, in a ``finally``, cleans the
chord's keys up. If Redis drops the connection at that moment, Celery takes the exception for a join
error and runs the chord's error path for a callback it has already sent: the workflow fails while
its callback runs. The short chaos run met it once (a pipeline failed with its writer "STARTED").

Here the fault is placed exactly: the private Redis is stopped from the callback's own
``before_task_publish`` signal (the publish itself goes on to RabbitMQ) and started again a second
later, while the cleanup is retrying. The callback must be sent once, no error callback sent, and the
callback's state must not be FAILURE.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import signals, signature, states
from celery.app.task import Context

from relaybus.tasks.runtime.chords import RedisBackend
from tests.chaos.services import PrivateRabbitMQ, PrivateRedis
from tests.harness import delete_namespace, make_app, make_settings

ERRBACK = "relaybus.test.chord_errback"


@pytest.fixture
def app(rabbitmq: PrivateRabbitMQ, redis_server: PrivateRedis, tmp_path: Path) -> Iterator[Any]:
    app = make_app(make_settings(tmp_path, rabbitmq.url, redis_server.url))
    yield app
    delete_namespace(app)


def test_redis_lost_after_the_callback_is_sent_does_not_fail_the_chord(app: Any, redis_server: PrivateRedis) -> None:
    backend = app.backend
    assert isinstance(backend, RedisBackend), "create_app installs relaybus's Redis backend for redis:// URLs"
    probe = app.tasks["agents.probe"]
    callback_id = str(uuid.uuid4())
    callback = probe.s(key="chord-cleanup").set(task_id=callback_id, link_error=[signature(ERRBACK)])
    gid = str(uuid.uuid4())
    backend.set_chord_size(gid, 1)
    member = _member(gid, callback)

    published: list[str] = []
    restarted = threading.Event()

    def on_publish(sender: str | None = None, headers: dict[str, Any] | None = None, **_: Any) -> None:
        published.append(str(sender))
        if sender == probe.name and not restarted.is_set():
            redis_server.stop()  # the fault: Redis goes away after the join, before the cleanup
            threading.Thread(target=_start_later, args=(redis_server, restarted), daemon=True).start()

    signals.before_task_publish.connect(on_publish, weak=False)
    try:
        backend.on_chord_part_return(member, states.SUCCESS, {"n": 1})
    finally:
        signals.before_task_publish.disconnect(on_publish)
    assert restarted.wait(30), "the private Redis did not come back"

    assert published.count(probe.name) == 1, f"the callback is sent exactly once: {published}"
    assert ERRBACK not in published, f"the chord's error path ran for a callback already sent: {published}"
    assert backend.get_state(callback_id) != states.FAILURE


def _member(gid: str, callback: Any) -> Context:
    """The request of the first header member of chord ``gid`` whose callback is ``callback``."""
    return Context(id=str(uuid.uuid4()), group=gid, group_index=0, chord=dict(callback), root_id=gid, delivery_info={})


def _start_later(service: PrivateRedis, done: threading.Event) -> None:
    # Down for a second: the cleanup meets a refused connection and must retry, not fail the chord.
    time.sleep(1.0)  # the outage itself: nothing to wait for, it is the fault being injected
    service.start()
    done.set()


def test_a_member_returning_while_redis_restarts_is_counted_once_it_is_back(
    app: Any, redis_server: PrivateRedis
) -> None:
    """Celery counts a part once: a dropped connection failed the member. Here it waits for Redis."""
    backend = app.backend
    gid = str(uuid.uuid4())
    backend.set_chord_size(gid, 2)  # not the last member: counting is all it does
    member = _member(gid, app.tasks["agents.probe"].s(key="x"))
    backend.client.ping()  # the pooled connection is open before the restart
    redis_server.stop()
    back = threading.Event()
    threading.Thread(target=_start_later, args=(redis_server, back), daemon=True).start()

    backend.on_chord_part_return(member, states.SUCCESS, {"n": 1})  # Celery's own raises ConnectionError

    assert back.is_set(), "the part was counted only once Redis was back"
    # The restart lost the chord's size (no persistence): the part is counted against nothing, and
    # tasks.chords.fail_lost_chord is what then fails the chord; the member itself did not fail.
    assert backend.client.zcard(backend.get_key_for_group(gid, ".j")) == 1
