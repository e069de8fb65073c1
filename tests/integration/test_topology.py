"""Declaring and deleting a namespace's queues and exchanges on the real RabbitMQ."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kombu.messaging
import pytest
from kombu import Connection, Queue

from relaybus.celery import topology_of
from relaybus.tasks.bus.bus import declare_subscriptions, subscribers, subscription_dead_letter_queue
from tests.harness import TEST_AGENTS, make_app, make_settings
from tests.subscribers import SUBSCRIBER_AGENTS

pytestmark = pytest.mark.integration


def _exists(connection: Connection, kind: str, name: str) -> bool:
    channel = connection.channel()
    try:
        if kind == "queue":
            channel.queue_declare(queue=name, passive=True)
        else:
            channel.exchange_declare(exchange=name, type="direct", passive=True)
    except connection.channel_errors:
        return False  # the broker closed the channel: not found
    channel.close()
    return True


def test_delete_removes_every_queue_and_exchange_the_topology_and_the_bus_declared(
    tmp_path: Path, broker_url: str, redis_url: str
) -> None:
    settings = make_settings(tmp_path, broker_url, redis_url, urgent_queues=True,
                             extra_modules=("tests.agents", "tests.subscribers"),
                             extra_agents=(*TEST_AGENTS, *SUBSCRIBER_AGENTS))
    app = make_app(settings)
    topology = topology_of(app)
    try:
        with app.connection_for_write() as conn:
            topology.declare(conn)
            event_queues = declare_subscriptions(app)
            declared = [("queue", q.name) for q in topology.all_queues() + event_queues]
            declared += [("queue", subscription_dead_letter_queue(app, s).name) for s in subscribers()]
            declared += [("exchange", e.name)
                         for e in (topology.exchange, topology.dead_letter_exchange, topology.event_exchange)]
            assert {name for _, name in declared} >= {
                f"{settings.namespace}.probe.urgent", f"{settings.namespace}.auditor.events.dlq"}
            assert [d for d in declared if not _exists(conn, *d)] == []

            topology.delete(conn)

            assert [d for d in declared if _exists(conn, *d)] == []
            topology.delete(conn)  # again, with nothing left to delete
    finally:
        with app.connection_for_write() as conn:
            topology.delete(conn)
        app.close()


def test_an_agent_queue_is_declared_once_a_connection_and_again_on_a_new_one(
    tmp_path: Path, broker_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task message's queue is declared by its first publish on a connection, not by every one (kombu's record
    of what the connection declared is read first); a queue deleted behind the publisher is declared again on
    the next connection, and the message published there is in it."""
    settings = make_settings(tmp_path, broker_url, redis_url)
    app = make_app(settings)
    topology = topology_of(app)
    name = topology.queue_name("probe")
    declares: list[str] = []  # the broker asked to declare
    asked: list[str] = []  # kombu asked whether to declare
    declare, maybe_declare = Queue.declare, kombu.messaging.maybe_declare

    def declared(queue: Queue, *args: Any, **kwargs: Any) -> Any:
        declares.append(queue.name)
        return declare(queue, *args, **kwargs)

    def asked_first(entity: Any, *args: Any, **kwargs: Any) -> Any:
        asked.append(entity.name)
        return maybe_declare(entity, *args, **kwargs)

    monkeypatch.setattr(Queue, "declare", declared)
    monkeypatch.setattr(kombu.messaging, "maybe_declare", asked_first)
    try:
        for n in range(3):
            app.send_task("agents.probe", kwargs={"payload": {"n": n}})
        assert declares == asked == [name]
        with Connection(broker_url) as conn:
            assert conn.default_channel.queue_declare(queue=name, passive=True).message_count == 3
            conn.default_channel.queue_delete(queue=name)
            assert not _exists(conn, "queue", name)

        with app.producer_or_acquire() as producer:
            producer.connection.collect()  # what a reconnection does first: it forgets what was declared
        app.send_task("agents.probe", kwargs={"payload": {"n": 3}})

        assert declares == asked == [name, name]
        with Connection(broker_url) as conn:
            assert conn.default_channel.queue_declare(queue=name, passive=True).message_count == 1
    finally:
        with app.connection_for_write() as conn:
            topology.delete(conn)
        app.close()
