"""Verifying the log: every event's link, every stream's chain, the global positions, and a checkpoint.

:func:`verify_stored` reads the rows as the database holds them (the store streams them in position
order) and checks, per row:

- its stream's chain: versions 1, 2, 3… and ``prev_hash`` = the previous event's hash;
- its link (:mod:`eventstore.hashing`): a keyed link with the key its ``key_id`` names, an
  unkeyed or legacy link with SHA-256. The hash is recomputed over the payload and metadata text as
  stored (the canonical JSON the append hashed); only a row whose stored text does not give its hash
  is decoded and re-encoded canonically to decide, so an equivalent re-serialisation is not reported;
- no downgrade: once a link was written since 0005 (``key_id`` set), no legacy link follows it,
  and once a link was keyed, no unkeyed one follows (a rewrite without the key has to drop it);
- the global positions: strictly increasing and, since appends count them from the log
  (:mod:`eventstore._insert`), without gaps: 1, 2, 3… A gap is a deleted event. Legacy links on
  PostgreSQL are exempt: before 0005 positions came from a sequence, which rollbacks leave gaps in.

Then, given a checkpoint's :class:`LogState`, the log as it stood at the checkpoint's last position
(event count, stream count, the digest of every stream's head) must be exactly what was signed: a
truncated tail, a deleted stream or a rewritten history below the checkpoint do not match it.

What no check here can find: a rewrite by someone holding a chain key, and the removal of the newest
events written since the last checkpoint (the log's tail: nothing after it shows it missing).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from relaybus.eventstore.hashing import (
    LINK_TAG,
    canonical_json,
    content_json_of,
    format_time,
    formatted_content_json,
    hmac_sha256_hex,
    link_hash,
    sha256_hex,
)
from relaybus.eventstore.keys import UNKEYED, ChainKeys
from relaybus.eventstore.models import RecordedEvent
from relaybus.eventstore.payloads import PayloadFinding

BreakReason = Literal[
    "hash_mismatch",
    "prev_hash_mismatch",
    "version_gap",
    "unknown_key",
    "downgraded",
    "position_gap",
    "position_duplicate",
]

_SAYS: dict[str, str] = {
    "hash_mismatch": "its content no longer gives its hash (changed, or re-hashed without the chain key)",
    "prev_hash_mismatch": "it does not point at its predecessor's hash (an earlier event was changed or removed)",
    "version_gap": "a version is missing before it (an event of its stream was deleted)",
    "unknown_key": "it names a chain key that is not configured",
    "downgraded": "an older kind of link follows a newer one (re-chained without the key, or a writer lost its key)",
    "position_gap": "a position is missing before it (an event was deleted)",
    "position_duplicate": "its position is taken twice",
}


_Problem = tuple[BreakReason, str | None, str | None]
"""(reason, expected, actual)"""


class BrokenLink(BaseModel):
    """The first event (in position order) at which the log does not hold; ``reason`` says how."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    position: int
    event_id: str
    stream_id: str
    version: int
    reason: BreakReason
    expected: str | None
    actual: str | None

    def describe(self) -> str:
        expected = f" (expected {self.expected}, found {self.actual})" if self.reason.endswith(("gap", "key")) else ""
        return (
            f"position {self.position}, stream {self.stream_id!r} version {self.version} (event {self.event_id}): "
            f"{_SAYS[self.reason]}{expected}"
        )


class LogState(BaseModel):
    """What a checkpoint commits to: the log up to ``last_position``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    last_position: int
    event_count: int
    stream_count: int
    heads_sha256: str
    """SHA-256 over each stream's head ``[stream_id, version, hash]`` as canonical JSON, a line each, sorted."""


CheckpointReason = Literal["streams_missing", "events_missing", "events_added", "heads_mismatch"]


