"""Tamper evidence: each event's hash covers its content and the hash of the previous event of its stream.

``hash = sha256(canonical_json({...content fields..., "prev_hash": prev}))``

Canonical JSON: keys sorted, no whitespace, UTF-8, no NaN/Infinity; datetimes as UTC ISO 8601 with
microseconds (``2024-05-01T12:00:00.000001Z``). The global position is not hashed: it belongs to
the log, not to the event (chains are per stream).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

HASHED_FIELDS: tuple[str, ...] = (
    "event_id",
    "stream_id",
    "version",
    "type",
    "schema_version",
    "correlation_id",
    "causation_id",
    "occurred_at",
    "recorded_at",
    "task_id",
    "agent",
    "queue",
    "priority",
    "attempt",
    "worker_host",
    "payload",
    "metadata",
)

_encoder = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical_json(value: Any) -> str:
    """The one serialisation that hashes and sizes are computed over."""
    return _encoder.encode(value)


def format_time(value: datetime) -> str:
    """A datetime as UTC ISO 8601 with microseconds; naive values are taken as UTC."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def event_hash(fields: Mapping[str, Any], prev_hash: str | None) -> str:
    """The hash of one event, from its content ``fields`` (a mapping holding :data:`HASHED_FIELDS`)."""
    content = {name: fields[name] for name in HASHED_FIELDS}
    content["occurred_at"] = format_time(content["occurred_at"])
    content["recorded_at"] = format_time(content["recorded_at"])
    content["prev_hash"] = prev_hash
    return sha256_hex(canonical_json(content))
