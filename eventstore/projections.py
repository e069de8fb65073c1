"""The workflow-status projection: one row per correlation id, kept up to date from the log.

The fold, :func:`apply`, is pure (``apply(state, event) -> state``, :mod:`eventstore.workflowfold`). The live
projection, a dry-run replay and a rebuild all use it, so they cannot disagree.

Exactly once, as in eventsourcing's ``Follower``: every batch of events is applied and the tracking
position advanced in the same transaction, with the tracking row locked, so a crash or a second
process catching up at the same time never applies an event twice or skips one.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, case, delete, exists, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from relaybus.eventstore import types as t
from relaybus.eventstore._engine import ProcessLocalEngine, translate_errors
from relaybus.eventstore._rows import decode_json, select_events, to_events
from relaybus.eventstore._stream import stream_rows
from relaybus.eventstore.schema import events, projection_tracking, workflow_status
from relaybus.eventstore.workflowfold import (
    OPENED_AS,
    EventHead,
    OpenWorkflow,
    WorkflowStatus,
    apply,
    fold,
    open_workflow,
    open_workflows_of,
)

__all__ = ["OpenWorkflow", "WorkflowStatus", "WorkflowStatusProjection", "apply", "fold", "open_workflows_of"]


# -- the live projection -------------------------------------------------------------------------------

_HEAD_COLUMNS = (
    events.c.position, events.c.correlation_id, events.c.type, events.c.task_id, events.c.occurred_at,
    # Only an opener's payload is read (its name): the fold needs no other.
    case((events.c.type.in_(list(OPENED_AS)), events.c.payload), else_=None).label("payload"),
)  # fmt: skip
_STATE_COLUMNS = tuple(c.name for c in workflow_status.c)

Progress = Callable[[int, int], None]
"""``progress(events_applied, head_position)``, called after every batch of a rebuild."""


class WorkflowStatusProjection:
    """The ``workflow_status`` table, fed from the log; ``catch_up()`` after appends, ``rebuild()`` any time."""

    name = "workflow_status"

    def __init__(self, engine: ProcessLocalEngine, *, batch_size: int = 5000) -> None:
        self._engine = engine
        self.batch_size = batch_size

    # -- reads
    def position(self) -> int:
        """The position of the last event applied (0 before any)."""
        with translate_errors(), self._engine.read() as conn:
            value = conn.execute(
                select(projection_tracking.c.position).where(projection_tracking.c.name == self.name)
            ).scalar()
        return int(value or 0)

    def get(self, correlation_id: str) -> WorkflowStatus | None:
        with translate_errors(), self._engine.read() as conn:
            return _load(conn, [correlation_id]).get(correlation_id)

    def workflows(
        self,
        *,
        status: str | None = None,
        idle_since: datetime | None = None,
        before_position: int | None = None,
        limit: int = 100,
        name: str | None = None,
        started_since: datetime | None = None,
        started_until: datetime | None = None,
    ) -> list[WorkflowStatus]:
        """Workflows, most recently active first; ``idle_since``: only those with no event after it;
        ``name``: a pipeline's or saga's name; ``started_since`` (inclusive) / ``started_until``
        (exclusive): when its first event was.

        Page by keyset, not OFFSET: the next page is ``before_position=`` the last row's ``last_position``
        (an index range on a log of millions, where an offset would count every row it skips).
        """
        query = select(workflow_status).order_by(workflow_status.c.last_position.desc()).limit(limit)
        if status is not None:
            query = query.where(workflow_status.c.status == status)
        if name is not None:
            query = query.where(workflow_status.c.name == name)
        if started_since is not None:
            query = query.where(workflow_status.c.first_event_at >= started_since)
        if started_until is not None:
            query = query.where(workflow_status.c.first_event_at < started_until)
        if before_position is not None:
            query = query.where(workflow_status.c.last_position < before_position)
        if idle_since is not None:
            query = query.where(workflow_status.c.last_event_at < idle_since)
        with translate_errors(), self._engine.read() as conn:
            return [_to_state(row) for row in conn.execute(query)]

    def names(self, limit: int = 500) -> list[str]:
        """The pipelines' and sagas' names seen, sorted (the name index answers it)."""
        query = select(workflow_status.c.name).where(workflow_status.c.name.is_not(None)).distinct()
        with translate_errors(), self._engine.read() as conn:
            return sorted(str(n) for n in conn.execute(query.order_by(workflow_status.c.name).limit(limit)).scalars())

    def status_counts(self) -> dict[str, int]:
        """How many workflows are in each status (for metrics; one pass over the status index)."""
        query = select(workflow_status.c.status, func.count()).group_by(workflow_status.c.status)
        with translate_errors(), self._engine.read() as conn:
            return {str(status): int(count) for status, count in conn.execute(query)}

    def open_workflows(
        self,
        *,
        opened_by: str,
        closed_by: Collection[str],
        since: datetime | None = None,
        after_position: int = 0,
        limit: int = 1000,
    ) -> list[OpenWorkflow]:
        """Workflows opened by an event of type ``opened_by`` (at ``since`` or later, after ``after_position``)
        with no event of a type in ``closed_by``, in the order they were opened, with their last event.

        Read from the log, not from this projection's table, so it is exact whether or not ``catch_up()``
        ran: two indexed queries (openers by type, then the last event of each by correlation id). Page
        on with ``after_position`` = the last one's ``opened_position``; a page may hold fewer than
        ``limit`` when one correlation id was opened twice.
        """
        closer = events.alias("closer")
        where = [events.c.type == opened_by]
        if after_position > 0:  # a bare "position > 0" has SQLite walk the log in position order
            where.append(events.c.position > after_position)
        if since is not None:
            where.append(events.c.occurred_at >= since)
        if closed_by:
            where.append(
                ~exists().where(closer.c.correlation_id == events.c.correlation_id, closer.c.type.in_(list(closed_by)))
            )
        dialect = self._engine.dialect
        with translate_errors(), self._engine.read() as conn:
            openers = to_events(
                conn.execute(select_events(dialect).where(*where).order_by(events.c.position).limit(limit)), dialect
            )
            ids = list({e.correlation_id for e in openers})
            last: dict[str, Any] = {}
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                newest = (
                    select(func.max(events.c.position))
                    .where(events.c.correlation_id.in_(chunk))
                    .group_by(events.c.correlation_id)
                )
                heads = select(
                    events.c.position, events.c.correlation_id, events.c.type, events.c.agent, events.c.occurred_at
                ).where(events.c.position.in_(newest))
                last.update((row.correlation_id, row) for row in conn.execute(heads))
        latest = {e.correlation_id: e for e in openers}  # a correlation id opened twice: its latest opener
        return [open_workflow(e, last[e.correlation_id]) for e in latest.values() if e.correlation_id in last]

    # -- writes
    def catch_up(self) -> int:
        """Apply every event recorded since the last call; returns how many were applied."""
        applied = 0
        with translate_errors():
            while True:
                count = self._apply_next_batch()
                applied += count
                if count < self.batch_size:
                    return applied

    def _apply_next_batch(self) -> int:
        with self._engine.write() as conn:
            position = _lock_tracking(conn, self.name)
            rows = conn.execute(
                select(*_HEAD_COLUMNS)
                .where(events.c.position > position)
                .order_by(events.c.position)
                .limit(self.batch_size)
            ).all()
            if not rows:
                return 0
            batch = [EventHead(*row) for row in rows]
            states = _load(conn, {e.correlation_id for e in batch})
            changed = fold(batch, states)
            _upsert(conn, changed.values())
            _set_tracking(conn, self.name, batch[-1].position)
            return len(batch)

    def rebuild(self, *, progress: Progress | None = None) -> int:
        """Recompute the table from the whole log; returns the number of events folded.

        The fold runs outside any write transaction (appenders are not held up), over one snapshot
        of the log read through a server-side cursor (:mod:`eventstore._stream`); then one short
        transaction swaps the table's rows and the tracking position; events recorded meanwhile
        are applied by the ``catch_up()`` that follows.
        """
        with translate_errors():
            with self._engine.read() as conn:
                head = int(
                    conn.execute(select(events.c.position).order_by(events.c.position.desc()).limit(1)).scalar() or 0
                )
            states: dict[str, WorkflowStatus] = {}
            done = 0
            with self._engine.read() as conn:
                to_time = _time_reader(conn.dialect.name)
                rows = stream_rows(conn, _REBUILD_SQL[conn.dialect.name], (head,), batch_size=self.batch_size)
                for position, correlation_id, type_, task_id, occurred_at, payload in rows:
                    opener = decode_json(payload) if isinstance(payload, str | bytes) else payload
                    event = EventHead(position, correlation_id, type_, task_id, to_time(occurred_at), opener)
                    if type_ not in t.NOT_WORKFLOW_TYPES:
                        states[correlation_id] = apply(states.get(correlation_id), event)
                    done += 1
                    if progress is not None and done % self.batch_size == 0:
                        progress(done, head)
            if progress is not None and done % self.batch_size:
                progress(done, head)
            with self._engine.write() as conn:
                _lock_tracking(conn, self.name)
                conn.execute(delete(workflow_status))
                _insert(conn, states.values())
                _set_tracking(conn, self.name, head)
        self.catch_up()
        return done


_OPENER_TYPES = ", ".join(f"'{name}'" for name in OPENED_AS)  # constants of this module, never input
_REBUILD_COLUMNS = "position, correlation_id, type, task_id, occurred_at, CASE WHEN type IN ({}) THEN {} END"
_REBUILD_SQL = {
    "sqlite": f"SELECT {_REBUILD_COLUMNS.format(_OPENER_TYPES, 'payload')} FROM events WHERE position <= ? "
    "ORDER BY position",
    "postgresql": f"SELECT {_REBUILD_COLUMNS.format(_OPENER_TYPES, 'payload::text')} FROM events "
    "WHERE position <= %s ORDER BY position",
}


def _time_reader(dialect: str) -> Callable[[Any], datetime]:
    """Stored ``occurred_at`` (driver value) -> aware UTC datetime, as :class:`UTCDateTime` reads it."""
    if dialect == "sqlite":
        return lambda text: datetime.fromisoformat(text + "+00:00")  # one call: UTC, as replace() made it
    return lambda value: value if value.tzinfo is UTC else value.astimezone(UTC)


def _to_state(row: Any) -> WorkflowStatus:
    return WorkflowStatus.model_construct(**dict(zip(_STATE_COLUMNS, row, strict=True)))


def _load(conn: Connection, correlation_ids: Iterable[str]) -> dict[str, WorkflowStatus]:
    ids = list(correlation_ids)
    states: dict[str, WorkflowStatus] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        for row in conn.execute(select(workflow_status).where(workflow_status.c.correlation_id.in_(chunk))):
            state = _to_state(row)
            states[state.correlation_id] = state
    return states


def _lock_tracking(conn: Connection, name: str) -> int:
    """The tracking position, with the row locked until commit (SQLite's write lock covers it)."""
    dialect = conn.dialect.name
    stmt = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(projection_tracking)
    conn.execute(stmt.values(name=name, position=0).on_conflict_do_nothing(index_elements=["name"]))
    query = select(projection_tracking.c.position).where(projection_tracking.c.name == name)
    if dialect == "postgresql":
        query = query.with_for_update()
    return int(conn.execute(query).scalar_one())


def _set_tracking(conn: Connection, name: str, position: int) -> None:
    conn.execute(update(projection_tracking).where(projection_tracking.c.name == name).values(position=position))


def _rows(states: Iterable[WorkflowStatus]) -> list[dict[str, Any]]:
    return [state.model_dump() for state in states]


def _insert(conn: Connection, states: Iterable[WorkflowStatus]) -> None:
    rows = _rows(states)
    if rows:
        conn.execute(insert(workflow_status), rows)


def _upsert(conn: Connection, states: Iterable[WorkflowStatus]) -> None:
    rows = _rows(states)
    if not rows:
        return
    dialect = conn.dialect.name
    stmt = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(workflow_status)
    keep = {c: stmt.excluded[c] for c in _STATE_COLUMNS if c != "correlation_id"}
    conn.execute(stmt.on_conflict_do_update(index_elements=["correlation_id"], set_=keep), rows)
