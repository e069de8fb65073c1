"""The event store: append (:mod:`eventstore._append`), read, and audit, on SQLite or PostgreSQL.

What eventsourcing asks of a recorder holds here: atomic batches, a unique (stream, version) for
optimistic concurrency, a total order that followers can read without missing late commits, tracking
written with the projection it tracks (:mod:`eventstore.projections`), and driver errors translated at
one boundary.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any, Unpack

from sqlalchemy import Engine, Select, func, select
from sqlalchemy.engine import URL

from relaybus.eventstore import _audit, integrity, queries, replay, usage
from relaybus.eventstore._append import Appender
from relaybus.eventstore._engine import ProcessLocalEngine, make_engine, normalize_url, translate_errors
from relaybus.eventstore._gcpause import gc_paused
from relaybus.eventstore._rows import converter, page_rows, read_page, read_stream_page, select_events, to_events
from relaybus.eventstore._stream import stream_rows
from relaybus.eventstore.approvals import ApprovalTable
from relaybus.eventstore.keys import ChainKeys
from relaybus.eventstore.models import NewEvent, RecordedEvent, StoreConfig
from relaybus.eventstore.payloads import REF_MARK, PayloadFinding, PayloadRef, PayloadTable, refs_in_text
from relaybus.eventstore.projections import WorkflowStatusProjection
from relaybus.eventstore.redaction import Redactor
from relaybus.eventstore.schema import events
from relaybus.eventstore.types import LLM_COMPLETED, TASK_DEFERRED

#: The most ``task.deferred`` events ``rate_limit_waits`` folds (the newest of a range are left out beyond it).
RATE_LIMIT_EVENTS = 100_000


class EventStore:
    """An append-only event log on SQLite or PostgreSQL. Build it with :func:`open_store`."""

    def __init__(
        self, engine: Engine, config: StoreConfig | None = None, *, chain_keys: ChainKeys | None = None
    ) -> None:
        self.config = config or StoreConfig()
        if chain_keys is None and self.config.chain_key_file is not None:
            chain_keys = ChainKeys.from_file(self.config.chain_key_file)
        self.chain_keys = chain_keys
        """The keys new links are made with (the last one) and verified with; ``None``: unkeyed links."""
        self._engine = ProcessLocalEngine(engine, keep_writers=True)
        self._redactor = Redactor(self.config.redact_keys, self.config.redaction_mask, self.config.redact_patterns)
        self.projection = WorkflowStatusProjection(self._engine)
        self.payloads = PayloadTable(self._engine, self._redactor)
        """Large values by reference (:mod:`eventstore.payloads`)."""
        self._appender = Appender(self._engine, self.config, self._redactor, chain_keys, self.payloads.put)
        #: Requests for a person's approval (``eventstore.approvals``).
        self.approvals = ApprovalTable(self._engine, self._redactor)

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for this process), for operators and tests."""
        return self._engine.get()

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._engine.dialect

    def close(self) -> None:
        self._engine.dispose()

    # -- writing -----------------------------------------------------------------------------------

    def append(self, events_: Sequence[NewEvent], *, expected_version: int | None = None) -> list[RecordedEvent]:
        """Record ``events_`` in one transaction; returns their records, in the order given.

        Events whose ``event_id`` is already stored are not written again: their stored record is
        returned. With ``expected_version`` (all events of one stream), raises
        :class:`ConcurrencyError` unless the stream is at that version; without it, events go to
        the end of their streams (:mod:`eventstore._append`).
        """
        return self._appender.append(events_, expected_version=expected_version)

    def append_new(self, events_: Sequence[NewEvent]) -> int:
        """Record those of ``events_`` whose ``event_id`` is not stored yet, in one transaction; returns how many
        were written. For batches that likely repeat a stored event (a copy written in case its first writer
        died): the ids are looked up first, with one light query, and nothing stored is read back."""
        return self._appender.append_new(events_)

    def append_with(
        self, checked: Sequence[NewEvent], expected_version: int, also: Sequence[NewEvent]
    ) -> list[RecordedEvent]:
        """Record ``checked`` (one stream, at ``expected_version``, else :class:`ConcurrencyError`) and the events
        of ``also`` not stored yet (as :meth:`append_new`), in one transaction; returns the records of ``checked``.
        For a move that must commit with the records of what caused it (a saga task's outcome, tasks.saga)."""
        return self._appender.append_with(checked, expected_version, also)

    def append_one(self, event: NewEvent, *, expected_version: int | None = None) -> RecordedEvent:
        return self.append([event], expected_version=expected_version)[0]

    # -- reading -----------------------------------------------------------------------------------

    def get(self, event_id: str) -> RecordedEvent | None:
        found = self._select(select_events(self.dialect).where(events.c.event_id == event_id))
        return found[0] if found else None

    def read_stream(self, stream_id: str, from_version: int = 1) -> list[RecordedEvent]:
        return self._appender.unprepared_if_lost(lambda: self._read_stream(stream_id, from_version))

    def _read_stream(self, stream_id: str, from_version: int) -> list[RecordedEvent]:
        with translate_errors(), self._engine.read() as conn:
            return read_stream_page(conn, stream_id, from_version, prepare=self._appender.prepare_sql)

    def stream_version(self, stream_id: str) -> int:
        """The stream's current version: 0 for a stream with no events."""
        query = select(func.max(events.c.version)).where(events.c.stream_id == stream_id)
        with translate_errors(), self._engine.read() as conn:
            return int(conn.execute(query).scalar() or 0)

    def last_position(self) -> int:
        query = select(events.c.position).order_by(events.c.position.desc()).limit(1)
        with translate_errors(), self._engine.read() as conn:
            return int(conn.execute(query).scalar() or 0)

    def read_all(self, after_position: int = 0, limit: int = 1000) -> list[RecordedEvent]:
        """Up to ``limit`` events with a position above ``after_position``, in position order."""
        with translate_errors(), self._engine.read() as conn:
            return read_page(conn, after_position, limit)

    def iter_all(self, after_position: int = 0, batch_size: int = 5000) -> Iterator[RecordedEvent]:
        """Every event after ``after_position``, read in batches (one short transaction each).

        Each row becomes a record as the caller reaches it: a caller that folds and drops records
        leaves the collector nothing to walk, where a page of thousands of live records cost a
        collection as long as reading them.
        """
        return itertools.chain.from_iterable(self._pages(after_position, batch_size))

    def _pages(self, after_position: int, batch_size: int) -> Iterator[Iterator[RecordedEvent]]:
        convert = converter(self.dialect)
        while True:
            with translate_errors(), self._engine.read() as conn:
                rows = page_rows(conn, after_position, batch_size)
            yield map(convert, rows)
            if len(rows) < batch_size:
                return
            after_position = rows[-1][0]

    def by_correlation(self, correlation_id: str) -> list[RecordedEvent]:
        """Every event of one correlation id, across streams, in position order."""
        query = select_events(self.dialect).where(events.c.correlation_id == correlation_id).order_by(events.c.position)
        return self._select(query)

    def _select(self, query: Select[Any]) -> list[RecordedEvent]:
        with translate_errors(), self._engine.read() as conn:
            return to_events(conn.execute(query), conn.dialect.name)

    # -- audit ---------------------------------------------------------------------------------------

    def timeline(self, correlation_id: str) -> queries.Timeline:
        return queries.timeline_of(correlation_id, self.by_correlation(correlation_id))

    def find(self, **filters: Unpack[_audit.FindFilters]) -> list[RecordedEvent]:
        """Events matching every given filter (see :class:`_audit.FindFilters`), in position order.

        Page forwards with ``after_position`` (the last position seen), backwards with
        ``newest_first=True`` and ``before_position`` (:func:`_audit.find`)."""
        with translate_errors(), self._engine.read() as conn:
            return _audit.find(conn, **filters)

    def agent_stats(self, since: datetime | None = None, until: datetime | None = None) -> list[queries.AgentStats]:
        """Per-agent counts, failures and p50/p95 run time and queue wait, over task events in range."""
        with translate_errors(), self._engine.read() as conn:
            return _audit.agent_stats(conn, since, until)

    def rate_limit_waits(
        self, since: datetime | None = None, until: datetime | None = None
    ) -> list[queries.RateLimitWaits]:
        """How often and how long tasks waited for a rate limit, per agent, provider and model (``task.deferred``)."""
        deferred = self.find(type=TASK_DEFERRED, since=since, until=until, limit=RATE_LIMIT_EVENTS)
        return queries.rate_limit_waits(deferred)

    def llm_usage(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        *,
        by: tuple[str, ...] = ("agent", "provider", "model"),
        correlation_id: str | None = None,
    ) -> list[usage.LLMUsage]:
        """Calls, tokens and cost of ``llm.completed`` records, grouped ``by`` (see :func:`usage.llm_usage`);
        ``correlation_id`` keeps one workflow's (what a budget folds)."""
        found = self.find(
            type=LLM_COMPLETED, correlation_id=correlation_id, since=since, until=until, limit=RATE_LIMIT_EVENTS
        )
        return usage.llm_usage(found, by)

    def verify(self, *, expected: integrity.LogState | None = None, batch_size: int = 5000) -> integrity.VerifyReport:
        """Check every link, chain and position, and the log against ``expected`` (a checkpoint's signed
        state, :mod:`eventstore.checkpoints`); the report names the first broken link, if any.

        One snapshot, read through a server-side cursor (:mod:`eventstore._stream`), hashes
        recomputed over the stored text (:func:`integrity.verify_stored`) with :attr:`chain_keys`.
        """
        dialect = self.dialect
        sql = f"SELECT {integrity.stored_columns_sql(dialect)} FROM events ORDER BY position"
        referenced: dict[str, str] = {}  # each reference to a stored payload, and the first event carrying it

        def noting_refs(rows: Iterator[Any]) -> Iterator[Any]:
            for row in rows:
                if REF_MARK in row[_PAYLOAD_COLUMN]:  # most payloads hold none: one substring test
                    for ref in refs_in_text(row[_PAYLOAD_COLUMN]):
                        referenced.setdefault(ref, row[_EVENT_ID_COLUMN])
                yield row

        with translate_errors(), self._engine.read() as conn, gc_paused():  # rows hold no cycles (see _gcpause)
            rows = stream_rows(conn, sql, batch_size=batch_size, prefetch=True)
            report = integrity.verify_stored(noting_refs(rows), dialect, keys=self.chain_keys, expected=expected)
        checked, findings = self.payloads.verify(referenced)
        return _with_payloads(report, checked, findings)

    def put_payload(self, value: Any) -> PayloadRef:
        """Store ``value`` by reference (redacted, once); see :mod:`eventstore.payloads`."""
        return self.payloads.put(value)

    def get_payload(self, ref: PayloadRef) -> Any:
        """The value stored under ``ref``; raises ``PayloadMissing`` or ``PayloadAltered`` naming it."""
        return self.payloads.get(ref)

    def dry_run(self, correlation_id: str) -> replay.DryRun:
        return replay.dry_run(correlation_id, self.by_correlation(correlation_id))

    def diff(self, correlation_a: str, correlation_b: str) -> replay.RunDiff:
        return replay.diff(
            correlation_a, self.by_correlation(correlation_a), correlation_b, self.by_correlation(correlation_b)
        )


