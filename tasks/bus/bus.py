"""The event bus: publish typed events to a topic exchange; subscribers declare what they want.

::

    publish(ResearchCompleted(...))            # routing key = the event type
          |
          v
    exchange <ns>.events (topic) --research.*--> queue <ns>.auditor.events   (one per subscriber)
                                 --#.completed-> queue <ns>.archive.events
          |  a worker bootstep (tasks.bus.consumer) reads each subscriber queue, upcasts and checks
          |  the event, publishes the handler task, and acks the event once the broker confirmed it
          v
    task events.auditor.on_research  on queue <ns>.auditor (the subscriber's priority queue)

A publisher never names its subscribers; a subscriber is a decorated function in any module the
workers load::

    @subscribe("auditor", ResearchCompleted)
    def on_research(event: ResearchCompleted, ctx: AgentContext) -> None: ...

Handlers run as agent tasks (validation, retries, dead-lettering, recording) with the event's
correlation id and the event id as causation id. A handler may return events; they are published
after it returns. Delivery is at least once: handler task ids are derived from the event id, and a
handler that already succeeded for an event is not run again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from celery import Celery, current_app
from celery._state import get_current_task
from kombu import Exchange, Queue, binding
from pydantic import Field

from relaybus.tasks.bus.events import (
    Event,
    EventEnvelope,
    derived_id,
    derived_record_id,
    envelope_for,
    registry,
    topic_matches,
)
from relaybus.tasks.bus.records import delivery_records, record_publication
from relaybus.tasks.errors import InvalidEvent, PublishFailed
from relaybus.tasks.runtime import tracecontext
from relaybus.tasks.runtime.claimcheck import offload_value
from relaybus.tasks.runtime.config import runtime_config
from relaybus.tasks.runtime.context import current_causation_id, current_correlation_id, current_replay_marks, new_id
from relaybus.tasks.runtime.idempotency import already_done, mark_done
from relaybus.tasks.runtime.recording.records import request_origin_ms
from relaybus.tasks.runtime.task import AgentContext, AgentModel, agent

EVENT_TASK_PREFIX = "events."
#: AMQP headers every event carries, so a person reading a queue sees what it is without decoding it.
EVENT_ID_HEADER = "x_event_id"
EVENT_TYPE_HEADER = "x_event_type"
EVENT_VERSION_HEADER = "x_event_version"

E = TypeVar("E", bound=Event)
HandlerResult = Event | Sequence[Event] | None
Handler = Callable[[Any, AgentContext], HandlerResult]


# -- names -----------------------------------------------------------------------------------------


def handler_task_name(subscriber: str, handler: str) -> str:
    return f"{EVENT_TASK_PREFIX}{subscriber}.{handler}"


def subscriber_of(task_name: str) -> str | None:
    """The agent whose queue runs a handler task: ``events.auditor.on_research`` -> ``auditor``."""
    if not task_name.startswith(EVENT_TASK_PREFIX):
        return None
    subscriber, _, handler = task_name[len(EVENT_TASK_PREFIX) :].partition(".")
    return subscriber if subscriber and handler else None


def event_queue_name(namespace: str, subscriber: str) -> str:
    return f"{namespace}.{subscriber}.events"


def event_exchange(app: Celery) -> Exchange:
    return Exchange(runtime_config(app).event_exchange, type="topic", durable=True)


# -- subscriptions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Subscription:
    subscriber: str
    handler: str
    patterns: tuple[str, ...]
    fn: Handler
    #: Error callback (a task name or signature taking the failed task's id), linked to every delivery.
    on_error: str | Mapping[str, Any] | None = None

    @property
    def task_name(self) -> str:
        return handler_task_name(self.subscriber, self.handler)

    def matches(self, event_type: str) -> bool:
        return any(topic_matches(p, event_type) for p in self.patterns)


_subscriptions: dict[str, Subscription] = {}


def subscriptions(subscriber: str | None = None) -> list[Subscription]:
    """Every subscription registered in this process (by the modules it imported), or one subscriber's."""
    return [s for s in _subscriptions.values() if subscriber is None or s.subscriber == subscriber]


def subscribers() -> list[str]:
    return sorted({s.subscriber for s in _subscriptions.values()})


def _pattern(item: str | type[Event]) -> str:
    pattern = item if isinstance(item, str) else item.type
    words = pattern.split(".")
    if not pattern or not all(w in ("*", "#") or (w and all(c.isalnum() or c in "-_" for c in w)) for w in words):
        raise ValueError(f"invalid event pattern {pattern!r}: dot-separated words, '*' or '#'")
    return pattern


class Delivery(AgentModel):
    """The input of every handler task: the event, already upcast to its current version."""

    event: EventEnvelope


