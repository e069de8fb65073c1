"""Errors raised by the event store.

Driver errors (SQLAlchemy, sqlite3, psycopg) never leave the package: they are translated once,
at the store's boundary (:func:`eventstore._engine.translate_errors`), with ``raise ... from``.

::

    EventStoreError
     ├── ConcurrencyError        expected_version did not match the stream's version
     ├── StoreUnavailable        the database cannot be reached, is locked or timed out (transient)
     ├── AppendOnlyViolation     something tried to change or delete a recorded event
     ├── SchemaError             the tables are missing or older than this code (run the migrations)
     ├── StoreDiskError          the database cannot write to its disk (full, or failing)
     ├── UnstorableEvent         the database refuses a value of the record (an id it cannot hold)
     ├── ChainKeyError           a chain key file is missing or malformed (never names a secret)
     ├── CheckpointError         a checkpoint cannot be read, or no key to sign or check it
     ├── UnsafeAppRole           the role asked to be the app role would hold more than the app needs
     ├── MalformedEvent          a stored row does not read back as an event (names its position and id)
     └── PayloadError            a payload stored by reference cannot be read back as it was stored
          ├── PayloadMissing     no payload under the reference's digest
          └── PayloadAltered     the stored payload no longer gives its digest (changed in the database)

Retry policy: callers retry :class:`StoreUnavailable` with backoff; a :class:`ConcurrencyError`
means "reload the stream and decide again"; the others are permanent
(a payload error too: the same reference reads the same row again). A full or failing disk is
permanent for the caller too: retrying would only re-run the work that wants its record written, again and again;
an operator frees space and re-drives what was dead-lettered meanwhile.
"""

from __future__ import annotations

from typing import Any


class EventStoreError(Exception):
    """Root of every error the event store raises on purpose."""


class ConcurrencyError(EventStoreError):
    """Raised when an append's ``expected_version`` differs from the stream's current version.

    ``stream`` names the stream, ``expected`` is what the caller expected, ``actual`` what is stored.
    """

    def __init__(self, stream: str, expected: int, actual: int) -> None:
        self.stream = stream
        self.expected = expected
        self.actual = actual
        super().__init__(f"stream {stream!r} is at version {actual}, expected {expected}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.stream, self.expected, self.actual))


class StoreUnavailable(EventStoreError):
    """Raised when the database cannot be reached, is locked, or an operation timed out.

    Transient: the same call may succeed later.
    """


class AppendOnlyViolation(EventStoreError):
    """Raised when the database refuses an UPDATE or DELETE of a recorded event."""


class SchemaError(EventStoreError):
    """Raised when the store's tables are missing or not at the migration head."""


class StoreDiskError(EventStoreError):
    """Raised when the database cannot write to its disk: no space left (SQLite ``database or disk is full``,
    PostgreSQL 53100 disk_full) or a write that failed (SQLite ``disk I/O error``, which is also what a full
    disk gives when SQLite cannot grow its WAL index). Permanent for the caller (see the module docstring)."""


class UnstorableEvent(EventStoreError):
    """Raised when the database refuses a value of the record as it is (PostgreSQL class 22 data
    exceptions: a NUL in an id, a number out of range, ...). Retrying the same record cannot help."""


class ChainKeyError(EventStoreError):
    """Raised when the chain keys cannot be read or are malformed. The message never holds a secret."""


class CheckpointError(EventStoreError):
    """Raised when a checkpoint file cannot be read or parsed, or a key to sign or check it is missing or bad.

    A checkpoint that reads fine but does not match the log is no error: :class:`~.integrity.VerifyReport` says so.
    """


class UnsafeAppRole(EventStoreError):
    """Raised when the role named as the app role is a superuser or owns the log (:mod:`eventstore.roles`).

    ``role`` names it, ``reason`` says what it holds that the app role must not.
    """

    def __init__(self, role: str, reason: str) -> None:
        self.role = role
        self.reason = reason
        super().__init__(f"role {role!r} cannot be the app role: {reason}")


class MalformedEvent(EventStoreError):
    """Raised when a stored row cannot be read back as an event (JSON that does not parse or is no object, a
    time that is none, a value of the wrong type). ``position`` and ``event_id`` name the row, ``column`` the
    first column found wrong (``None``: the row as a whole). Permanent: the same row reads the same way."""

    def __init__(self, position: Any, event_id: Any, column: str | None, detail: str) -> None:
        self.position = position
        self.event_id = event_id
        self.column = column
        self.detail = detail
        where = f" column {column!r}:" if column else ""
        super().__init__(f"stored event at position {position!r} (event_id {event_id!r}) is malformed:{where} {detail}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.position, self.event_id, self.column, self.detail))


class PayloadError(EventStoreError):
    """Raised when a payload stored by reference (:mod:`eventstore.payloads`) cannot be read back as it was
    stored. ``ref`` is the reference (``sha256:<digest>``); ``reason`` a short word for dead letters."""

    reason = "payload-error"

    def __init__(self, ref: str, detail: str) -> None:
        self.ref = ref
        self.detail = detail
        super().__init__(f"payload {ref}: {detail}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.ref, self.detail))


class PayloadMissing(PayloadError):
    """Raised when no payload is stored under a reference's digest (deleted, or never stored)."""

    reason = "payload-missing"


class PayloadAltered(PayloadError):
    """Raised when a stored payload's text no longer gives the digest it is stored under."""

    reason = "payload-altered"