_PAYLOAD_COLUMN = integrity.STORED_COLUMNS.index("payload")
_EVENT_ID_COLUMN = integrity.STORED_COLUMNS.index("event_id")


def _with_payloads(
    report: integrity.VerifyReport, checked: int, findings: list[PayloadFinding]
) -> integrity.VerifyReport:
    """The log's report with the stored payloads' check: a payload that does not hold fails it."""
    return report.model_copy(
        update={
            "ok": report.ok and not findings,
            "payloads_checked": checked,
            "payload_problems": findings,
        }
    )


def open_store(
    url: str | URL,
    *,
    config: StoreConfig | None = None,
    schema: str | None = None,
    create: bool | None = None,
    chain_keys: ChainKeys | None = None,
) -> EventStore:
    """Open the event store at ``url`` (``sqlite:///path`` or ``postgresql://...``).

    ``chain_keys``: the keys to link and verify with, instead of those of ``config.chain_key_file``.

    ``create``: bring the schema up to date first (runs the migrations; a no-op when current).
    Defaults to on for SQLite, the embedded default, and off for PostgreSQL, whose schema is
    managed with ``relaybus db upgrade``. ``schema`` (PostgreSQL): the schema holding the tables.
    """
    from relaybus.eventstore import migrations

    parsed = normalize_url(url)
    config = config or StoreConfig()
    engine = make_engine(parsed, schema=schema, config=config)
    if create is None:
        create = parsed.get_backend_name() == "sqlite"
    if create:
        migrations.upgrade(engine, schema=schema)
    return EventStore(engine, config, chain_keys=chain_keys)