class Handled(AgentModel):
    """The output of every handler task."""

    event_id: str
    duplicate: bool = False
    published: list[str] = Field(default_factory=list)


def subscribe(
    subscriber: str,
    *events: str | type[Event],
    name: str | None = None,
    on_error: str | Mapping[str, Any] | None = None,
    max_retries: int | None = None,
) -> Callable[[Callable[[E, AgentContext], HandlerResult]], Callable[[E, AgentContext], HandlerResult]]:
    """Run the decorated function for every event matching one of ``events`` (classes or patterns).

    ``subscriber`` is an agent name: its queue ``<namespace>.<subscriber>`` runs the handler, so
    it must be one of the app's agents (``RELAYBUS_EXTRA_AGENTS`` for your own).
    """
    if not events:
        raise ValueError("subscribe() needs at least one event class or pattern")
    patterns = tuple(dict.fromkeys(_pattern(e) for e in events))

    def decorate(fn: Callable[[E, AgentContext], HandlerResult]) -> Callable[[E, AgentContext], HandlerResult]:
        sub = Subscription(subscriber, name or fn.__name__, patterns, fn, on_error)
        _subscriptions[sub.task_name] = sub
        agent(
            subscriber, input=Delivery, output=Handled, max_retries=max_retries, task_name=sub.task_name,
            start_records=delivery_records(sub.subscriber, sub.task_name),
        )(_handler_body(sub))
        return fn

    return decorate


def _handler_body(sub: Subscription) -> Callable[[Delivery, AgentContext], Handled]:
    def deliver(inp: Delivery, ctx: AgentContext) -> Handled:
        app = _running_app()
        if already_done(app, ctx.task_id):
            return Handled(event_id=inp.event.event_id, duplicate=True)
        event = registry.load(inp.event)
        returned = sub.fn(event, ctx)
        out = [returned] if isinstance(returned, Event) else list(returned or ())
        published = [publish(e, app=app).event_id for e in out]
        mark_done(app, ctx.task_id)
        return Handled(event_id=inp.event.event_id, published=published)

    deliver.__name__ = sub.handler
    return deliver


def _running_app() -> Celery:
    task = get_current_task()
    return task.app if task is not None else current_app


# -- publishing ------------------------------------------------------------------------------------


_EVENT_COUNTS = "_relaybus_events_published"


def _next_in_execution(request: Any, event_type: str) -> int:
    """Counts events per type within one execution of one task, so a re-run derives the same ids.

    The count lives on the request, which is new for every execution: a second copy of the same
    message run by the same process (a re-published chain step) counts from 1 again, as a copy run
    anywhere else does. (A count kept per process and keyed by task id and retries went on counting
    across the two copies and gave the second one new ids: the same fact published twice.)
    """
    counts: Counter[str] | None = getattr(request, _EVENT_COUNTS, None)
    if counts is None:
        counts = Counter()
        setattr(request, _EVENT_COUNTS, counts)
    counts[event_type] += 1
    return counts[event_type]


def publish(
    event: Event,
    *,
    app: Celery | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    event_id: str | None = None,
    priority: int | None = None,
) -> EventEnvelope:
    """Record ``event`` in the event log, then publish it to ``<namespace>.events``; returns its envelope.

    Inside a task the correlation id, the causation id (the task's id), the priority and a
    deterministic event id come from the running task, so a retried task publishes the same events
    under the same ids. Raises :class:`~tasks.errors.PublishFailed` if the broker does not confirm.
    """
    app = app or _running_app()
    config = runtime_config(app)
    task = get_current_task()
    running = task if task is not None and task.request.id is not None else None
    correlation = correlation_id or current_correlation_id() or new_id()
    causation = causation_id or (running.request.id if running is not None else current_causation_id())
    if priority is None and running is not None:
        priority = (running.request.delivery_info or {}).get("priority")
    envelope = envelope_for(
        event,
        event_id=event_id or _default_event_id(event, correlation, running),
        correlation_id=correlation,
        causation_id=causation,
        priority=priority,
        source=running.name if running is not None else "client",
        replay=current_replay_marks(),
    )
    data = offload_value(app, envelope.data)  # large data by reference (tasks.runtime.claimcheck)
    if data is not envelope.data:
        envelope = envelope.model_copy(update={"data": data})
    body = envelope.model_dump_json()
    if len(body) > config.max_payload_bytes:
        raise InvalidEvent(f"{event.type} is {len(body)} bytes, over the limit of {config.max_payload_bytes}")
    # The log first, like an outbox: a crash before the broker confirms leaves a recorded event
    # that the retried step publishes again under the same id, never a delivered event the log lacks.
    record_publication(app, envelope, running)
    tree: dict[str, str] = {}
    if running is not None:  # the handlers' tasks join the publishing task's tree (Flower's root and parent)
        tree = {ROOT_ID_HEADER: running.request.root_id or running.request.id, PARENT_ID_HEADER: running.request.id}
    tracecontext.inject(tree)  # and its trace (RELAYBUS_OTEL)
    send_envelope(app, envelope, body, tree)
    return envelope


