"""Tamper evidence: each event's hash covers its content and the hash of the previous event of its stream.

Three kinds of link, told apart by the event's ``key_id`` column (migration 0005):

- ``key_id`` NULL, a *legacy* link (written before 0005): ``sha256(content)``;
- ``key_id = "sha256"``, an *unkeyed* link: ``sha256(link_message("sha256", position, content))``;
- any other ``key_id``, a *keyed* link: ``HMAC-SHA256(secret of key_id, link_message(key_id, position, content))``.

``content`` is ``canonical_json({...content fields..., "prev_hash": prev})``. Canonical JSON: keys
sorted, no whitespace, UTF-8, no NaN/Infinity; datetimes as UTC ISO 8601 with microseconds
(``2024-05-01T12:00:00.000001Z``). Since 0005 the link also covers the global position and the key
id, so events cannot be renumbered to close a gap, nor their key id changed, without the key. Only a
keyed link resists someone who can write the database: they can recompute any SHA-256.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import lru_cache
from json.encoder import c_make_encoder  # type: ignore[attr-defined]  # None without the C accelerator
from json.encoder import encode_basestring as _string  # the C encoder's, as used with ensure_ascii=False
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
_default = _encoder.default


def canonical_json(value: Any) -> str:
    """The one serialisation that hashes and sizes are computed over.

    ``_encoder.encode(value)``, calling the C encoder it would build directly (a fresh one per call, with its
    own circular-reference markers): ``encode`` first defines a Python fallback closure per call and reads the
    encoder's settings one by one, which cost an append about 0.5 us per payload (of 2-4)."""
    if c_make_encoder is None:  # no C accelerator (not CPython's usual build)
        return _encoder.encode(value)
    return "".join(c_make_encoder({}, _default, _string, None, ":", ",", True, False, False)(value, 0))


def format_time(value: datetime) -> str:
    """A datetime as UTC ISO 8601 with microseconds; naive values are taken as UTC."""
    if value.tzinfo is None:
        return value.isoformat(timespec="microseconds") + "Z"
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.isoformat(timespec="microseconds")[:-6] + "Z"  # "+00:00" -> "Z"


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


_KEY_ORDER = (
    "agent", "attempt", "causation_id", "correlation_id", "event_id", "metadata", "occurred_at", "payload",
    "prev_hash", "priority", "queue", "recorded_at", "schema_version", "stream_id", "task_id", "type", "version",
    "worker_host",
)  # fmt: skip
assert list(_KEY_ORDER) == sorted((*HASHED_FIELDS, "prev_hash")), "content_json must list every field, sorted"

_TEMPLATE = (
    '{"agent":%s,"attempt":%s,"causation_id":%s,"correlation_id":%s,"event_id":%s,"metadata":%s,'
    '"occurred_at":"%s","payload":%s,"prev_hash":%s,"priority":%s,"queue":%s,"recorded_at":"%s",'
    '"schema_version":%s,"stream_id":%s,"task_id":%s,"type":%s,"version":%s,"worker_host":%s}'
)


# The template in the four pieces around what only the log knows: metadata | payload | prev_hash | version (migration
# 0012's server-side append joins them around its own values; :func:`content_fragments`).
_FRAGMENT_A = '{"agent":%s,"attempt":%s,"causation_id":%s,"correlation_id":%s,"event_id":%s,"metadata":'
_FRAGMENT_B = ',"occurred_at":"%s","payload":'
_FRAGMENT_C = (
    ',"priority":%s,"queue":%s,"recorded_at":"%s","schema_version":%s,"stream_id":%s,"task_id":%s,"type":%s,"version":'
)
_FRAGMENT_D = ',"worker_host":%s}'
PREV_HASH_KEY = ',"prev_hash":'
assert _FRAGMENT_A + "%s" + _FRAGMENT_B + "%s" + PREV_HASH_KEY + "%s" + _FRAGMENT_C + "%s" + _FRAGMENT_D == _TEMPLATE


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    kind = value.__class__
    if kind is str:
        return _string(value)
    if kind is int:
        return int.__repr__(value)
    return canonical_json(value)


def content_json(
    fields: Mapping[str, Any],
    payload_json: str,
    metadata_json: str,
    prev_hash: str | None,
    recorded_at: str | None = None,
) -> str:
    """The canonical JSON of an event's content, from payload and metadata already serialised.

    Byte for byte ``canonical_json({...content..., "prev_hash": prev_hash})`` (the unit tests hold
    it to that), written out by hand because appends compute it for every event: the payload is
    serialised once for hashing and storage, and the scalars without the general encoder.
    ``recorded_at``: the formatted time, when the caller has it (one per batch).
    """
    return formatted_content_json(
        fields,
        payload_json,
        metadata_json,
        prev_hash,
        format_time(fields["occurred_at"]),
        recorded_at or format_time(fields["recorded_at"]),
    )


