"""The event as written (:class:`NewEvent`), as stored (:class:`RecordedEvent`), and the store's settings.

Both event models are frozen pydantic models with ``extra="forbid"``: they cross process
boundaries (Celery children write them, the CLI reads them).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import to_jsonable_python

from relaybus.eventstore import redaction
from relaybus.eventstore.ids import new_event_id
from relaybus.eventstore.storable import storable

DEFAULT_REDACT_KEYS: frozenset[str] = frozenset(redaction.DEFAULT_REDACT_KEYS)
"""Masked wherever they appear as a key (see :mod:`eventstore.redaction` for the matching rule)."""


def utc(value: datetime) -> datetime:
    """``value`` in UTC; a naive datetime is taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _now() -> datetime:
    return datetime.now(UTC)


class _EventFields(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: str = Field(default_factory=new_event_id, min_length=1, max_length=255)
    stream_id: str = Field(min_length=1, max_length=255)
    type: str = Field(min_length=1, max_length=255)
    schema_version: int = Field(default=1, ge=1)
    causation_id: str | None = Field(default=None, max_length=255)
    occurred_at: datetime = Field(default_factory=_now)
    task_id: str | None = Field(default=None, max_length=255)
    agent: str | None = Field(default=None, max_length=255)
    queue: str | None = Field(default=None, max_length=255)
    priority: int | None = None
    attempt: int | None = None
    worker_host: str | None = Field(default=None, max_length=255)
    payload: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("occurred_at")
    @classmethod
    def _occurred_at_in_utc(cls, value: datetime) -> datetime:
        return utc(value)

    @field_validator("payload", "metadata")
    @classmethod
    def _json_compatible(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Datetimes, UUIDs, tuples, models... become what they will be after a JSON round trip, so
        # the hash computed before writing is the hash of what is read back.
        try:
            plain: dict[str, Any] = to_jsonable_python(value)
        except ValueError:  # a key or value UTF-8 cannot encode: store its escaped form (eventstore.storable)
            plain = to_jsonable_python(storable(value))
        return plain


class NewEvent(_EventFields):
    """An event to append. ``correlation_id`` defaults to ``stream_id``."""

    correlation_id: str | None = Field(default=None, max_length=255)

    @model_validator(mode="before")
    @classmethod
    def _correlation_defaults_to_stream(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("correlation_id") is None and "stream_id" in data:
            data = {**data, "correlation_id": data["stream_id"]}
        return data


class RecordedEvent(_EventFields):
    """An event as stored: every :class:`NewEvent` field plus what the store assigned."""

    correlation_id: str
    position: int
    version: int
    recorded_at: datetime
    hash: str
    prev_hash: str | None = None
    key_id: str | None = None
    """The chain key that linked it (``"sha256"``: no key; ``None``: written before keyed chains)."""

    @field_validator("recorded_at")
    @classmethod
    def _recorded_at_in_utc(cls, value: datetime) -> datetime:
        return utc(value)


class StoreConfig(BaseModel):
    """How the store treats what it writes.

    ``redact_keys``: keys whose values are masked, recursively, in payload and metadata.
    ``max_payload_bytes``: payload (or metadata) larger than this, as compact JSON, is stored as
    ``{"_truncated": true, "size": N, "sha256": ..., "preview": ...}``.
    ``sqlite_synchronous``: ``NORMAL`` survives a crash of any process; ``FULL`` also a power cut.
    ``sqlite_cache_mib``: each SQLite connection's page cache, which keeps appends to a large log
    as fast as to an empty one (allocated as used, not up front).
    ``payload_inline_max_bytes``: a payload (or metadata) whose JSON is larger is kept in the
    ``payloads`` table, by reference (:mod:`eventstore.payloads`), instead of being truncated; what is
    still over ``max_payload_bytes`` after that is truncated as before. ``None``: off.
    ``chain_key_file``: the chain keys (:mod:`eventstore.keys`): new events are linked with the last
    one, and verified with any. ``None``: unkeyed links (plain SHA-256).
    ``postgres_prepare``: the append's statements are prepared once per PostgreSQL connection; off behind a
    pooler that does not keep prepared statements (PgBouncer in transaction mode before 1.21).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    redact_keys: frozenset[str] = DEFAULT_REDACT_KEYS
    #: Regular expressions masked wherever they match, besides the built-in value patterns.
    redact_patterns: tuple[str, ...] = ()
    redaction_mask: str = "[REDACTED]"
    max_payload_bytes: int = Field(default=65536, gt=0)
    preview_chars: int = Field(default=512, ge=0)
    sqlite_busy_timeout_s: float = Field(default=30.0, gt=0)
    sqlite_synchronous: str = Field(default="NORMAL", pattern="^(NORMAL|FULL|EXTRA)$")
    sqlite_cache_mib: int = Field(default=64, ge=1)
    lock_timeout_s: float = Field(default=30.0, gt=0)
    append_retries: int = Field(default=5, ge=0)
    chain_key_file: str | None = None
    payload_inline_max_bytes: int | None = Field(default=None, gt=0)
    postgres_prepare: bool = True