class CheckpointFinding(BaseModel):
    """How the log differs from a checkpoint (the first difference found, most telling first)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    reason: CheckpointReason
    expected: str
    actual: str

    def describe(self) -> str:
        says = {
            "streams_missing": "streams were deleted",
            "events_missing": "events were deleted (a truncated tail?)",
            "events_added": "events were inserted below its last position",
            "heads_mismatch": "the heads of the streams differ (history rewritten and re-chained)",
        }[self.reason]
        return f"the log does not match the checkpoint: {says}: checkpoint {self.expected}, log {self.actual}"


class VerifyReport(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    ok: bool
    events_checked: int
    streams_checked: int
    broken_links: int = 0
    first_broken: BrokenLink | None = None
    keyed_links: int = 0
    """Links checked with their HMAC key."""
    unkeyed_links: int = 0
    """Links written since 0005 without a key (``key_id = "sha256"``)."""
    legacy_links: int = 0
    """Links written before 0005 (``key_id`` NULL): plain SHA-256."""
    unauthenticated_links: int = 0
    """Keyed links that could not be checked: no chain key is configured (chain and positions were checked)."""
    key_ids: list[str] = []
    """The chain keys configured for this verification (ids only)."""
    state: LogState | None = None
    """The log as verified (what a checkpoint of it signs)."""
    checkpoint: CheckpointFinding | None = None
    """Set when a checkpoint was given and the log does not match it."""
    payloads_checked: int = 0
    """Payloads stored by reference whose digest was recomputed (:mod:`eventstore.payloads`)."""
    payload_problems: list[PayloadFinding] = []
    """Stored payloads changed in the database, and references in the log to payloads that are missing."""

    @property
    def keyed(self) -> bool:
        """Whether every link was checked with a key (the only check that holds against a database writer)."""
        return self.events_checked == self.keyed_links


def heads_digest(heads: dict[str, tuple[int, str]]) -> str:
    digest = hashlib.sha256()
    for stream in sorted(heads):
        version, hash_ = heads[stream]
        digest.update(canonical_json([stream, version, hash_]).encode())
        digest.update(b"\n")
    return digest.hexdigest()


STORED_COLUMNS: tuple[str, ...] = (
    "position", "event_id", "stream_id", "version", "type", "schema_version", "correlation_id", "causation_id",
    "occurred_at", "recorded_at", "task_id", "agent", "queue", "priority", "attempt", "worker_host",
    "payload", "metadata", "hash", "prev_hash", "key_id",
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


def _postgres_time_text(value: Any) -> str:
    # The store selects PostgreSQL's times already formatted canonically (POSTGRES_TIME_TEXT): kept as they are.
    if value.__class__ is str:
        return value
    return format_time(_as_time(value))


POSTGRES_TIME_TEXT = """to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""
"""A ``timestamptz`` column as its canonical text (:func:`format_time`), formatted by the server: a
``datetime`` per time read and formatted in Python cost verify a fifth of its time."""


def time_text_of(dialect: str) -> Callable[[Any], str]:
    """How a stored time, as read for :func:`verify_stored`, becomes its canonical text (:func:`format_time`)."""
    return _sqlite_time_text if dialect == "sqlite" else _postgres_time_text


def _decoded(f: dict[str, Any]) -> RecordedEvent:
    from relaybus.eventstore._rows import recorded

    values = dict(f)
    values["payload"] = json.loads(f["payload"])
    values["metadata"] = json.loads(f["metadata"])
    values["occurred_at"] = _as_time(f["occurred_at"])
    values["recorded_at"] = _as_time(f["recorded_at"])
    return recorded(values)


def expected_hash(key_id: str | None, secret: bytes | None, position: int, content: str) -> str:
    """The hash a link of this kind must have (:mod:`eventstore.hashing`)."""
    if key_id is None:
        return sha256_hex(content)
    return link_hash(secret, key_id, position, content)


