"""Dead-lettering with a reason.

RabbitMQ's own dead-lettering (reject without requeue) can add no headers, so a person reading the
dead-letter queue would not learn why. relaybus publishes the message itself to the agent's
dead-letter queue, with the reason in headers, before the original is acknowledged: at worst a
crash between the two leaves a duplicate in the dead-letter queue, never a loss.

The queue arguments still name the dead-letter exchange, as a safety net for anything rejected
some other way.

Two kinds of dead letter: a task call the task base gave up on (:func:`dead_letter_task`, rebuilt so that
``dlq requeue`` can run it again), and a raw message a consumer refused before anything ran
(:func:`dead_letter_message`, kept as it came: task messages in the worker's consumer, events in the bus's).
"""

from __future__ import annotations

import contextlib
import json
import socket
from datetime import UTC, datetime
from typing import Any

from celery import Celery
from celery.utils.log import get_logger

from relaybus.eventstore.redaction import Redactor
from relaybus.eventstore.redaction import redactor as default_redactor
from relaybus.tasks.errors import error_message_of, error_type_of
from relaybus.tasks.runtime.config import runtime_config
from relaybus.tasks.runtime.context import request_headers

logger = get_logger(__name__)

REASON_HEADER = "x_dead_letter_reason"
ERROR_TYPE_HEADER = "x_error_type"
ERROR_MESSAGE_HEADER = "x_error_message"
ATTEMPTS_HEADER = "x_attempts"
ORIGINAL_QUEUE_HEADER = "x_original_queue"
DEAD_LETTERED_AT_HEADER = "x_dead_lettered_at"
DEAD_LETTERED_BY_HEADER = "x_dead_lettered_by"

RELAYBUS_DLQ_HEADERS = (
    REASON_HEADER,
    ERROR_TYPE_HEADER,
    ERROR_MESSAGE_HEADER,
    ATTEMPTS_HEADER,
    ORIGINAL_QUEUE_HEADER,
    DEAD_LETTERED_AT_HEADER,
    DEAD_LETTERED_BY_HEADER,
)
MAX_ERROR_MESSAGE = 2000


#: The dead-letter reason of a task its hard time limit ended (recorded by the worker's main process, which
#: writes the record before it publishes the dead letter: tasks.runtime.request).
TIME_LIMIT_REASON = "time-limit"


def base_queue(queue: str) -> str:
    """The agent queue a message came from, without the ``.urgent`` suffix."""
    return queue[: -len(".urgent")] if queue.endswith(".urgent") else queue


def dlq_for(queue: str) -> str:
    """``agents.researcher`` and ``agents.researcher.urgent`` dead-letter to ``agents.researcher.dlq``."""
    return f"{base_queue(queue)}.dlq"


def reason_headers(
    *, reason: str, error: BaseException | None, attempts: int, original_queue: str,
    redactor: Redactor | None = None,
) -> dict[str, Any]:
    """The dead letter's reason headers; the error message redacted (by default, with the default keys)."""
    message = error_message_of(error) if error is not None else reason
    message = (redactor or default_redactor()).redact_text(message)
    # AMQP header values are UTF-8: a lone surrogate (an error quoting undecodable bytes) is written escaped.
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return {
        REASON_HEADER: reason,
        ERROR_TYPE_HEADER: error_type_of(error) if error is not None else reason,
        ERROR_MESSAGE_HEADER: message[:MAX_ERROR_MESSAGE],
        ATTEMPTS_HEADER: attempts,
        ORIGINAL_QUEUE_HEADER: original_queue,
        DEAD_LETTERED_AT_HEADER: datetime.now(UTC).isoformat(),
        DEAD_LETTERED_BY_HEADER: socket.gethostname(),
    }


def publish_dead_letter(
    app: Celery,
    *,
    body: bytes | str,
    content_type: str,
    content_encoding: str,
    headers: dict[str, Any],
    original_queue: str,
    priority: int | None = None,
    correlation_id: str | None = None,
) -> str:
    """Publish one message to the dead-letter queue of ``original_queue``; returns that queue's name."""
    config = runtime_config(app)
    dlq = dlq_for(original_queue)
    with app.producer_or_acquire() as producer:
        producer.publish(
            body,
            exchange=config.dead_letter_exchange,
            routing_key=dlq,
            headers=headers,
            content_type=content_type,
            content_encoding=content_encoding,
            serializer=None,
            priority=priority or 0,
            delivery_mode=2,
            correlation_id=correlation_id,
            retry=True,
        )
    return dlq


def dead_letter_task(
    app: Celery,
    *,
    task_name: str,
    task_id: str,
    args: tuple[Any, ...] | list[Any],
    kwargs: dict[str, Any],
    request_headers: dict[str, Any],
    original_queue: str,
    reason: str,
    error: BaseException | None,
    attempts: int,
    priority: int | None,
) -> str:
    """Dead-letter a task call as a Celery protocol-2 message that ``dlq requeue`` can run again.

    Callbacks, errbacks and chain links are dropped: the workflow already took its error path, and
    a redriven step runs alone.
    """
    headers = {
        "lang": "py",
        "task": task_name,
        "id": task_id,
        "root_id": request_headers.get("root_id") or task_id,
        "parent_id": request_headers.get("parent_id"),
        "group": None,
        "retries": 0,
        "eta": None,
        "expires": None,
        "timelimit": [None, None],
        "argsrepr": None,
        "kwargsrepr": None,
        "origin": socket.gethostname(),
        "ignore_result": False,
    }
    for key, value in request_headers.items():
        if key.startswith("x_") and key not in RELAYBUS_DLQ_HEADERS:
            headers[key] = value
    headers.update(reason_headers(reason=reason, error=error, attempts=attempts, original_queue=original_queue,
                                  redactor=runtime_config(app).redactor))
    body = json.dumps(
        [list(args), kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}],
        default=str,
    )
    return publish_dead_letter(
        app,
        body=body,
        content_type="application/json",
        content_encoding="utf-8",
        headers=headers,
        original_queue=original_queue,
        priority=priority,
        correlation_id=task_id,  # Celery's convention: the AMQP correlation id is the task id
    )


