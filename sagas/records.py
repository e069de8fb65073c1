"""How a saga event becomes a record of the event log (:class:`~eventstore.NewEvent`): its deterministic id
(:func:`~sagas.events.record_id`), stream, correlation and causation, the decision that took it, and a
``data`` too large for the log replaced by its size and hash."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from relaybus.eventstore import NewEvent
from relaybus.sagas.dispatches import task_id_of
from relaybus.sagas.events import EVENT_SCHEMA_VERSION, SagaEvent, record_id, to_record

#: Room left for the envelope (ids, step names, deadline) next to ``data`` under the store's payload limit.
ENVELOPE_BYTES = 1024


def data_limit(max_payload_bytes: int) -> int:
    """The most a saga event's ``data`` (or a saga's input) may take under the store's ``max_payload_bytes``."""
    return max(max_payload_bytes - ENVELOPE_BYTES, ENVELOPE_BYTES)


def new_event(
    event: SagaEvent, *, stream_id: str, correlation_id: str, causation_id: str | None, decision: str, limit: int
) -> NewEvent:
    """The record of ``event`` in ``stream_id``; ``decision`` is shared by the events of one decision."""
    type_, payload = to_record(event)
    return NewEvent(
        event_id=record_id(event),
        stream_id=stream_id,
        correlation_id=correlation_id,
        causation_id=causation_id,
        type=type_,
        schema_version=EVENT_SCHEMA_VERSION,
        task_id=task_id_of(event),
        attempt=getattr(event, "attempt", None),
        payload=bounded(payload, limit),
        metadata={"decision": decision},
    )


def bounded(payload: dict[str, Any], limit: int) -> dict[str, Any]:
    """A ``data`` over ``limit`` bytes is replaced by its size and hash, so the event stays readable
    (the store would otherwise truncate the whole payload). The run goes on: the next step was
    dispatched from memory with the full value; only a later re-dispatch sees the marker."""
    text = json.dumps(payload.get("data"), separators=(",", ":"), ensure_ascii=False, default=str)
    size = len(text.encode())
    if size <= limit:
        return payload
    digest = hashlib.sha256(text.encode()).hexdigest()
    return {**payload, "data": {"_too_large": True, "size": size, "sha256": digest}}
