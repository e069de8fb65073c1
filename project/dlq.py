"""Dead-letter queues: inspect, requeue (redrive) and purge, over AMQP (no management plugin needed)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from celery import Celery
from pydantic import BaseModel, ConfigDict

from relaybus.celery import topology_of
from relaybus.eventstore.redaction import Redactor
from relaybus.eventstore.redaction import redactor as default_redactor
from relaybus.tasks.runtime.config import runtime_config
from relaybus.tasks.runtime.context import CORRELATION_HEADER, REDRIVE_HEADER
from relaybus.tasks.runtime.deadletter import (
    ATTEMPTS_HEADER,
    DEAD_LETTERED_AT_HEADER,
    ERROR_MESSAGE_HEADER,
    ERROR_TYPE_HEADER,
    ORIGINAL_QUEUE_HEADER,
    REASON_HEADER,
    RELAYBUS_DLQ_HEADERS,
)


class DeadLetter(BaseModel):
    model_config = ConfigDict(frozen=True)

    dlq: str
    task_id: str | None
    task: str | None
    reason: str | None
    error_type: str | None
    error_message: str | None
    attempts: int | None
    original_queue: str | None
    correlation_id: str | None
    dead_lettered_at: str | None
    redrives: int
    body_preview: str


def _preview(body: Any, redactor: Redactor, limit: int = 300) -> str:
    """The start of a letter's body, redacted: the letter keeps its real input for a redrive, a person reading
    ``dlq list``/``dlq show`` sees it masked (docs/secrets.md)."""
    if isinstance(body, bytes):
        try:
            body = body.decode()
        except UnicodeDecodeError:
            return f"<{len(body)} bytes of binary>"
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            text = redactor.redact_text(body)
            return text if len(text) <= limit else text[:limit] + "…"
    text = json.dumps(redactor.redact(body), default=str)
    return text if len(text) <= limit else text[:limit] + "…"


def _text(value: Any) -> str | None:
    """A header as text: dead letters are bad messages, and their headers may have any type."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return json.dumps(value, default=str)