#: What a dead-lettered task's error carries back from the pool child to the worker's main process, which puts it
#: before the exception Celery's ``task-failed`` event shows (Flower's "exception"): an attribute, for an error
#: that pickles its ``__dict__``, and a note (PEP 678), which the traceback Celery formats in the child keeps
#: whatever the error's own pickling (ours pickle their arguments only).
DEAD_LETTERED_ATTR = "relaybus_dead_lettered"
DEAD_LETTERED_PREFIX = "dead-lettered to "


def dead_lettered_text(dlq: str, reason: str) -> str:
    """``dead-lettered to <queue>: <reason>``: what Flower shows of a dead-lettered task, before its error."""
    return f"{DEAD_LETTERED_PREFIX}{dlq}: {reason}"


def mark_dead_lettered(error: BaseException | None, dlq: str, reason: str) -> None:
    if error is None:
        return
    text = dead_lettered_text(dlq, reason)
    with contextlib.suppress(AttributeError, TypeError):  # an error without a __dict__: Flower shows it as it is
        setattr(error, DEAD_LETTERED_ATTR, text)
        error.add_note(text)


def dead_lettered_of(error: BaseException | None, traceback_text: str | None) -> str | None:
    """``dead-lettered to <queue>: <reason>`` if the error (or the traceback formatted from it) carries it."""
    marked = getattr(error, DEAD_LETTERED_ATTR, None)
    if isinstance(marked, str):
        return marked
    notes = [line for line in (traceback_text or "").splitlines() if line.startswith(DEAD_LETTERED_PREFIX)]
    return notes[-1] if notes else None


def dead_letter_call(
    task: Any, request: Any, args: Any, kwargs: Any, *, reason: str, error: BaseException | None
) -> str:
    """:func:`dead_letter_task` for a call of an agent task as its request describes it (the pool child's
    request, or the worker main process's context of it): its queue, ids, attempts and priority."""
    info = request.delivery_info or {}
    dlq = dead_letter_task(
        task.app,
        task_name=task.name,
        task_id=request.id,
        args=list(args or ()),
        kwargs=dict(kwargs or {}),
        request_headers=request_headers(request),
        original_queue=original_queue_of(task, request),
        reason=reason,
        error=error,
        attempts=(request.retries or 0) + 1,
        priority=info.get("priority"),
    )
    mark_dead_lettered(error, dlq, reason)
    return dlq


def original_queue_of(task: Any, request: Any) -> str:
    """The queue an agent task's call came from (its agent's own queue when the delivery does not say)."""
    info = request.delivery_info or {}
    return str(info.get("routing_key") or f"{runtime_config(task.app).namespace}.{task.spec.name}")


def dead_letter_message(
    app: Celery,
    message: Any,
    *,
    original_queue: str,
    reason: str,
    error: BaseException | None,
    attempts: int,
    correlation_id: str | None,
) -> bool:
    """Dead-letter a raw broker message as it came, its headers plus the reason, then acknowledge it.

    If that copy cannot be published the message is rejected without requeue instead, and the queue's
    dead-letter exchange keeps it (without the reason headers). Returns whether the copy was published.
    """
    redactor = runtime_config(app).redactor
    headers = dict(message.headers or {})
    for shown in ("argsrepr", "kwargsrepr"):  # as another publisher made them: redacted before they are kept
        if isinstance(headers.get(shown), str):
            headers[shown] = redactor.redact_text(headers[shown])
    headers.update(reason_headers(reason=reason, error=error, attempts=attempts, original_queue=original_queue,
                                  redactor=redactor))
    try:
        publish_dead_letter(
            app,
            body=message.body,
            content_type=message.content_type or "application/octet-stream",
            content_encoding=message.content_encoding or "binary",
            headers=headers,
            original_queue=original_queue,
            priority=message.properties.get("priority"),
            correlation_id=correlation_id,
        )
    except Exception:
        logger.exception("could not dead-letter a message from %s with reason %s; rejecting it to the DLX",
                         original_queue, reason)
        message.reject(requeue=False)
        return False
    message.ack()
    return True


def body_size(body: Any) -> int:
    """The size in bytes of a raw message body, as the broker carried it (checked before decoding)."""
    if isinstance(body, bytes | bytearray | memoryview):
        return len(body)
    if isinstance(body, str):
        return len(body.encode("utf-8", errors="surrogatepass"))
    return 0  # already decoded by the transport (never the case for AMQP)


def oversize(app: Celery, body: Any, what: str) -> str | None:
    """``"<what> is N bytes, over the limit of L bytes"`` for a raw body over ``max_message_bytes``, else None.

    Both consumers check this before decoding anything, and refuse the message unread."""
    limit = runtime_config(app).max_message_bytes
    size = body_size(body)
    return f"{what} is {size} bytes, over the limit of {limit} bytes" if size > limit else None
