"""Verifying the hash chains: every event's hash, and every link to its stream's previous event.

Two ways in, with the same verdicts: :func:`verify_chain` over :class:`RecordedEvent` objects, and
:func:`verify_stored` over the stored rows as the database holds them, which the store uses: the
hash is recomputed over the payload and metadata text as stored (which is the canonical JSON the
append hashed), without decoding and re-encoding them, and only a row whose stored text does not
give its hash is decoded and re-encoded canonically to decide (so an equivalent re-serialisation is
not reported, exactly as before).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from relaybus.eventstore.hashing import event_hash, format_time, formatted_content_json, sha256_hex
from relaybus.eventstore.models import RecordedEvent

BreakReason = Literal["hash_mismatch", "prev_hash_mismatch", "version_gap"]


class BrokenLink(BaseModel):
    """The first event whose chain does not hold.

    ``hash_mismatch``: its content no longer produces its stored hash (edited in place);
    ``prev_hash_mismatch``: it does not point at its predecessor's hash (an event before it was
    edited and re-hashed, removed, or inserted); ``version_gap``: a version is missing before it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    position: int
    event_id: str
    stream_id: str
    version: int
    reason: BreakReason
    expected: str | None
    actual: str | None


class VerifyReport(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    ok: bool
    events_checked: int
    streams_checked: int
    broken_links: int = 0
    first_broken: BrokenLink | None = None


def _check(event: RecordedEvent, previous: tuple[int, str] | None) -> BrokenLink | None:
    expected_version, expected_prev = (previous[0] + 1, previous[1]) if previous else (1, None)

    def broken(reason: BreakReason, expected: str | None, actual: str | None) -> BrokenLink:
        return BrokenLink(
            position=event.position,
            event_id=event.event_id,
            stream_id=event.stream_id,
            version=event.version,
            reason=reason,
            expected=expected,
            actual=actual,
        )

    if event.version != expected_version:
        return broken("version_gap", str(expected_version), str(event.version))
    if event.prev_hash != expected_prev:
        return broken("prev_hash_mismatch", expected_prev, event.prev_hash)
    recomputed = event_hash(event.__dict__, event.prev_hash)
    if recomputed != event.hash:
        return broken("hash_mismatch", recomputed, event.hash)
    return None


def verify_chain(events_in_order: Iterable[RecordedEvent]) -> VerifyReport:
    """Check events given in position order; report the first broken link in that order."""
    heads: dict[str, tuple[int, str]] = {}
    checked = broken_links = 0
    first: BrokenLink | None = None
    for event in events_in_order:
        checked += 1
        problem = _check(event, heads.get(event.stream_id))
        if problem is not None:
            broken_links += 1
            first = first or problem
        # Continue from what is stored, so one edit is reported once, not for the whole stream.
        heads[event.stream_id] = (event.version, event.hash)
    return VerifyReport(
        ok=first is None,
        events_checked=checked,
        streams_checked=len(heads),
        broken_links=broken_links,
        first_broken=first,
    )


STORED_COLUMNS: tuple[str, ...] = (
    "position", "event_id", "stream_id", "version", "type", "schema_version", "correlation_id", "causation_id",
    "occurred_at", "recorded_at", "task_id", "agent", "queue", "priority", "attempt", "worker_host",
    "payload", "metadata", "hash", "prev_hash",
)  # fmt: skip
"""The columns :func:`verify_stored` reads, in this order (payload and metadata as text)."""


def _sqlite_time_text(value: Any) -> str:
    # SQLite holds "YYYY-MM-DD HH:MM:SS.ffffff" (naive UTC): the canonical form is a rearrangement.
    if isinstance(value, str) and len(value) == 26:
        return f"{value[:10]}T{value[11:]}Z"
    return format_time(_as_time(value))


def _as_time(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)


def time_text_of(dialect: str) -> Callable[[Any], str]:
    """How a stored time becomes its canonical text (:func:`format_time`) on ``dialect``."""
    return _sqlite_time_text if dialect == "sqlite" else lambda value: format_time(_as_time(value))


def _stored_hash(f: dict[str, Any], time_text: Callable[[Any], str]) -> str:
    return sha256_hex(
        formatted_content_json(
            f, f["payload"], f["metadata"], f["prev_hash"], time_text(f["occurred_at"]), time_text(f["recorded_at"])
        )
    )


def _decoded(f: dict[str, Any]) -> RecordedEvent:
    from relaybus.eventstore._rows import recorded

    values = dict(f)
    values["payload"] = json.loads(f["payload"])
    values["metadata"] = json.loads(f["metadata"])
    values["occurred_at"] = _as_time(f["occurred_at"])
    values["recorded_at"] = _as_time(f["recorded_at"])
    return recorded(values)


def verify_stored(rows: Iterable[Sequence[Any]], dialect: str) -> VerifyReport:
    """:func:`verify_chain` over rows of :data:`STORED_COLUMNS`, in position order."""
    time_text = time_text_of(dialect)
    names = STORED_COLUMNS
    heads: dict[str, tuple[int, str]] = {}
    checked = broken_links = 0
    first: BrokenLink | None = None
    for row in rows:
        checked += 1
        f = dict(zip(names, row, strict=True))
        stream = f["stream_id"]
        previous = heads.get(stream)
        expected_version, expected_prev = (previous[0] + 1, previous[1]) if previous else (1, None)
        if (
            f["version"] != expected_version
            or f["prev_hash"] != expected_prev
            or _stored_hash(f, time_text) != f["hash"]
        ):
            problem = _check(_decoded(f), previous)  # the slow, exact verdict, and what to report
            if problem is not None:
                broken_links += 1
                first = first or problem
        heads[stream] = (f["version"], f["hash"])
    return VerifyReport(
        ok=first is None,
        events_checked=checked,
        streams_checked=len(heads),
        broken_links=broken_links,
        first_broken=first,
    )
