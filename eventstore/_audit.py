"""The audit queries behind ``EventStore.find`` and ``EventStore.agent_stats``: which index answers a filter.

Each takes an open connection (the store opens it and translates driver errors). The planners of both
databases need help on a log of millions of events: a glob or status over several types reads each type from
the type index (:func:`_first_of_each_type`), a narrow time range on PostgreSQL is read from the time index
(:func:`_narrow_time_range`), and the distinct types come from a loose index scan (:func:`known_types`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypedDict

from sqlalchemy import ColumnElement, Connection, String, false, func, select, text, type_coerce, union_all

from relaybus.eventstore import queries
from relaybus.eventstore._rows import select_events, to_events
from relaybus.eventstore.models import RecordedEvent
from relaybus.eventstore.schema import events


class FindFilters(TypedDict, total=False):
    """The filters of :func:`find` (and ``EventStore.find``), each optional; given ones must all match.

    ``type`` may be a glob (``task.*``); ``status`` a workflow status the types stand for
    (:func:`queries.matching_types`); ``since``/``until`` bound ``occurred_at``. Pages: forwards with
    ``after_position``, backwards with ``newest_first`` and ``before_position``; ``limit`` (100) per page."""

    type: str | None
    agent: str | None
    status: str | None
    correlation_id: str | None
    stream_id: str | None
    task_id: str | None
    since: datetime | None
    until: datetime | None
    after_position: int
    before_position: int | None
    limit: int
    newest_first: bool


def find(
    conn: Connection,
    *,
    type: str | None = None,
    agent: str | None = None,
    status: str | None = None,
    correlation_id: str | None = None,
    stream_id: str | None = None,
    task_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    after_position: int = 0,
    before_position: int | None = None,
    limit: int = 100,
    newest_first: bool = False,
) -> list[RecordedEvent]:
    """Events matching every given filter (see :func:`queries.find_conditions`), in position order."""
    types = None
    if queries.needs_type_list(type, status):
        types = queries.matching_types(type, status, known_types(conn))
    where = queries.find_conditions(
        agent=agent,
        correlation_id=correlation_id,
        stream_id=stream_id,
        task_id=task_id,
        since=since,
        until=until,
        type=None if types is not None else type,
    )
    # position > 0 is left out: SQLite would take it as a reason to walk the log in position order.
    if after_position > 0:
        where = where & (events.c.position > after_position)
    if before_position is not None:
        where = where & (events.c.position < before_position)
    order = events.c.position.desc() if newest_first else events.c.position
    if types is not None and len(types) != 1:
        where = where & _first_of_each_type(where, types, order, limit)
    elif types is not None:
        where = where & (events.c.type == types[0])
    if (since is not None or until is not None) and _narrow_time_range(conn, since, until):
        where = _first_in_time_range(where, newest_first, limit)
    query = select_events(conn.dialect.name).where(where).order_by(order).limit(limit)
    return to_events(conn.execute(query), conn.dialect.name)


def agent_stats(conn: Connection, since: datetime | None, until: datetime | None) -> list[queries.AgentStats]:
    """Per-agent counts, failures and p50/p95 run time and queue wait, over task events in range."""
    # Times as stored (SQLite: text) and parsed here, rows as plain tuples: a busy hour is thousands of rows.
    occurred_at = type_coerce(events.c.occurred_at, String()) if conn.dialect.name == "sqlite" else events.c.occurred_at
    columns = (
        events.c.position,
        events.c.type,
        events.c.task_id,
        events.c.agent,
        events.c.queue,
        events.c.attempt,
        occurred_at.label("occurred_at"),
    )
    types = queries.matching_types("task.*", None, known_types(conn))
    where = queries.find_conditions(since=since, until=until, types=types)
    # No ORDER BY: sorting by position in SQL has SQLite walk the whole log in position order (400 ms at
    # 1 M events for an empty window) instead of the (occurred_at, type) range; a window's rows sort here.
    query = select(*columns).where(where, events.c.task_id.is_not(None))
    rows = sorted(conn.execute(query).all(), key=lambda row: int(row[0]))
    parse = _sqlite_parsed_time if conn.dialect.name == "sqlite" else _utc
    return queries.stats_of_events(_TaskRow(*row[:6], parse(row[6])) for row in rows)


class _TaskRow(NamedTuple):
    """What :func:`queries.stats_of_events` reads of an event."""

    position: int
    type: str
    task_id: str | None
    agent: str | None
    queue: str | None
    attempt: int | None
    occurred_at: datetime


def _sqlite_parsed_time(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is UTC else value.astimezone(UTC)


def _first_of_each_type(
    where: ColumnElement[bool], types: Sequence[str], order: ColumnElement[Any], limit: int
) -> ColumnElement[bool]:
    """``position IN`` the first ``limit`` matches of each type, each read in order from the type index.

    For several types (a glob, a status): ``type IN (...) ORDER BY position LIMIT n`` would have the
    planner either read every row of those types and sort them, or walk the log in position order
    until n match, which is the whole log when they are rare; this reads at most n per type.
    """
    if not types:
        return false()
    branches = [
        select(events.c.position).where(where, events.c.type == name).order_by(order).limit(limit).subquery()
        for name in types
    ]
    return events.c.position.in_(union_all(*(select(branch.c.position) for branch in branches)))


NARROW_TIME_RANGE = 20_000
"""A time range with at most this many events is read whole and sorted by position (PostgreSQL): an
hour of a busy log (7,000 events in the scale bench at 5 M) is read in a few milliseconds."""


def _narrow_time_range(conn: Connection, since: datetime | None, until: datetime | None) -> bool:
    """PostgreSQL: whether ``[since, until)`` holds at most :data:`NARROW_TIME_RANGE` events.

    Times and positions rise together in a log, but the planner takes them as independent: for
    ``occurred_at`` in a range ``ORDER BY position LIMIT n`` it walks the log in position order
    expecting matches all along, and reads everything before the range (75 ms for an hour in the
    middle of 5 M events). A range known to be narrow is read from the time index instead. The
    count is capped, and read in time order so the time index answers it. SQLite plans this well.
    """
    if conn.dialect.name != "postgresql":
        return False
    in_range = queries.find_conditions(since=since, until=until)
    capped = select(events.c.occurred_at).where(in_range).order_by(events.c.occurred_at).limit(NARROW_TIME_RANGE + 1)
    return int(conn.execute(select(func.count()).select_from(capped.subquery())).scalar_one()) <= NARROW_TIME_RANGE


def _first_in_time_range(where: ColumnElement[bool], newest_first: bool, limit: int) -> ColumnElement[bool]:
    """``position IN`` the first ``limit`` positions matching ``where``, all matches read first (OFFSET 0
    keeps PostgreSQL from pushing the order and limit into the scan), then sorted."""
    matches = select(events.c.position).where(where).offset(0).subquery()
    order = matches.c.position.desc() if newest_first else matches.c.position
    return events.c.position.in_(select(matches.c.position).order_by(order).limit(limit))


_KNOWN_TYPES = text(
    "WITH RECURSIVE t(type) AS ("
    " SELECT (SELECT min(type) FROM events)"
    " UNION ALL"
    " SELECT (SELECT min(e.type) FROM events AS e WHERE e.type > t.type) FROM t WHERE t.type IS NOT NULL"
    ") SELECT type FROM t WHERE type IS NOT NULL"
)
"""Every distinct type, one probe of the type index per type (a loose index scan: a log holds a few dozen
types however many events, and neither database skips through an index for ``SELECT DISTINCT``)."""


def known_types(conn: Connection) -> list[str]:
    """Every event type in the log (for :func:`queries.find_conditions`)."""
    return [row[0] for row in conn.execute(_KNOWN_TYPES)]
