"""Event ids: fresh time-ordered ones, and derived ones that are deterministic yet time-ordered.

Both are RFC 9562 UUIDv7-shaped: 48 bits of Unix milliseconds first, so the unique index on ``event_id``
grows at its right edge instead of at a random page (at millions of events a random id's insert reads a
page that is no longer in cache).

A *derived* id (:func:`derived_event_id`) is what a record gets when a redelivery must find it again: the
same parts give the same id in every process, so the store ignores the second copy. Its time is not the
local clock (a redelivery would get a new id) but one the parts' origin carries: a task's sent time, stamped
once on its message and inherited by its retries; an approval's or a saga's id when that is itself
time-ordered. Without such a time it is the plain uuid5 of the parts, as every derived id was before: a
message published by an older client, and every message in flight at an upgrade, keeps the ids its first
delivery recorded. De-duplication never depends on the clock being right: two hosts whose clocks disagree
only place ids further apart in the index; the time comes from the message, so every delivery reads the same.
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
import uuid
from collections.abc import Iterable
from typing import Any

_MAX_MS = (1 << 48) - 1
_LOW_62 = (1 << 62) - 1


def uuid7_of(ms: int, bits: int) -> str:
    """The UUIDv7 of ``ms`` (Unix milliseconds) whose other 74 bits are taken from ``bits`` (12 from bits
    64-75, 62 from bits 0-61: the places a uuid5 keeps its hash, leaving out its version and variant)."""
    value = (
        (ms & _MAX_MS) << 80
        | 0x7 << 76  # version 7
        | (bits >> 64 & 0xFFF) << 64
        | 0b10 << 62  # the RFC variant
        | bits & _LOW_62
    )
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def new_event_id() -> str:
    """A fresh time-ordered id: the local clock's milliseconds, then 74 random bits."""
    return uuid7_of(time.time_ns() // 1_000_000, int.from_bytes(os.urandom(16)))


def derived_event_id(namespace: uuid.UUID, parts: Iterable[object], at_ms: int | None) -> str:
    """The id of ``parts`` (joined with ``:``) in ``namespace``: deterministic, and time-ordered by ``at_ms``.

    ``at_ms`` is the origin's time (:func:`time_ms`, :func:`uuid7_ms`), never the clock at record time.
    With it, a UUIDv7 whose 74 non-time bits are the uuid5 hash of the parts; without it (None), the uuid5
    itself, the id this record had before ids were time-ordered. The two never collide (version 7 vs 5).
    """
    name = ":".join(map(str, parts))
    if at_ms is None:
        return str(uuid.uuid5(namespace, name))
    # uuid5's hash without the UUID object around it (a recorded task derives four ids, and building the UUID
    # cost more than the hash): uuid5 is the first 16 bytes of this SHA-1 with its version and variant bits set,
    # and uuid7_of takes none of those bits, so the id is the same (tests/unit/eventstore/test_derived_ids.py).
    digest = hashlib.sha1(namespace.bytes + name.encode("utf-8"), usedforsecurity=False).digest()
    return uuid7_of(at_ms, int.from_bytes(digest[:16]))


def time_ms(value: Any) -> int | None:
    """``value`` as Unix milliseconds if it is one (an int, or its decimal string, from 0 to 2**48 - 1),
    else None: a header that is missing, mangled or absurd gives the uuid5 id, never an error."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 15:
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_MS:
        return value
    return None


def uuid7_ms(value: Any) -> int | None:
    """The milliseconds of ``value`` if it is a UUIDv7 (RFC variant), else None."""
    if not isinstance(value, str) or len(value) not in (32, 36):
        return None
    if type(value) is str:  # a subclass may compare or hash as it likes: not remembered
        return _uuid7_ms_of(value)
    return _uuid7_ms_of.__wrapped__(value)


@functools.lru_cache(maxsize=1024)
def _uuid7_ms_of(value: str) -> int | None:
    """:func:`uuid7_ms` of a string of the right length, remembered: a recorded task asks for its id's time once
    per record it derives (four for a no-op task), and parsing the UUID each time cost more than the rest."""
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        return None
    if parsed.version != 7 or parsed.variant != uuid.RFC_4122:
        return None
    return parsed.int >> 80