def formatted_content_json(
    fields: Mapping[str, Any],
    payload_json: str,
    metadata_json: str,
    prev_hash: str | None,
    occurred_at: str,
    recorded_at: str,
) -> str:
    """:func:`content_json` with both times already formatted (:func:`format_time`)."""
    f = fields
    return content_json_of(
        f["agent"], f["attempt"], f["causation_id"], f["correlation_id"], f["event_id"], metadata_json, occurred_at,
        payload_json, prev_hash, f["priority"], f["queue"], recorded_at, f["schema_version"], f["stream_id"],
        f["task_id"], f["type"], f["version"], f["worker_host"],
    )  # fmt: skip


def content_json_of(  # one argument a hashed field, in the template's (sorted) order
    agent: Any, attempt: Any, causation_id: Any, correlation_id: Any, event_id: Any, metadata_json: str,
    occurred_at: str, payload_json: str, prev_hash: str | None, priority: Any, queue: Any, recorded_at: str,
    schema_version: Any, stream_id: Any, task_id: Any, type_: Any, version: Any, worker_host: Any,
) -> str:  # fmt: skip
    """:func:`formatted_content_json` from the values themselves (verify reads rows as tuples, no mapping)."""
    s = _scalar
    return _TEMPLATE % (
        s(agent), s(attempt), s(causation_id), s(correlation_id), s(event_id), metadata_json, occurred_at,
        payload_json, s(prev_hash), s(priority), s(queue), recorded_at, s(schema_version), s(stream_id),
        s(task_id), s(type_), s(version), s(worker_host),
    )  # fmt: skip


def content_fragments(
    fields: Mapping[str, Any], occurred_at: str, recorded_at: str
) -> tuple[str, str, str, str]:
    """An event's content in four pieces, ``(a, b, c, d)``, such that its :func:`content_json` is
    ``a + metadata_json + b + payload_json + PREV_HASH_KEY + prev + c + str(version) + d`` (``prev`` the
    previous hash as a JSON string, or ``null``): for a writer that learns the version and previous hash only in
    the database (migration 0012). Times as :func:`format_time` gives them."""
    f = fields
    s = _scalar
    return (
        _FRAGMENT_A % (s(f["agent"]), s(f["attempt"]), s(f["causation_id"]), s(f["correlation_id"]), s(f["event_id"])),
        _FRAGMENT_B % occurred_at,
        _FRAGMENT_C % (
            s(f["priority"]), s(f["queue"]), recorded_at, s(f["schema_version"]), s(f["stream_id"]), s(f["task_id"]),
            s(f["type"]),
        ),
        _FRAGMENT_D % s(f["worker_host"]),
    )  # fmt: skip


def event_hash_of_json(
    fields: Mapping[str, Any],
    payload_json: str,
    metadata_json: str,
    prev_hash: str | None,
    recorded_at: str | None = None,
) -> str:
    return sha256_hex(content_json(fields, payload_json, metadata_json, prev_hash, recorded_at))


def event_hash(fields: Mapping[str, Any], prev_hash: str | None) -> str:
    """The hash of one event, from its content ``fields`` (a mapping holding :data:`HASHED_FIELDS`)."""
    return event_hash_of_json(fields, canonical_json(fields["payload"]), canonical_json(fields["metadata"]), prev_hash)


LINK_TAG = "relaybus.link.v2"


def link_message(key_id: str, position: int, content: str) -> bytes:
    """What a link hashes: unambiguous, as a key id holds no space (:func:`keys.check_key_id`)."""
    return f"{LINK_TAG} {key_id} {position} {content}".encode()


def link_hash(secret: bytes | None, key_id: str, position: int, content: str) -> str:
    """The hash of a link (keyed when ``secret`` is given), over :func:`link_message`."""
    message = link_message(key_id, position, content)
    if secret is None:
        return hashlib.sha256(message).hexdigest()
    return hmac_sha256_hex(secret, message)


@lru_cache(maxsize=64)
def hmac_pads(secret: bytes) -> tuple[hashlib._Hash, hashlib._Hash]:
    """SHA-256 states after the inner and outer pads of ``secret`` (RFC 2104), to copy for each message."""
    if len(secret) > 64:
        secret = hashlib.sha256(secret).digest()
    block = secret.ljust(64, b"\0")
    return hashlib.sha256(bytes(b ^ 0x36 for b in block)), hashlib.sha256(bytes(b ^ 0x5C for b in block))


def hmac_sha256_hex(secret: bytes, message: bytes) -> str:
    """``hmac.digest(secret, message, "sha256").hex()``, in a third of its time: OpenSSL's one-shot HMAC sets
    up a MAC context per call, which costs more than hashing a typical event; the pads are hashed once."""
    inner_pad, outer_pad = hmac_pads(secret)
    inner = inner_pad.copy()
    inner.update(message)
    outer = outer_pad.copy()
    outer.update(inner.digest())
    return outer.hexdigest()
