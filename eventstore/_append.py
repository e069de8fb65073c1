"""Appending to the event log: idempotent, optimistic concurrency, hash-chained (:class:`Appender`).

Append, in one write transaction (``BEGIN IMMEDIATE`` on SQLite, the events table locked in
EXCLUSIVE mode on PostgreSQL, so positions are handed out in commit order):

1. payload and metadata are redacted, size-bounded and serialised, once (before the transaction);
2. the head (version, hash) of every stream written is read in one query (or remembered, :mod:`_heads`);
3. ``expected_version`` is checked (``ConcurrencyError``);
4. positions are drawn, versions, ``recorded_at`` and the hash chain computed in Python;
5. one driver call writes the batch (``COPY`` on PostgreSQL, ``executemany`` on SQLite).

Event ids already stored are not written again: the first attempt assumes there are none (nearly
always true) and the unique constraint on ``event_id`` says otherwise; the store then looks them up
and returns their stored records.

On PostgreSQL with unkeyed links, a batch of up to eight events (a task's records, a saga's move) is handed to
the server's ``eventstore_append_v1`` instead (migration 0012, :mod:`_serverappend`): steps 2 to 5 run there, in
one statement that is its own transaction, one round trip instead of two.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypeVar

from sqlalchemy import ColumnElement, Connection, Select, String, any_, bindparam, func, literal_column, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import ARRAY

from relaybus.eventstore import _serverappend as server
from relaybus.eventstore._engine import ProcessLocalEngine, translate_errors
from relaybus.eventstore._gcpause import gc_paused
from relaybus.eventstore._heads import Head, HeadCache, LastPosition
from relaybus.eventstore._insert import insert_rows, start_append
from relaybus.eventstore._rows import recorded, select_events, to_events
from relaybus.eventstore.errors import ConcurrencyError, EventStoreError
from relaybus.eventstore.hashing import LINK_TAG, canonical_json, content_json_of, format_time, hmac_pads
from relaybus.eventstore.keys import UNKEYED, ChainKeys
from relaybus.eventstore.models import NewEvent, RecordedEvent, StoreConfig
from relaybus.eventstore.payloads import offload
from relaybus.eventstore.redaction import Redactor, fit
from relaybus.eventstore.schema import events
from relaybus.eventstore.storable import needs_escaping, storable

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: What PostgreSQL answers when a statement this connection prepared is not on the server it reaches (26000:
#: invalid_sql_statement_name), or one of that name is there already (42P05: duplicate_prepared_statement).
LOST_PREPARED_STATES = frozenset({"26000", "42P05"})


class _LookUpStored(Exception):
    """Internal: an optimistic append must check for stored events before it can decide."""


class _Prepared(NamedTuple):
    """An event ready to write: its fields (redacted, bounded) and its payload and metadata as JSON."""

    fields: dict[str, Any]
    payload_json: str
    metadata_json: str


class Appender:
    """The write side of :class:`~eventstore.store.EventStore` (which delegates its ``append*`` here)."""

    def __init__(
        self,
        engine: ProcessLocalEngine,
        config: StoreConfig,
        redactor: Redactor,
        chain_keys: ChainKeys | None,
        put_payload: Callable[[Any], Any],
    ) -> None:
        self.config = config
        self._engine = engine
        self._redactor = redactor
        self._link = linker(chain_keys)
        self._link_prefix = f"{LINK_TAG} {self._link[0]} "
        # The server-side append (migration 0012): unkeyed PostgreSQL only; None until asked (server.available), and
        # asked again from _server_asked_at + server.ASK_AGAIN_S while the database lacks it (a rolling upgrade).
        self._server: bool | None = None if engine.dialect == "postgresql" and chain_keys is None else False
        self._server_asked_at = -math.inf
        self._put_payload = put_payload
        self._heads = HeadCache()
        self._last = LastPosition()
        self._guessing = engine.dialect == "postgresql"
        #: Whether statements are prepared (_insert.PREPARE_NOTE): off for good once the server lost one.
        self.prepare_sql = config.postgres_prepare

    def append(self, events_: Sequence[NewEvent], *, expected_version: int | None = None) -> list[RecordedEvent]:
        """Record ``events_`` in one transaction; returns their records, in the order given.

        Events whose ``event_id`` is already stored are not written again: their stored record is
        returned. With ``expected_version`` (all events of one stream), raises
        :class:`ConcurrencyError` unless the stream is at that version; without it, events go to
        the end of their streams.
        """
        batch = list(events_)
        if not batch:
            return []
        if expected_version is not None and len({e.stream_id for e in batch}) != 1:
            raise ValueError("expected_version needs every event to be of one stream")
        with gc_paused():  # hundreds of acyclic dicts and records per batch (see _gcpause)
            return self.unprepared_if_lost(lambda: self._append_prepared(batch, expected_version))

    def _append_prepared(self, batch: list[NewEvent], expected_version: int | None) -> list[RecordedEvent]:
        prepared = [self._prepare(event) for event in batch]
        with translate_errors():
            try:
                guessed = self._guess(prepared, expected_version)
                if guessed is not None:
                    try:
                        return self._append_guessed(prepared, *guessed)
                    except sa_exc.IntegrityError:
                        pass  # another writer appended meanwhile (or a stream was not new): read them
                in_server = self._append_in_server(prepared, expected_version)
                if in_server is not None:
                    return in_server
                return self._append(prepared, expected_version, careful=False)
            except (sa_exc.IntegrityError, _LookUpStored):
                pass  # some of these events are stored already (a redelivery): look them up
            for attempt in range(self.config.append_retries + 1):
                try:
                    return self._append(prepared, expected_version, careful=True)
                except sa_exc.IntegrityError:
                    # Another writer took the same version or event id between our read and our
                    # insert (only possible without the table lock): read the heads again.
                    if attempt == self.config.append_retries:
                        raise
        raise AssertionError("unreachable")

    def append_new(self, events_: Sequence[NewEvent]) -> int:
        """Record those of ``events_`` whose ``event_id`` is not stored yet, in one transaction; returns how many
        were written. For batches that likely repeat a stored event (a copy written in case its first writer
        died): the ids are looked up first, with one light query, and nothing stored is read back."""
        batch = list(events_)
        if not batch:
            return 0
        return self.unprepared_if_lost(lambda: self._append_new_retried(batch))

    def _append_new_retried(self, batch: list[NewEvent]) -> int:
        with translate_errors(), gc_paused():
            for attempt in range(self.config.append_retries + 1):
                try:
                    return self._append_new(batch)
                except sa_exc.IntegrityError:
                    # Another writer took a version or an event id meanwhile (only possible without the table
                    # lock): read the heads and ids again.
                    if attempt == self.config.append_retries:
                        raise
        raise AssertionError("unreachable")

    def unprepared_if_lost(self, append: Callable[[], T]) -> T:
        """``append()`` (or a stream's read, :meth:`EventStore.read_stream`); again, once, with prepared statements
        off for good (:attr:`prepare_sql`), if the server did not have a statement this connection prepared. That is a
        pooler handing each transaction to whichever server connection is free (PgBouncer in transaction mode before
        1.21): a prepared statement lives on one server connection. Nothing was written (the transaction failed); a
        warning names the setting that turns preparing off."""
        try:
            return append()
        except EventStoreError as error:
            state = getattr(getattr(error.__cause__, "orig", None), "sqlstate", None)
            if not self.prepare_sql or state not in LOST_PREPARED_STATES:
                raise
            self.prepare_sql = False
            logger.warning(
                "the event store's PostgreSQL server did not have a statement this connection prepared (%s); "
                "appends and reads go on without prepared statements. Behind a pooler in transaction mode (PgBouncer "
                "before 1.21), set RELAYBUS_EVENTSTORE_PREPARE=false (StoreConfig(postgres_prepare=False))", state,
            )
        return append()

    def _append_new(self, batch: list[NewEvent]) -> int:
        # Prepared before the transaction (redaction, serialisation): the lock is held for less.
        prepared: dict[str, _Prepared] = {}
        for event in batch:
            if event.event_id not in prepared:
                prepared[event.event_id] = self._prepare(event)
        outcome = self._in_server(list(prepared.values()), datetime.now(UTC))
        if outcome is not None:
            return len(outcome.written)
        streams = {p.fields["stream_id"] for p in prepared.values()}
        try:
            with self._engine.write() as conn:
                # Every head is read under the lock, none trusted from memory: records of a task go to its
                # workflow's stream, which the workflow's other processes write too, so a remembered head was
                # stale in about a third of appends (a collision, a rollback and a second transaction each).
                start = start_append(conn, streams, len(prepared), look_up=set(prepared), prepare=self.prepare_sql)
                fresh = [p for event_id, p in prepared.items() if event_id not in start.taken]
                if not fresh:
                    return 0
                heads = start.heads
                self._insert(conn, fresh, heads, start.positions[: len(fresh)], keep_records=False)
        except BaseException:
            self._heads.forget(streams)
            raise
        self._heads.remember({p.fields["stream_id"]: heads[p.fields["stream_id"]] for p in fresh})
        self._last.read(start.positions[: len(fresh)])
        return len(fresh)

    def append_with(
        self, checked: Sequence[NewEvent], expected_version: int, also: Sequence[NewEvent]
    ) -> list[RecordedEvent]:
        """Record ``checked`` (events of one stream, which must be at ``expected_version``) and those of ``also``
        (any streams) not stored yet, in one transaction; returns the records of ``checked``.

        Raises :class:`ConcurrencyError`, writing nothing, if the stream is at another version or holds one of
        ``checked`` already (a rival's decision). ``also`` is what :meth:`append_new` would write: records that
        may be stored already (a task's start records, copies of its ``task.sent``), looked up under the lock.
        """
        batch = list(checked)
        if not batch or len({e.stream_id for e in batch}) != 1:
            raise ValueError("append_with needs the checked events to be of one stream")
        with translate_errors(), gc_paused():
            mine = [self._prepare(event) for event in batch]
            others: dict[str, _Prepared] = {}
            for event in also:
                if event.event_id not in others:
                    others[event.event_id] = self._prepare(event)
        return self.unprepared_if_lost(lambda: self._append_with_translated(mine, expected_version, others))

    def _append_with_translated(
        self, mine: list[_Prepared], expected_version: int, others: dict[str, _Prepared]
    ) -> list[RecordedEvent]:
        with translate_errors(), gc_paused():
            return self._append_with(mine, expected_version, others)

    def _append_with(
        self, mine: list[_Prepared], expected_version: int, others: dict[str, _Prepared]
    ) -> list[RecordedEvent]:
        stream = mine[0].fields["stream_id"]
        ids = {p.fields["event_id"] for p in mine}
        recorded_at = datetime.now(UTC)
        batch = [*(p for i, p in others.items() if i not in ids), *mine]  # the task's records before their move
        outcome = self._in_server(batch, recorded_at, check=(stream, expected_version), must_be_new=frozenset(ids))
        if outcome is not None:
            if outcome.conflict is not None:
                raise ConcurrencyError(stream, expected_version, outcome.conflict)
            done = self._records_of(batch, outcome, recorded_at)
            return [done[p.fields["event_id"]] for p in mine]
        streams = {stream} | {p.fields["stream_id"] for p in others.values()}
        try:
            with self._engine.write() as conn:
                # Every head from the log, none remembered: the records' stream is their workflow's, which the
                # workflow's other processes write too, so a remembered head is mostly stale (a collision, a
                # rollback and a second transaction); read under the lock, in the start statement, it is exact.
                every = ids | others.keys()
                start = start_append(conn, streams, len(every), look_up=every, prepare=self.prepare_sql)
                heads = start.heads
                actual = heads.get(stream, (0, None))[0]
                if actual != expected_version or ids & start.taken:
                    raise ConcurrencyError(stream, expected_version, actual)
                # The task's records before the move they caused, in one commit.
                fresh = [*(p for i, p in others.items() if i not in start.taken and i not in ids), *mine]
                written = {p.fields["stream_id"] for p in fresh}
                stored = self._insert(conn, fresh, heads, start.positions[: len(fresh)])
        except BaseException:
            self._heads.forget(streams)
            raise
        self._heads.remember({s: heads[s] for s in written})
        self._last.read(start.positions[: len(fresh)])
        return [stored[p.fields["event_id"]] for p in mine]

    def _append_in_server(self, prepared: list[_Prepared], expected_version: int | None) -> list[RecordedEvent] | None:
        """:meth:`append` by :meth:`_in_server`; None when that is not for this store or batch."""
        unique: dict[str, _Prepared] = {}
        for p in prepared:
            unique.setdefault(p.fields["event_id"], p)  # an event twice in one batch: the first is written
        batch = list(unique.values())
        stream = batch[0].fields["stream_id"]
        recorded_at = datetime.now(UTC)
        check = None if expected_version is None else (stream, expected_version)
        outcome = self._in_server(batch, recorded_at, check=check)
        if outcome is None:
            return None
        if outcome.conflict is not None:
            assert expected_version is not None  # only a checked append conflicts
            raise ConcurrencyError(stream, expected_version, outcome.conflict)
        done = self._records_of(batch, outcome, recorded_at)
        if outcome.stored:  # a retry of an append that happened (a redelivery): the records as stored
            with self._engine.read() as conn:
                done.update(_stored(conn, {batch[i].fields["event_id"] for i in outcome.stored}))
        return [done[p.fields["event_id"]] for p in prepared]

    def _in_server(
        self,
        batch: list[_Prepared],
        recorded_at: datetime,
        *,
        check: tuple[str, int] | None = None,
        must_be_new: frozenset[str] = frozenset(),
    ) -> server.Outcome | None:
        """Append ``batch`` (distinct event ids) in one round trip, by the server's function (:mod:`_serverappend`);
        None, having written nothing, when this store or batch is not for it (the caller appends as before)."""
        if self._server is False or not server.fits(batch):
            return None
        if self._server is None and time.monotonic() - self._server_asked_at < server.ASK_AGAIN_S:
            return None  # not there when last asked
        streams = {p.fields["stream_id"] for p in batch}
        try:
            with self._engine.write() as conn:
                if self._server is None:
                    self._server_asked_at = time.monotonic()
                    if not server.available(conn):
                        logger.info("the event store's database has no %s (migration 0012) yet", server.FUNCTION)
                        return None
                    self._server = True
                outcome = server.append(
                    conn, batch, recorded_at, self._link_prefix, self._link[0], check=check, must_be_new=must_be_new,
                    prepare=self.prepare_sql,
                )
        except sa_exc.DBAPIError as error:
            self._heads.forget(streams)
            if getattr(error.orig, "sqlstate", None) not in server.MISSING_STATES:
                raise
            # Dropped under a running store (a downgrade): nothing was written. Asked for again later.
            self._server, self._server_asked_at = None, time.monotonic()
            logger.warning("the event store's %s is gone (a downgrade?): appends go on without it", server.FUNCTION)
            return None
        except BaseException:
            self._heads.forget(streams)  # the commit failed, or may have: the log says
            raise
        if outcome.written:
            heads: dict[str, Head] = {}
            for w in outcome.written:
                heads[batch[w.at].fields["stream_id"]] = (w.version, w.hash)
            self._heads.remember(heads)
            self._last.read([w.position for w in outcome.written])
        return outcome

    def _records_of(
        self, batch: list[_Prepared], outcome: server.Outcome, recorded_at: datetime
    ) -> dict[str, RecordedEvent]:
        """The records the server wrote, by event id."""
        records = {}
        key_id = self._link[0]
        for w in outcome.written:
            f = batch[w.at].fields
            values = {
                **f, "position": w.position, "version": w.version, "recorded_at": recorded_at,
                "prev_hash": w.prev_hash, "key_id": key_id, "hash": w.hash,
            }  # fmt: skip
            records[f["event_id"]] = recorded(values)
        return records

    def append_one(self, event: NewEvent, *, expected_version: int | None = None) -> RecordedEvent:
        return self.append([event], expected_version=expected_version)[0]

    def _prepare(self, event: NewEvent) -> _Prepared:
        fields = event.__dict__.copy()
        fields["payload"], payload_json = self._serialise(fields["payload"])
        fields["metadata"], metadata_json = self._serialise(fields["metadata"])
        return _Prepared(fields, payload_json, metadata_json)

    def _serialise(self, value: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """A payload or metadata as stored (redacted, escaped if need be, large parts offloaded, bounded), its JSON."""
        redact_to_json = self._redactor.redact_to_json
        try:
            value, text = redact_to_json(value)
        except ValueError:  # NaN or Infinity, which canonical JSON refuses
            value, text = redact_to_json(storable(value))
        if not text.isascii() and needs_escaping(text):  # a lone surrogate, which UTF-8 cannot encode
            value, text = redact_to_json(storable(value))
        inline = self.config.payload_inline_max_bytes
        if inline is not None and len(text) > inline:  # large parts by reference, not truncated
            stored = offload(value, inline, self._put_payload)
            if stored is not value:
                value, text = stored, canonical_json(stored)
        return fit(value, text, self.config.max_payload_bytes, self.config.preview_chars)

    def _append(self, prepared: list[_Prepared], expected_version: int | None, *, careful: bool) -> list[RecordedEvent]:
        """One attempt. ``careful=False`` assumes, as is nearly always true, that none of the events is
        stored yet and that the heads this writer remembers are current, and lets the unique constraints
        on ``event_id`` and ``(stream_id, version)`` say otherwise (no query but the insert);
        ``careful=True`` looks the events up and reads every head from the log."""
        streams = {p.fields["stream_id"] for p in prepared}
        written: set[str] = set()
        try:
            with self._engine.write() as conn:
                stored = _stored(conn, {p.fields["event_id"] for p in prepared}) if careful else {}
                fresh: dict[str, _Prepared] = {}
                for p in prepared:
                    if p.fields["event_id"] not in stored:
                        fresh.setdefault(p.fields["event_id"], p)
                if fresh:
                    written = {p.fields["stream_id"] for p in fresh.values()}
                    known = {} if careful else self._heads.known(written)
                    start = start_append(conn, written - known.keys(), len(fresh), prepare=self.prepare_sql)
                    heads = {**known, **start.heads}
                    if expected_version is not None:
                        stream = next(iter(written))
                        actual = heads.get(stream, (0, None))[0]
                        if actual != expected_version:
                            if not careful:
                                raise _LookUpStored  # a retry of an append that did happen is no conflict
                            raise ConcurrencyError(stream, expected_version, actual)
                    stored.update(self._insert(conn, list(fresh.values()), heads, start.positions))
        except BaseException:
            self._heads.forget(streams)  # the commit failed, or may have: the log says
            raise
        if written:
            self._heads.remember({stream: heads[stream] for stream in written})
            self._last.read(start.positions)
        return [stored[p.fields["event_id"]] for p in prepared]

    def _guess(
        self, prepared: list[_Prepared], expected_version: int | None
    ) -> tuple[dict[str, Head], list[int]] | None:
        """PostgreSQL, a writer appending alone: the heads (remembered, or new streams) and positions to try
        without reading them first (:class:`~_heads.LastPosition`)."""
        if not self._guessing:
            return None
        positions = self._last.guess(len(prepared))
        if positions is None:
            return None
        streams = {p.fields["stream_id"] for p in prepared}
        if len({p.fields["event_id"] for p in prepared}) != len(prepared):
            return None  # an event twice in one batch: the usual path keeps one
        heads = self._heads.known(streams)
        for stream in streams - heads.keys():
            heads[stream] = (0, None)  # guessed new: the unique (stream_id, version) says if it is not
        if expected_version is not None and heads[next(iter(streams))][0] != expected_version:
            return None  # the usual path tells a conflict from a retry of an append that happened
        return heads, positions

    def _append_guessed(
        self, prepared: list[_Prepared], heads: dict[str, Head], positions: list[int]
    ) -> list[RecordedEvent]:
        """PostgreSQL: the lock, the rows numbered and chained from the guess, the commit; one round trip for a
        small batch (a ``COPY`` cannot be pipelined: a larger one saves the server the start statement's reads).
        Raises ``IntegrityError`` (nothing written) when the guess was wrong."""
        streams = {p.fields["stream_id"] for p in prepared}
        try:
            with self._engine.write() as conn:
                stored = self._insert(conn, prepared, heads, positions, lock=True)
        except BaseException:
            self._heads.forget(streams)
            self._last.missed()
            raise
        self._heads.remember({stream: heads[stream] for stream in streams})
        self._last.committed(positions)
        return [stored[p.fields["event_id"]] for p in prepared]

    def _insert(
        self,
        conn: Connection,
        batch: list[_Prepared],
        heads: dict[str, Head],
        positions: list[int],
        *,
        keep_records: bool = True,
        lock: bool = False,
    ) -> dict[str, RecordedEvent]:
        """Number, chain and write ``batch``; ``heads`` (updated here) are those of its streams.
        Returns the records written by event id (none with ``keep_records=False``). The transaction's last
        statement: it may commit (:func:`insert_rows`). ``lock``: take the events lock first, in the same round
        trip (a guessed append, which read nothing before).

        The rows are made as the driver takes them (:func:`insert_rows`): on PostgreSQL the ``COPY``
        streams, so the server inserts the first rows while the next are hashed."""
        records: dict[str, RecordedEvent] = {}
        rows = self._rows(conn.dialect.name == "sqlite", batch, heads, positions, records, keep_records)
        # The append's last statement (see insert_rows).
        insert_rows(conn, rows, len(batch), commit=True, lock=lock, prepare=self.prepare_sql)
        return records

    def _rows(
        self,
        sqlite: bool,
        batch: list[_Prepared],
        heads: dict[str, Head],
        positions: list[int],
        records: dict[str, RecordedEvent],
        keep_records: bool,
    ) -> Iterator[tuple[Any, ...]]:
        """The rows of ``batch`` in :data:`_insert.COLUMNS` order, each numbered and chained as it is made."""
        recorded_at = datetime.now(UTC)
        recorded_at_text = format_time(recorded_at)
        recorded_at_bound = _sqlite_time_of(recorded_at_text) if sqlite else recorded_at
        key_id, link = self._link
        occurred_at: datetime | None = None
        occurred_at_text = ""
        occurred_at_bound: datetime | str = ""
        for position, p in zip(positions, batch, strict=True):
            f = p.fields
            stream = f["stream_id"]
            version, prev_hash = heads.get(stream, (0, None))
            version += 1
            if f["occurred_at"] is not occurred_at:  # a batch's events often share their time
                occurred_at = f["occurred_at"]
                occurred_at_text = format_time(occurred_at)
                # As stored: SQLite's text; PostgreSQL's binary COPY takes aware times only (naive is UTC).
                occurred_at_bound = _sqlite_time_of(occurred_at_text) if sqlite else _aware(occurred_at)
            digest = link(
                position,
                content_json_of(
                    f["agent"], f["attempt"], f["causation_id"], f["correlation_id"], f["event_id"], p.metadata_json,
                    occurred_at_text, p.payload_json, prev_hash, f["priority"], f["queue"], recorded_at_text,
                    f["schema_version"], stream, f["task_id"], f["type"], version, f["worker_host"],
                ),
            )  # fmt: skip
            heads[stream] = (version, digest)
            if keep_records:
                values = {
                    **f, "position": position, "version": version, "recorded_at": recorded_at,
                    "prev_hash": prev_hash, "key_id": key_id, "hash": digest,
                }  # fmt: skip
                records[f["event_id"]] = recorded(values)
            yield (
                position, f["event_id"], stream, version, f["type"], f["schema_version"],
                f["correlation_id"], f["causation_id"],
                occurred_at_bound, recorded_at_bound,
                f["task_id"], f["agent"], f["queue"], f["priority"], f["attempt"], f["worker_host"],
                p.payload_json, p.metadata_json, digest, prev_hash, key_id,
            )  # fmt: skip


def linker(keys: ChainKeys | None) -> tuple[str, Callable[[int, str], str]]:
    """(key id, the link's hash from its position and content) for new events (:mod:`eventstore.hashing`)."""
    key_id = keys.signing_id if keys is not None else UNKEYED
    prefix = f"{LINK_TAG} {key_id} "
    if keys is None:
        sha256 = hashlib.sha256

        def unkeyed(position: int, content: str) -> str:
            return sha256(f"{prefix}{position} {content}".encode()).hexdigest()

        return key_id, unkeyed
    inner_pad, outer_pad = hmac_pads(keys.signing_secret)

    def keyed(position: int, content: str) -> str:  # hashing.hmac_sha256_hex, inlined: once per event
        inner = inner_pad.copy()
        inner.update(f"{prefix}{position} {content}".encode())
        outer = outer_pad.copy()
        outer.update(inner.digest())
        return outer.hexdigest()

    return key_id, keyed


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _sqlite_time_of(text: str) -> str:
    """SQLite's stored form of a time (naive UTC, as ``_insert.time_binder``) from its canonical text."""
    return f"{text[:10]} {text[11:-1]}"


def _member_of(column: ColumnElement[str], values: set[str], dialect: str) -> ColumnElement[bool]:
    """``column IN values`` with one parameter however many values (short SQL, cached plans)."""
    if dialect == "postgresql":
        return column == any_(bindparam("members", sorted(values), type_=ARRAY(String())))
    members: Select[str] = select(literal_column("value", String())).select_from(
        func.json_each(bindparam("members", json.dumps(sorted(values))))
    )
    return column.in_(members)


def _stored(conn: Connection, event_ids: set[str]) -> dict[str, RecordedEvent]:
    dialect = conn.dialect.name
    query = select_events(dialect).where(_member_of(events.c.event_id, event_ids, dialect))
    return {event.event_id: event for event in to_events(conn.execute(query), dialect)}
