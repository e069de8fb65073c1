"""A client's ``task-sent`` event reaches the event exchange (Flower, ``celery events``) on a connection of its
own without publisher confirms, so that a send waits for one confirm, the task's (tasks.runtime.sentevents)."""

from __future__ import annotations

import uuid

from celery import Celery
from kombu import Exchange, Queue

from tests.harness import wait_for


def test_task_sent_events_are_published_unconfirmed_beside_the_confirmed_task(app: Celery) -> None:
    exchange = Exchange(app.conf.event_exchange, type="topic")
    task_id = str(uuid.uuid4())
    with app.connection_for_read() as conn:
        events = Queue(
            f"test-sent-{task_id}", exchange=exchange, routing_key="task.sent", durable=False, auto_delete=True
        )(conn.default_channel)
        events.declare()
        app.tasks["agents.probe"].apply_async(kwargs={"key": "sent-events"}, task_id=task_id)

        def sent_event() -> dict | None:
            message = events.get(no_ack=True)
            return message.decode() if message is not None else None

        event = wait_for(sent_event, 15, 0.05, "the task-sent event")
        events.delete()
    assert event["type"] == "task-sent" and event["uuid"] == task_id
    assert "sent-events" in event["kwargs"], "the redacted reprs the message carries"

    unconfirmed = app.amqp._event_dispatcher._unconfirmed
    assert unconfirmed._connection is not None, "published through relaybus's event connection"
    assert unconfirmed._connection.transport_options.get("confirm_publish") is False
    with app.producer_or_acquire() as producer:
        assert producer.connection is not unconfirmed._connection
        assert producer.connection.transport_options.get("confirm_publish") is True, "tasks stay confirmed"
