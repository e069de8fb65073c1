"""A worker consumer that dead-letters, with a reason, what Celery would otherwise drop or reject bare.

Celery acknowledges (drops) a message it cannot decode and rejects an unknown task without saying
why. Here each one goes to its agent's dead-letter queue with the reason in its headers, and the
worker goes on to the next message.
"""

from __future__ import annotations

from typing import Any

from celery.exceptions import NotRegistered
from celery.utils.log import get_logger
from celery.worker.consumer.consumer import Consumer
from kombu.exceptions import ContentDisallowed

from tasks.deadletter import publish_dead_letter, reason_headers

logger = get_logger(__name__)


class DeadLetteringConsumer(Consumer):  # type: ignore[misc]
    def _dead_letter(self, message: Any, reason: str, error: BaseException | None) -> None:
        info = message.delivery_info or {}
        queue = str(info.get("routing_key") or "unknown")
        headers = dict(message.headers or {})
        headers.update(reason_headers(reason=reason, error=error, attempts=0, original_queue=queue))
        try:
            publish_dead_letter(
                self.app,
                body=message.body,
                content_type=message.content_type or "application/octet-stream",
                content_encoding=message.content_encoding or "binary",
                headers=headers,
                original_queue=queue,
                priority=message.properties.get("priority"),
                correlation_id=message.properties.get("correlation_id"),
            )
        except Exception:
            # Could not publish the annotated copy: reject without requeue instead, and the
            # queue's dead-letter exchange keeps the message (without our reason headers).
            logger.exception("could not dead-letter message with reason %s; rejecting it to the DLX", reason)
            message.reject(requeue=False)
            return
        message.ack()
        logger.error("dead-lettered a message from %s: %s: %s", queue, reason, error)

    def on_decode_error(self, message: Any, exc: BaseException) -> None:
        error = ValueError(f"cannot decode the {message.content_type or 'untyped'} body: {exc}")
        self._dead_letter(message, "undecodable-message", error)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        self._dead_letter(message, "unknown-message-format", None)

    def on_unknown_task(self, body: Any, message: Any, exc: BaseException) -> None:
        name = (message.headers or {}).get("task", "?")
        self._dead_letter(message, "unknown-task", NotRegistered(name))
        task_id = (message.headers or {}).get("id")
        if task_id:
            self.app.backend.mark_as_failure(task_id, NotRegistered(name))

    def on_invalid_task(self, body: Any, message: Any, exc: BaseException) -> None:
        reason = "disallowed-content-type" if isinstance(exc, ContentDisallowed) else "invalid-task-message"
        self._dead_letter(message, reason, exc)