def _count(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _event_id(body: Any) -> str | None:
    """An event-bus letter has no task id: its envelope's ``event_id`` names it instead."""
    try:
        envelope = json.loads(body) if isinstance(body, (bytes, str)) else body
    except ValueError:
        return None
    return _text(envelope.get("event_id")) if isinstance(envelope, dict) else None


def _to_model(dlq: str, message: Any, redactor: Redactor | None = None) -> DeadLetter:
    redactor = redactor or default_redactor()
    headers = dict(message.headers or {})
    error_message = _text(headers.get(ERROR_MESSAGE_HEADER))
    death = headers.get("x-death")
    first = death[0] if isinstance(death, list) and death and isinstance(death[0], dict) else {}
    return DeadLetter(
        dlq=dlq,
        task_id=_text(headers.get("id") or headers.get("x_event_id")) or _event_id(message.body),
        task=_text(headers.get("task")),
        reason=_text(headers.get(REASON_HEADER) or first.get("reason")),
        error_type=_text(headers.get(ERROR_TYPE_HEADER)),
        error_message=redactor.redact_text(error_message) if error_message else error_message,
        attempts=_count(headers.get(ATTEMPTS_HEADER)),
        original_queue=_text(headers.get(ORIGINAL_QUEUE_HEADER) or first.get("queue")),
        correlation_id=_text(headers.get(CORRELATION_HEADER)),
        dead_lettered_at=_text(headers.get(DEAD_LETTERED_AT_HEADER)),
        redrives=_count(headers.get(REDRIVE_HEADER)) or 0,
        body_preview=_preview(message.body, redactor),
    )


def dlq_names(app: Celery, agents: Iterable[str] | None = None) -> list[str]:
    """Every dead-letter queue of the namespace: each agent's, then each event subscriber's
    (``<namespace>.<subscriber>.events.dlq``); ``agents`` keeps those of some agents or subscribers."""
    from relaybus.tasks.bus.bus import event_queue_name, subscribers

    topology = topology_of(app)
    app.finalize(auto=True)  # imports the modules that register subscribers (RELAYBUS_EXTRA_MODULES)
    wanted = list(agents) if agents else None
    names = [topology.dlq_name(a) for a in (wanted or topology.agents)]
    names += [f"{event_queue_name(topology.namespace, s)}.dlq" for s in subscribers() if wanted is None or s in wanted]
    return names


#: Stamped by ``requeue`` on each letter it sends back, with an id of its own per call: a letter that fails
#: again and comes back to the DLQ while the call still runs is recognised, not requeued a second time.
REQUEUE_RUN_HEADER = "x_requeue_run"


def _walk(app: Celery, dlq: str, visit: Callable[[Any, Any], str], limit: int) -> None:
    """Take the messages present when the walk starts, one by one; ``visit`` answers "ack" (consumed),
    "keep" (put back untouched) or "again" (put back: a letter this walk already handled, back meanwhile).

    Kept messages stay unacknowledged until the channel closes, so each is seen once. The walk takes no
    more than the queue held at its start (``limit`` at most), not counting "again": while a worker
    dead-letters requeued letters anew, they join the queue behind the walk and are not taken for new ones.
    """
    with app.connection_for_write() as conn:
        channel = conn.channel()
        try:
            try:
                _, present, _ = channel.queue_declare(queue=dlq, passive=True)
            except conn.channel_errors:
                return  # not declared (yet): no dead letters there; the broker closed the channel
            budget = min(limit, int(present))
            taken = 0
            while taken < budget:
                raw = channel.basic_get(dlq, no_ack=False)
                if raw is None:
                    break
                message = channel.message_to_python(raw)
                verdict = visit(conn, message)
                if verdict == "ack":
                    message.ack()
                if verdict != "again":
                    taken += 1
        finally:
            channel.close()  # everything not acked goes back to the queue, in order


def peek(app: Celery, agents: Iterable[str] | None = None, limit: int = 100) -> list[DeadLetter]:
    found: list[DeadLetter] = []
    for dlq in dlq_names(app, agents):

        def keep(_conn: Any, message: Any, queue: str = dlq) -> str:
            found.append(_to_model(queue, message, runtime_config(app).redactor))
            return "keep"

        _walk(app, dlq, keep, limit)
    return found


def requeue(
    app: Celery,
    agents: Iterable[str] | None = None,
    task_id: str | None = None,
    limit: int = 1000,
    progress: Callable[[DeadLetter], None] | None = None,
) -> list[DeadLetter]:
    """Send dead letters back to the queue they came from with a fresh retry budget, each once per call."""
    moved: list[DeadLetter] = []
    run = uuid.uuid4().hex

    def visit(conn: Any, message: Any) -> str:
        headers = dict(message.headers or {})
        if headers.get(REQUEUE_RUN_HEADER) == run:
            return "again"
        letter = _to_model(dlq, message)
        if task_id is not None and letter.task_id != task_id:
            return "keep"
        if not letter.original_queue:
            return "keep"
        for key in (*RELAYBUS_DLQ_HEADERS, "x-death", "x-first-death-queue", "x-first-death-reason",
                    "x-first-death-exchange"):
            headers.pop(key, None)
        headers["retries"] = 0
        headers[REDRIVE_HEADER] = letter.redrives + 1
        headers[REQUEUE_RUN_HEADER] = run
        producer = conn.Producer()
        producer.publish(
            message.body,
            # The default exchange routes by queue name: agent queues and event-bus queues alike.
            exchange="",
            routing_key=letter.original_queue,
            headers=headers,
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            serializer=None,
            priority=message.properties.get("priority") or 0,
            delivery_mode=2,
            correlation_id=message.properties.get("correlation_id"),
        )
        moved.append(letter)
        if progress is not None:
            progress(letter)
        return "ack"

    for dlq in dlq_names(app, agents):
        _walk(app, dlq, visit, limit)
    return moved


def purge(app: Celery, agents: Iterable[str] | None = None, task_id: str | None = None) -> int:
    dropped = 0

    def visit(_conn: Any, message: Any) -> str:
        nonlocal dropped
        if task_id is not None and _to_model(dlq, message).task_id != task_id:
            return "keep"
        dropped += 1
        return "ack"

    for dlq in dlq_names(app, agents):
        _walk(app, dlq, visit, 1_000_000)
    return dropped