class _Verifier:
    """One pass over the rows, in position order."""

    def __init__(self, dialect: str, keys: ChainKeys | None, expected: LogState | None) -> None:
        self.time_text = time_text_of(dialect)
        self.legacy_gaps_allowed = dialect != "sqlite"
        self.keys = keys
        self.expected = expected
        self.snapshot_at = expected.last_position if expected is not None else None
        self.snapshot: LogState | None = None
        self.heads: dict[str, tuple[int, str]] = {}
        self.checked = self.broken = 0
        self.first: BrokenLink | None = None
        self.links: dict[str | None, int] = {}
        """Links read, by key id."""
        self.hashers: dict[str | None, tuple[Callable[[int, str], str] | None, bytes | None, bool]] = {}
        self.last_position = 0
        self.seen_new = self.seen_keyed = False

    def _hasher(self, key_id: str | None) -> tuple[Callable[[int, str], str] | None, bytes | None, bool]:
        """(the link's hash from position and content, secret, known) for links of ``key_id``; ``None``
        when it cannot be checked (a keyed link with no keys, or with a key id not configured)."""
        if key_id is None:
            return (lambda _position, content: sha256_hex(content)), None, True
        if key_id == UNKEYED:
            prefix = f"{LINK_TAG} {UNKEYED} "
            sha256 = hashlib.sha256
            return (lambda position, content: sha256(f"{prefix}{position} {content}".encode()).hexdigest()), None, True
        secret = self.keys.secret(key_id) if self.keys is not None else None
        if secret is None:
            return None, None, self.keys is None
        keyed_prefix = f"{LINK_TAG} {key_id} "

        def keyed(position: int, content: str) -> str:
            return hmac_sha256_hex(secret, f"{keyed_prefix}{position} {content}".encode())

        return keyed, secret, True

    def row(self, row: Sequence[Any]) -> None:
        """One row of :data:`STORED_COLUMNS` (a tuple, read by position: this runs for every event)."""
        (
            position, event_id, stream, version, type_, schema_version, correlation_id, causation_id,
            occurred_at, recorded_at, task_id, agent, queue, priority, attempt, worker_host,
            payload, metadata, hash_, prev_hash, key_id,
        ) = row  # fmt: skip
        if self.snapshot_at is not None and position > self.snapshot_at and self.snapshot is None:
            self.snapshot = self.state()
        self.checked += 1
        links = self.links
        links[key_id] = links.get(key_id, 0) + 1
        hashers = self.hashers
        if key_id not in hashers:
            hashers[key_id] = self._hasher(key_id)
        hasher, secret, known = hashers[key_id]
        previous = self.heads.get(stream)
        expected_version, expected_prev = (previous[0] + 1, previous[1]) if previous else (1, None)
        problem: _Problem | None = None
        if version != expected_version:
            problem = ("version_gap", str(expected_version), str(version))
        elif prev_hash != expected_prev:
            problem = ("prev_hash_mismatch", expected_prev, prev_hash)
        elif not known:
            problem = ("unknown_key", ", ".join(self.keys.ids) if self.keys else "", key_id)
        elif hasher is not None:
            time_text = self.time_text
            content = content_json_of(
                agent, attempt, causation_id, correlation_id, event_id, metadata, time_text(occurred_at), payload,
                expected_prev, priority, queue, time_text(recorded_at), schema_version, stream, task_id, type_,
                version, worker_host,
            )  # fmt: skip
            if hasher(position, content) != hash_:
                problem = self._exact_verdict(dict(zip(STORED_COLUMNS, row, strict=True)), key_id, secret)
        if problem is None and (
            position != self.last_position + 1
            or (key_id is None and self.seen_new)
            or (key_id == UNKEYED and self.seen_keyed)
        ):
            problem = self._kind_and_position(position, key_id)
        if problem is not None:
            self.broken += 1
            if self.first is None:
                reason, expected, actual = problem
                self.first = BrokenLink(
                    position=position, event_id=event_id, stream_id=stream, version=version,
                    reason=reason, expected=expected, actual=actual,
                )  # fmt: skip
        if key_id is not None and not self.seen_keyed:
            self.seen_new = True
            if key_id != UNKEYED:
                self.seen_keyed = True
        # Continue from what is stored, so one edit is reported once, not for the whole stream.
        self.heads[stream] = (version, hash_)
        self.last_position = position

    def _exact_verdict(self, f: dict[str, Any], key_id: str | None, secret: bytes | None) -> _Problem | None:
        """The stored text does not give the hash: decide on the canonical form (the slow path)."""
        event = _decoded(f)
        content = formatted_content_json(
            event.__dict__, canonical_json(event.payload), canonical_json(event.metadata), event.prev_hash,
            format_time(event.occurred_at), format_time(event.recorded_at),
        )  # fmt: skip
        recomputed = expected_hash(key_id, secret, event.position, content)
        return None if recomputed == event.hash else ("hash_mismatch", recomputed, event.hash)

    def _kind_and_position(self, position: int, key_id: str | None) -> _Problem | None:
        if key_id is None and self.seen_new:
            return ("downgraded", "a link with a key id", "a legacy link")
        if key_id == UNKEYED and self.seen_keyed:
            return ("downgraded", "a keyed link", "an unkeyed link")
        last = self.last_position
        if position == last:
            return ("position_duplicate", str(last + 1), str(position))
        if position != last + 1 and not (key_id is None and self.legacy_gaps_allowed):
            return ("position_gap", str(last + 1), str(position))
        return None

    def state(self) -> LogState:
        """The log as read so far."""
        return LogState(
            last_position=self.last_position,
            event_count=self.checked,
            stream_count=len(self.heads),
            heads_sha256=heads_digest(self.heads),
        )

    def report(self) -> VerifyReport:
        final = self.state()
        keyed = sum(count for key_id, count in self.links.items() if key_id not in (None, UNKEYED))
        finding = None
        if self.expected is not None:
            finding = compare(self.expected, self.snapshot or final)
        return VerifyReport(
            ok=self.first is None and finding is None,
            events_checked=self.checked,
            streams_checked=len(self.heads),
            broken_links=self.broken,
            first_broken=self.first,
            keyed_links=keyed if self.keys is not None else 0,
            unkeyed_links=self.links.get(UNKEYED, 0),
            legacy_links=self.links.get(None, 0),
            unauthenticated_links=keyed if self.keys is None else 0,
            key_ids=list(self.keys.ids) if self.keys is not None else [],
            state=final,
            checkpoint=finding,
        )


