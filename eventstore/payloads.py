"""Large payloads by reference (a claim check): a value is stored once, and what travels names it.

A value whose canonical JSON is over a size (``payload_inline_max_bytes``) is stored in the ``payloads``
table, keyed by the SHA-256 of that JSON, and replaced, where it was, by a reference::

    {"$ref": "sha256:<64 hex digits>", "bytes": <size of the stored JSON>}

:class:`PayloadRef` is that reference as a model. :func:`offload` replaces what is too large in a value by
references, deepest first (a 20 MB field of a small input becomes a reference and its neighbours stay as
they are; a list of many small items that is too large as a whole is stored as a whole);
:func:`resolve` puts the stored values back. Both are pure: the storage is given as a function.

What the table guarantees (:class:`PayloadTable`):

* **stored once**: content-addressed, insert-if-absent; the same value stored twice is one row;
* **redacted before it is stored**, by the store's :class:`~eventstore.redaction.Redactor`, the same as
  every event: the digest is that of the redacted JSON, and whoever resolves the reference reads it
  redacted (a secret in a large payload reaches the next agent masked, as it is everywhere at rest);
* **covered by the hash chain**: the event or message that carries a reference carries the digest, and the
  event's hash covers it; :meth:`PayloadTable.read` recomputes the digest of what it reads
  (:class:`~eventstore.errors.PayloadAltered`, :class:`~eventstore.errors.PayloadMissing`), and
  ``EventStore.verify`` checks every stored payload and every reference the log holds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Connection, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from relaybus.eventstore._engine import ProcessLocalEngine, translate_errors
from relaybus.eventstore._stream import stream_rows
from relaybus.eventstore.errors import PayloadAltered, PayloadMissing
from relaybus.eventstore.hashing import canonical_json, sha256_hex
from relaybus.eventstore.redaction import Redactor
from relaybus.eventstore.schema import payloads

REF_KEY: Final = "$ref"
SIZE_KEY: Final = "bytes"
_PREFIX: Final = "sha256:"
#: How a reference begins in canonical JSON (keys sorted: ``$ref`` comes before ``bytes``).
REF_MARK: Final = '{"$ref":"sha256:'
_REF_IN_TEXT: Final = re.compile(r'\{"\$ref":"(sha256:[0-9a-f]{64})","bytes":\d+\}')


class PayloadRef(BaseModel):
    """A reference to a stored payload: its digest and the size of its stored JSON in bytes."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    ref: str = Field(alias=REF_KEY, pattern=r"^sha256:[0-9a-f]{64}$")
    size: int = Field(alias=SIZE_KEY, ge=0)

    @property
    def digest(self) -> str:
        return self.ref[len(_PREFIX) :]

    def as_json(self) -> dict[str, Any]:
        """The reference as it travels: ``{"$ref": "sha256:…", "bytes": N}``."""
        return {REF_KEY: self.ref, SIZE_KEY: self.size}


def is_ref(value: Any) -> bool:
    """Whether ``value`` is a reference as it travels (exactly the two keys, a well-formed digest)."""
    if not isinstance(value, dict) or len(value) != 2:
        return False
    ref, size = value.get(REF_KEY), value.get(SIZE_KEY)
    return (
        isinstance(ref, str) and len(ref) == 71 and ref.startswith(_PREFIX) and type(size) is int
        and all(c in "0123456789abcdef" for c in ref[7:])
    )  # fmt: skip


def refs_in(value: Any) -> list[str]:
    """Every reference (``sha256:…``) in ``value``, outermost first."""
    found: list[str] = []

    def walk(item: Any) -> None:
        if is_ref(item):
            found.append(item[REF_KEY])
        elif isinstance(item, dict):
            for child in item.values():
                walk(child)
        elif isinstance(item, list | tuple):
            for child in item:
                walk(child)

    walk(value)
    return found


#: Canonical JSON's separators and escaping, without sorting the keys: the same length, sooner.
_SIZER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def json_size(value: Any) -> int:
    """The size in bytes of ``value``'s canonical JSON (compact JSON where canonical JSON refuses it)."""
    try:
        text = _SIZER.encode(value)
    except (TypeError, ValueError):
        text = json.dumps(value, default=str, separators=(",", ":"))
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def offload(value: Any, max_inline: int, put: Callable[[Any], PayloadRef]) -> Any:
    """``value`` with what is over ``max_inline`` bytes (as JSON) stored by ``put`` and replaced by its
    reference; ``value`` itself (not a copy) when it fits. Children first: a container whose children are
    all small but that is too large as a whole is stored as a whole. A reference is never stored again."""
    return _offload(value, max_inline, put)[0]


def _offload(value: Any, limit: int, put: Callable[[Any], PayloadRef]) -> tuple[Any, int]:
    size = json_size(value)
    if size <= limit or is_ref(value):
        return value, size
    new: Any = value
    if isinstance(value, dict):
        items = {key: _offload(item, limit, put)[0] for key, item in value.items()}
        if any(items[key] is not item for key, item in value.items()):
            new = items
    elif isinstance(value, list | tuple):
        members = [_offload(item, limit, put)[0] for item in value]
        if any(a is not b for a, b in zip(members, value, strict=True)):
            new = members
    if new is not value:
        size = json_size(new)
        if size <= limit:
            return new, size
    ref = put(new).as_json()
    return ref, json_size(ref)


