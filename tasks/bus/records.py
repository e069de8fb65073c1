"""What the bus writes to the event log: ``event.published``, ``event.delivered``, ``event.dead_lettered``.

Ids make every record idempotent: a publication's record has the event's own id (so a delivery's
``causation_id`` points at it), a delivery's is derived from the event id and the handler task.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

from celery import Celery

from relaybus.eventstore.types import EVENT_DEAD_LETTERED as EVENT_DEAD_LETTERED
from relaybus.eventstore.types import EVENT_DELIVERED as EVENT_DELIVERED
from relaybus.eventstore.types import EVENT_PUBLISHED as EVENT_PUBLISHED
from relaybus.tasks.bus.events import EventEnvelope, derived_record_id
from relaybus.tasks.runtime import recording

# -- recording -------------------------------------------------------------------------------------


def record_publication(app: Celery, envelope: EventEnvelope, running: Any) -> None:
    from relaybus.eventstore import NewEvent

    recorder = recording.recorder_for(app)
    if recorder.enabled:
        spec = getattr(running, "spec", None)
        recorder.append(
            [
                NewEvent(
                    event_id=envelope.event_id,
                    stream_id=envelope.correlation_id,
                    correlation_id=envelope.correlation_id,
                    causation_id=envelope.causation_id,
                    type=EVENT_PUBLISHED,
                    occurred_at=envelope.occurred_at,
                    task_id=running.request.id if running is not None else None,
                    agent=spec.name if spec is not None else None,
                    priority=envelope.priority,
                    worker_host=socket.gethostname(),
                    payload={
                        "event_type": envelope.type,
                        "event_version": envelope.version,
                        "source": envelope.source,
                        "data": envelope.data,
                    },
                )
            ]
        )


def delivery_records(
    subscriber: str, handler_task: str
) -> Callable[[Any, tuple[Any, ...], dict[str, Any]], list[Any]]:
    """``event.delivered``, recorded by the task base in the same append as the handler's ``task.started``."""

    def records(request: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
        from relaybus.eventstore import NewEvent

        try:
            envelope = EventEnvelope.model_validate(kwargs.get("event"))
        except ValueError:
            return []  # the task base refuses the input next, and records that
        latency_ms = (time.time() - envelope.occurred_at.timestamp()) * 1000
        return [
            NewEvent(
                event_id=derived_record_id(envelope.event_id, handler_task, "delivered"),
                stream_id=envelope.correlation_id,
                correlation_id=envelope.correlation_id,
                causation_id=envelope.event_id,
                type=EVENT_DELIVERED,
                task_id=request.id,
                agent=subscriber,
                queue=(request.delivery_info or {}).get("routing_key"),
                priority=(request.delivery_info or {}).get("priority"),
                attempt=(request.retries or 0) + 1,
                worker_host=socket.gethostname(),
                payload={
                    "event_id": envelope.event_id,
                    "event_type": envelope.type,
                    "event_version": envelope.version,
                    "handler": handler_task,
                    "latency_ms": round(latency_ms, 3),
                },
            )
        ]

    return records


def record_dead_letter(app: Celery, envelope: EventEnvelope | None, queue: str, reason: str, error: str) -> None:
    """Record ``event.dead_lettered`` when the event's correlation id is known (else the DLQ has it alone)."""
    from relaybus.eventstore import NewEvent

    recorder = recording.recorder_for(app)
    if envelope is None or not recorder.enabled:
        return
    recorder.append(
        [
            NewEvent(
                event_id=derived_record_id(envelope.event_id, queue, "dead_lettered"),
                stream_id=envelope.correlation_id,
                correlation_id=envelope.correlation_id,
                causation_id=envelope.event_id,
                type=EVENT_DEAD_LETTERED,
                queue=queue,
                worker_host=socket.gethostname(),
                payload={
                    "event_id": envelope.event_id,
                    "event_type": envelope.type,
                    "event_version": envelope.version,
                    "reason": reason,
                    "error_message": error[:2000],
                },
            )
        ]
    )