def _default_event_id(event: Event, correlation: str, running: Any) -> str:
    key = type(event).unique_per_correlation
    if key:
        return derived_id(correlation, "unique", key)
    if running is not None:
        n = _next_in_execution(running.request, event.type)
        # Time-ordered by the publishing task's origin: the same on every redelivery of its message.
        return derived_record_id(running.request.id, event.type, n, at_ms=request_origin_ms(running.request))
    return new_id()


#: Message headers of an event published from a task: the task tree its handlers' tasks join.
ROOT_ID_HEADER = "x_root_id"
PARENT_ID_HEADER = "x_parent_task_id"


def send_envelope(
    app: Celery, envelope: EventEnvelope, body: str | None = None, tree: dict[str, str] | None = None
) -> None:
    """Publish an envelope as it is (publishers use :func:`publish`; tests use this for old versions).
    ``tree``: :data:`ROOT_ID_HEADER` and :data:`PARENT_ID_HEADER` of the publishing task."""
    exchange = event_exchange(app)
    try:
        with app.producer_or_acquire() as producer:
            producer.publish(
                body if body is not None else envelope.model_dump_json(),
                exchange=exchange,
                routing_key=envelope.type,
                declare=[exchange],
                headers={**envelope_headers(envelope), **(tree or {})},
                content_type="application/json",
                content_encoding="utf-8",
                serializer=None,
                delivery_mode=2,
                priority=envelope.priority or 0,
                message_id=envelope.event_id,
                retry=True,
                retry_policy={"max_retries": 3, "interval_start": 0.1, "interval_step": 0.5},
            )
    except Exception as exc:
        if isinstance(exc, InvalidEvent):
            raise
        raise PublishFailed(f"could not publish {envelope.type} {envelope.event_id}: {exc}") from exc


def envelope_headers(envelope: EventEnvelope) -> dict[str, Any]:
    from relaybus.tasks.runtime.context import CAUSATION_HEADER, CORRELATION_HEADER

    headers: dict[str, Any] = {
        EVENT_ID_HEADER: envelope.event_id,
        EVENT_TYPE_HEADER: envelope.type,
        EVENT_VERSION_HEADER: envelope.version,
        CORRELATION_HEADER: envelope.correlation_id,
    }
    if envelope.causation_id:
        headers[CAUSATION_HEADER] = envelope.causation_id
    return headers


# -- declaring -------------------------------------------------------------------------------------


def subscription_queue(app: Celery, subscriber: str) -> Queue:
    """The durable queue ``<namespace>.<subscriber>.events``, bound to the event exchange by pattern."""
    config = runtime_config(app)
    name = event_queue_name(config.namespace, subscriber)
    patterns = sorted({p for s in subscriptions(subscriber) for p in s.patterns})
    exchange = event_exchange(app)
    return Queue(
        name,
        bindings=[binding(exchange, routing_key=p) for p in patterns],
        durable=True,
        queue_arguments={
            "x-max-priority": max(config.priority_levels.values()),
            # Anything rejected without requeue keeps a copy, next to the ones we dead-letter with a reason.
            "x-dead-letter-exchange": config.dead_letter_exchange,
            "x-dead-letter-routing-key": f"{name}.dlq",
        },
    )


def subscription_dead_letter_queue(app: Celery, subscriber: str) -> Queue:
    config = runtime_config(app)
    name = f"{event_queue_name(config.namespace, subscriber)}.dlq"
    dlx = Exchange(config.dead_letter_exchange, type="direct", durable=True)
    return Queue(name, exchange=dlx, routing_key=name, durable=True)


def declare_subscriptions(
    app: Celery, subscriber_names: Iterable[str] | None = None, channel: Any = None
) -> list[Queue]:
    """Declare the event exchange and each subscriber's queue, bindings and dead-letter queue.

    Workers do this when they start; call it yourself so that events published before the first
    subscriber's worker starts are kept rather than dropped (the exchange routes to no queue).
    """
    names = list(subscriber_names) if subscriber_names is not None else subscribers()
    queues = [subscription_queue(app, s) for s in names]

    def run(chan: Any) -> None:
        event_exchange(app)(chan).declare()
        Exchange(runtime_config(app).dead_letter_exchange, type="direct", durable=True)(chan).declare()
        for s, queue in zip(names, queues, strict=True):
            subscription_dead_letter_queue(app, s)(chan).declare()
            queue(chan).declare()

    if channel is not None:
        run(channel)
    else:
        with app.connection_for_write() as conn:
            run(conn.default_channel)
    return queues
