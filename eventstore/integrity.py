"""Verifying the hash chains: every event's hash, and every link to its stream's previous event."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict

from relaybus.eventstore.hashing import event_hash
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