def resolve(value: Any, get: Callable[[PayloadRef], Any]) -> Any:
    """``value`` with every reference replaced by the stored value ``get`` reads (itself resolved too);
    ``value`` itself (not a copy) when it holds none. ``get`` raises for a missing or altered payload."""
    if is_ref(value):
        return resolve(get(PayloadRef.model_validate(value)), get)
    if isinstance(value, dict):
        items = {key: resolve(item, get) for key, item in value.items()}
        return items if any(items[key] is not item for key, item in value.items()) else value
    if isinstance(value, list | tuple):
        members = [resolve(item, get) for item in value]
        if any(a is not b for a, b in zip(members, value, strict=True)):
            return members if isinstance(value, list) else tuple(members)
    return value


class PayloadFinding(BaseModel):
    """A stored payload that does not hold (``verify``): changed in the database, or referenced and missing."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ref: str
    reason: str
    """``payload-altered`` or ``payload-missing``."""
    referenced_by: str | None = None
    """The event id of the first event (in position order) that carries the reference, when known."""

    def describe(self) -> str:
        says = "its text no longer gives its digest" if self.reason == "payload-altered" else "it is not stored"
        where = f" (referenced by event {self.referenced_by})" if self.referenced_by else ""
        return f"payload {self.ref}{where}: {says}"


class PayloadTable:
    """The ``payloads`` table of one event store: write once, read with the digest checked, verify all."""

    def __init__(self, engine: ProcessLocalEngine, redactor: Redactor) -> None:
        self._engine = engine
        self._redactor = redactor

    def put(self, value: Any) -> PayloadRef:
        """Store ``value`` (redacted) unless it is stored already; returns its reference."""
        text = canonical_json(self._redactor.redact(value))
        digest = sha256_hex(text)
        size = len(text) if text.isascii() else len(text.encode("utf-8"))
        with translate_errors(), self._engine.write() as conn:
            if conn.execute(select(payloads.c.digest).where(payloads.c.digest == digest)).first() is None:
                row = {"digest": digest, "size": size, "body": text, "stored_at": datetime.now(UTC)}
                conn.execute(_insert_if_absent(conn), row)
        return PayloadRef.model_validate({REF_KEY: _PREFIX + digest, SIZE_KEY: size})

    def get(self, ref: PayloadRef) -> Any:
        """The stored value of ``ref``; :class:`PayloadMissing` or :class:`PayloadAltered` naming it."""
        query = select(payloads.c.body).where(payloads.c.digest == ref.digest)
        with translate_errors(), self._engine.read() as conn:
            text = conn.execute(query).scalar()
        if text is None:
            raise PayloadMissing(ref.ref, "no payload is stored under this digest (deleted, or never stored)")
        actual = sha256_hex(text)
        if actual != ref.digest:
            raise PayloadAltered(ref.ref, f"the stored payload was changed: its text gives sha256:{actual}")
        return json.loads(text)

    def verify(self, referenced: dict[str, str], *, batch_size: int = 4) -> tuple[int, list[PayloadFinding]]:
        """``(payloads checked, findings)``: every stored payload's digest recomputed, and every reference
        in ``referenced`` (ref → the first event id carrying it) looked up.

        PostgreSQL hashes the bodies itself (``sha256``, 11+) and sends the digests only; on SQLite the bodies
        are read ``batch_size`` at a time (each may be tens of MB)."""
        findings: list[PayloadFinding] = []
        stored: set[str] = set()
        with translate_errors(), self._engine.read() as conn:
            if conn.dialect.name == "postgresql":
                sql = "SELECT digest, encode(sha256(convert_to(body, 'UTF8')), 'hex') FROM payloads"
                rows = ((digest, actual) for digest, actual in stream_rows(conn, sql, batch_size=5000))
            else:
                sql = "SELECT digest, body FROM payloads"
                rows = ((digest, sha256_hex(text)) for digest, text in stream_rows(conn, sql, batch_size=batch_size))
            for digest, actual in rows:
                stored.add(digest)
                if actual != digest:
                    ref = _PREFIX + digest
                    findings.append(PayloadFinding(ref=ref, reason="payload-altered",
                                                   referenced_by=referenced.get(ref)))
        for ref, event_id in referenced.items():
            if ref[len(_PREFIX) :] not in stored:
                findings.append(PayloadFinding(ref=ref, reason="payload-missing", referenced_by=event_id))
        return len(stored), findings


def refs_in_text(text: str) -> Iterable[str]:
    """The references in a canonical JSON text (an event's stored payload), cheaply: most hold none."""
    if REF_MARK not in text:
        return ()
    return _REF_IN_TEXT.findall(text)


def _insert_if_absent(conn: Connection) -> Any:
    if conn.dialect.name == "postgresql":
        return pg_insert(payloads).on_conflict_do_nothing(index_elements=["digest"])
    if conn.dialect.name == "sqlite":
        return sqlite_insert(payloads).on_conflict_do_nothing(index_elements=["digest"])
    return insert(payloads)