def compare(expected: LogState, actual: LogState) -> CheckpointFinding | None:
    """How the log up to the checkpoint's last position (``actual``) differs from what it signed."""
    if actual.stream_count < expected.stream_count:
        return CheckpointFinding(
            reason="streams_missing", expected=f"{expected.stream_count} streams", actual=f"{actual.stream_count}"
        )
    if actual.event_count < expected.event_count or actual.last_position < expected.last_position:
        return CheckpointFinding(
            reason="events_missing",
            expected=f"{expected.event_count} events up to position {expected.last_position}",
            actual=f"{actual.event_count} up to position {actual.last_position}",
        )
    if actual.event_count > expected.event_count or actual.stream_count > expected.stream_count:
        return CheckpointFinding(
            reason="events_added",
            expected=f"{expected.event_count} events in {expected.stream_count} streams",
            actual=f"{actual.event_count} in {actual.stream_count}",
        )
    if actual.heads_sha256 != expected.heads_sha256:
        return CheckpointFinding(
            reason="heads_mismatch", expected=expected.heads_sha256[:16], actual=actual.heads_sha256[:16]
        )
    return None


def verify_stored(
    rows: Iterable[Sequence[Any]],
    dialect: str,
    *,
    keys: ChainKeys | None = None,
    expected: LogState | None = None,
) -> VerifyReport:
    """Verify rows of :data:`STORED_COLUMNS`, in position order; ``expected``: a checkpoint's state."""
    verifier = _Verifier(dialect, keys, expected)
    row_of = verifier.row
    for row in rows:
        row_of(row)
    return verifier.report()


def stored_columns_sql(dialect: str) -> str:
    """The select list of :data:`STORED_COLUMNS` for :func:`verify_stored`: payload and metadata as their
    stored text, and on PostgreSQL the times as canonical text (:data:`POSTGRES_TIME_TEXT`)."""
    if dialect != "postgresql":
        return ", ".join(STORED_COLUMNS)
    as_read = {"payload": "payload::text", "metadata": "metadata::text"}
    for name in ("occurred_at", "recorded_at"):
        as_read[name] = POSTGRES_TIME_TEXT.format(name)
    return ", ".join(as_read.get(c, c) for c in STORED_COLUMNS)
