"""The log's record of its own checks: ``log.verified`` (schema version 1).

``relaybus verify`` (and the console's "verify now") appends what it found to the stream
:data:`~eventstore.types.INTEGRITY_STREAM`, with the signed checkpoint it held the log against, if any;
the console shows the newest, and the newest held against a checkpoint. ``relaybus checkpoint`` writes
nothing to the log: a checkpoint is a file kept away from the database, and is known here once a verify
has held the log against it. Events rather than a table of their own, because:

* they last as the log lasts, are backed up and copied with it, and need no migration and no new
  grant (the app role appends and reads events already);
* they are chained like every record: a check's result cannot be edited or dropped afterwards
  without the next ``verify`` naming the broken link, and the newest is found by the type index;
* they are history, not state: every check ever run stays, with what it covered (the last position,
  the counts, the checkpoint it was held against).

They belong to no workflow: the workflow-status projection skips them
(:data:`~eventstore.types.NOT_WORKFLOW_TYPES`). Nothing secret goes in: chain key *ids*, counts,
positions, the first broken link's description, and a checkpoint's public key. ``relaybus verify
--no-record`` checks without writing.
"""

from __future__ import annotations

import socket
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from relaybus.eventstore import types as t
from relaybus.eventstore.checkpoints import Checkpoint
from relaybus.eventstore.integrity import VerifyReport
from relaybus.eventstore.models import NewEvent, RecordedEvent
from relaybus.eventstore.store import EventStore

SCHEMA_VERSION = 1


class Verification(BaseModel):
    """A ``log.verified`` record, read back."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    ok: bool
    events_checked: int
    streams_checked: int
    #: The log's last position when it was read (``None``: an empty log).
    last_position: int | None = None
    broken_links: int = 0
    first_broken: str | None = None
    keyed_links: int = 0
    unkeyed_links: int = 0
    legacy_links: int = 0
    unauthenticated_links: int = 0
    key_ids: list[str] = []
    #: Payloads stored by reference that were checked, and the first problems found with them.
    payloads_checked: int = 0
    payload_problems: list[str] = []
    #: The checkpoint it was held against (its created_at, last position, counts), if any.
    checkpoint: dict[str, Any] | None = None
    #: What a checkpoint held against found, or why its signature was not trusted.
    checkpoint_problem: str | None = None
    duration_s: float
    by: str
    host: str
    at: datetime | None = None
    position: int | None = None


def verified_event(
    report: VerifyReport,
    *,
    duration_s: float,
    by: str,
    checkpoint: Checkpoint | None = None,
    signature_problem: str | None = None,
) -> NewEvent:
    """The ``log.verified`` record of ``report`` (``by``: ``cli``, ``console``...)."""
    problem = signature_problem or (report.checkpoint.describe() if report.checkpoint is not None else None)
    payload = {
        "ok": report.ok and signature_problem is None,
        "events_checked": report.events_checked,
        "streams_checked": report.streams_checked,
        "last_position": report.state.last_position if report.state is not None else None,
        "broken_links": report.broken_links,
        "first_broken": report.first_broken.describe() if report.first_broken is not None else None,
        "keyed_links": report.keyed_links,
        "unkeyed_links": report.unkeyed_links,
        "legacy_links": report.legacy_links,
        "unauthenticated_links": report.unauthenticated_links,
        "key_ids": list(report.key_ids),
        "payloads_checked": report.payloads_checked,
        "payload_problems": [p.describe() for p in report.payload_problems[:20]],
        "checkpoint": _checkpoint_fields(checkpoint) if checkpoint is not None else None,
        "checkpoint_problem": problem,
        "duration_s": round(duration_s, 3),
        "by": by,
        "host": socket.gethostname(),
    }
    return NewEvent(stream_id=t.INTEGRITY_STREAM, type=t.LOG_VERIFIED, schema_version=SCHEMA_VERSION,
                    payload=payload)


def _checkpoint_fields(checkpoint: Checkpoint) -> dict[str, Any]:
    return {
        "created_at": checkpoint.created_at,
        "last_position": checkpoint.last_position,
        "event_count": checkpoint.event_count,
        "stream_count": checkpoint.stream_count,
        "public_key": checkpoint.public_key,
    }


def last_verification(store: EventStore) -> Verification | None:
    """The newest ``log.verified`` record, or ``None`` when the log was never verified (with a recording verify)."""
    found = store.find(type=t.LOG_VERIFIED, stream_id=t.INTEGRITY_STREAM, newest_first=True, limit=1)
    return _verification(found[0]) if found else None


def last_checkpoint_check(store: EventStore, look_back: int = 200) -> Verification | None:
    """The newest of the last ``look_back`` verifications that held the log against a signed checkpoint."""
    found = store.find(type=t.LOG_VERIFIED, stream_id=t.INTEGRITY_STREAM, newest_first=True, limit=look_back)
    for event in found:
        if event.payload.get("checkpoint"):
            return _verification(event)
    return None


def _verification(event: RecordedEvent) -> Verification:
    return Verification.model_validate({**event.payload, "at": event.occurred_at, "position": event.position})
