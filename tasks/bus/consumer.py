"""The worker side of the bus: a consumer bootstep that turns events into handler tasks.

RabbitMQ cannot rewrite a message per subscriber, and a Celery task does not learn which queue its
message came from, so an event cannot be a task message itself. Instead each subscriber has its own
queue of plain event messages (``<namespace>.<subscriber>.events``), and this step, running in the
main process of every worker that serves the subscriber's agent queue, does for each message:

1. decode the envelope, upcast it to the current version and validate it (:mod:`tasks.bus.events`);
2. publish one handler task per matching handler to the subscriber's priority queue, with the
   event's correlation id, the event id as causation id, the event's priority, and a task id
   derived from the event id (a redelivered event makes the same task, which de-duplicates);
3. acknowledge the event only after the broker confirmed those publishes (publisher confirms).

An event it cannot deliver (unknown type, unsupported version, invalid data, no matching handler)
goes to ``<namespace>.<subscriber>.events.dlq`` with the reason in its headers (tasks.runtime.deadletter),
and is recorded as ``event.dead_lettered``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from celery import Celery, bootsteps
from celery.utils.log import get_logger
from kombu import Consumer

from relaybus.eventstore.payloads import refs_in
from relaybus.tasks.bus.bus import (
    EVENT_TYPE_HEADER,
    PARENT_ID_HEADER,
    ROOT_ID_HEADER,
    declare_subscriptions,
    event_queue_name,
    subscribers,
    subscriptions,
)
from relaybus.tasks.bus.events import EventEnvelope, derived_id, parse_envelope, registry
from relaybus.tasks.bus.records import record_dead_letter
from relaybus.tasks.errors import EventRejected, EventTooLarge, InvalidEvent, NoHandler
from relaybus.tasks.runtime import tracecontext
from relaybus.tasks.runtime.config import runtime_config
from relaybus.tasks.runtime.context import CAUSATION_HEADER, CORRELATION_HEADER
from relaybus.tasks.runtime.deadletter import dead_letter_message, oversize

logger = get_logger(__name__)

#: Events held unacknowledged per worker: enough to keep forwarding busy, few enough to keep
#: priorities meaningful (the event queues are priority queues too).
PREFETCH = 16


def served_subscribers(app: Celery) -> list[str]:
    """Subscribers whose agent queue this worker consumes (all of them when it consumes every queue)."""
    consumed = set(app.amqp.queues.consume_from or ())
    namespace = runtime_config(app).namespace
    if not consumed:
        return subscribers()
    return [
        s for s in subscribers()
        if f"{namespace}.{s}" in consumed or f"{namespace}.{s}.urgent" in consumed
    ]


def forward(
    app: Celery, subscriber: str, body: bytes | str, content_type: str | None, headers: dict[str, Any] | None = None
) -> list[str]:
    """Validate one event and publish its handler tasks; returns their task ids. Raises EventRejected.

    The handler tasks join the publishing task's tree (``headers``: :data:`~.bus.ROOT_ID_HEADER`,
    :data:`~.bus.PARENT_ID_HEADER`), so Flower shows a workflow's event hops under its root."""
    too_large = oversize(app, body, "the event message")
    if too_large is not None:  # checked before decoding, as for task messages (tasks.runtime.consumer)
        raise EventTooLarge(too_large)
    if content_type not in (None, "application/json"):
        raise InvalidEvent(f"content type {content_type!r} is not accepted; events are application/json")
    envelope = registry.upcast(parse_envelope(body))
    if not refs_in(envelope.data):
        registry.load(envelope)  # validates the data against the current class
    # Data by reference (tasks.runtime.claimcheck) is read back and validated by the handler's task base,
    # not here: this process serves every subscriber, and would read every large payload once more.
    matching = [s for s in subscriptions(subscriber) if s.matches(envelope.type)]
    if not matching:
        raise NoHandler(f"no handler of {subscriber!r} takes {envelope.type}")
    headers = headers or {}
    root_id, parent_id = headers.get(ROOT_ID_HEADER), headers.get(PARENT_ID_HEADER)
    ids = []
    attributes = {"relaybus.event.type": envelope.type, "relaybus.correlation_id": envelope.correlation_id,
                  "relaybus.subscriber": subscriber}
    with tracecontext.forwarding(headers, f"relaybus.event/{envelope.type}", attributes):
        for sub in matching:
            ids.append(_send_handler(app, sub, envelope, root_id, parent_id))
    return ids


def _send_handler(app: Celery, sub: Any, envelope: EventEnvelope, root_id: Any, parent_id: Any) -> str:
    """Send one handler task of ``envelope``; returns its (derived) task id."""
    task_id = derived_id(envelope.event_id, sub.task_name)
    app.send_task(
        sub.task_name,
        kwargs={"event": envelope.model_dump(mode="json")},
        task_id=task_id,
        priority=envelope.priority,
        headers={CORRELATION_HEADER: envelope.correlation_id, CAUSATION_HEADER: envelope.event_id,
                 **envelope.replay},
        link_error=app.signature(sub.on_error) if sub.on_error else None,
        root_id=root_id if isinstance(root_id, str) else None,
        parent_id=parent_id if isinstance(parent_id, str) else None,
    )
    return task_id


class EventDelivery(bootsteps.ConsumerStep):  # type: ignore[misc]
    """Consumes the event queues of the subscribers this worker serves; see the module docstring."""

    name = "relaybus.EventDelivery"

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.app: Celery = c.app

    def get_consumers(self, channel: Any) -> list[Consumer]:
        served = served_subscribers(self.app)
        if not served:
            return []
        queues = declare_subscriptions(self.app, served, channel=channel)
        channel.basic_qos(0, PREFETCH, False)  # positional: amqp and virtual transports name them differently
        logger.info("relaybus: delivering events to %s", ", ".join(served))
        return [
            Consumer(channel, queues=[queue], on_message=partial(self.on_event, subscriber), no_ack=False)
            for subscriber, queue in zip(served, queues, strict=True)
        ]

    def on_event(self, subscriber: str, message: Any) -> None:
        try:
            forward(self.app, subscriber, message.body, message.content_type, message.headers)
        except EventRejected as exc:
            self._dead_letter(subscriber, message, exc)
        except Exception:
            # The broker did not take the handler task: give the event back to be tried again.
            logger.exception("relaybus: could not forward an event to %s; requeueing it", subscriber)
            message.requeue()
        else:
            message.ack()

    def _dead_letter(self, subscriber: str, message: Any, error: EventRejected) -> None:
        queue = event_queue_name(runtime_config(self.app).namespace, subscriber)
        headers = message.headers or {}
        if not dead_letter_message(self.app, message, original_queue=queue, reason=error.reason, error=error,
                                   attempts=1, correlation_id=headers.get(CORRELATION_HEADER)):
            return
        logger.error("relaybus: dead-lettered %s event from %s: %s: %s",
                     headers.get(EVENT_TYPE_HEADER, "?"), queue, error.reason, error)
        try:
            record_dead_letter(self.app, _envelope_or_none(message.body), queue, error.reason, str(error))
        except Exception:
            logger.exception("relaybus: could not record a dead-lettered event")


def _envelope_or_none(body: bytes | str) -> EventEnvelope | None:
    try:
        return parse_envelope(body)
    except EventRejected:
        return None
