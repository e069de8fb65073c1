from __future__ import annotations

from datetime import UTC, datetime

from relaybus.eventstore import RecordedEvent
from relaybus.eventstore._rows import recorded


def test_a_fast_built_record_equals_a_validated_one() -> None:
    values = {
        "position": 3, "event_id": "e", "stream_id": "s", "version": 2, "type": "t", "schema_version": 1,
        "correlation_id": "c", "causation_id": None, "occurred_at": datetime(2025, 1, 1, tzinfo=UTC),
        "recorded_at": datetime(2025, 1, 2, tzinfo=UTC), "task_id": None, "agent": "a", "queue": None,
        "priority": 1, "attempt": None, "worker_host": None, "payload": {"x": [1]}, "metadata": {},
        "hash": "h", "prev_hash": None, "key_id": None,
    }  # fmt: skip
    fast = recorded(dict(values))
    validated = RecordedEvent(**values)
    assert fast == validated
    assert fast.model_dump(mode="json") == validated.model_dump(mode="json")
    assert fast.model_fields_set == validated.model_fields_set
