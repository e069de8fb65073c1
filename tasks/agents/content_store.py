"""The reference saga's side effects, as rows: drafts, reviews and publications, plus the fault table.

**Where.** In the event store's database (``RuntimeConfig.eventstore_url``), in tables of its own
(``saga_content_*``), through an engine of its own. Every process that runs saga steps already has
that URL, so there is no new setting to thread through the deployment, and a test that isolates its
event store (a PostgreSQL schema, a SQLite file) isolates these tables with it. A real application
keeps its side effects in its own database; this module stands in for it. It does not share the
event store's engine or tables: the log stays append-only and knows nothing of this.

**Idempotency.** Each effect is one row whose primary key is the idempotency key of the step that
made it: a redelivered or concurrent second execution hits the key and replays the first one's
data. Rows are never deleted: a compensation marks the row ``undone``, and if it finds no row
(the step's outcome was unknown) it writes an ``undone`` row under the step's key, so that a step
execution still stuck in a queue cannot apply the effect after the saga gave up on it.

**Faults** (for tests and the benchmark): ``(scope, name) -> remaining`` where ``scope`` is a saga id
or ``"*"``, ``name`` is ``step:<member>`` or ``compensation:<member>``, ``remaining`` is how many
more times to fire (``None``: always), ``error`` is ``transient`` (the task base retries it),
``permanent`` (dead-lettered at once) or ``None`` (only the delay: a slow step).
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    insert,
    select,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from relaybus.tasks.errors import PermanentError, TransientError
from relaybus.tasks.runtime.config import resources

ErrorKind = Literal["transient", "permanent"]
EVERY_SAGA = "*"

metadata = MetaData()

items = Table(
    "saga_content_items",
    metadata,
    Column("key", String(255), primary_key=True),  # the idempotency key of the step that made it
    Column("saga_id", String(255), nullable=False),
    Column("kind", String(32), nullable=False),  # draft | review | publication
    Column("status", String(16), nullable=False),  # live | undone
    Column("data", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("undone_at", DateTime(timezone=True), nullable=True),
    Column("undone_by", String(255), nullable=True),  # the compensation's idempotency key
    Index("ix_saga_content_items_saga", "saga_id"),
)

runs = Table(
    "saga_content_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("saga_id", String(255), nullable=False),
    Column("name", String(255), nullable=False),
    Column("key", String(255), nullable=False),
    Column("outcome", String(32), nullable=False),  # started | applied | replayed | fault | undone | nothing
    Column("pid", Integer, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Index("ix_saga_content_runs_saga", "saga_id"),
)

faults = Table(
    "saga_content_faults",
    metadata,
    Column("scope", String(255), primary_key=True),
    Column("name", String(255), primary_key=True),
    Column("remaining", Integer, nullable=True),
    Column("error", String(16), nullable=True),
    Column("delay_s", Float, nullable=False, default=0.0),
)


class InjectedOutage(TransientError):
    """Raised by a transient fault: the task base retries it with backoff."""


class InjectedFailure(PermanentError):
    """Raised by a permanent fault: dead-lettered at once, the saga records a clean failure."""


class AlreadyUndone(PermanentError):
    """Raised when a step finds its key already undone by a compensation: it must not apply it now."""


class Fault(NamedTuple):
    error: ErrorKind | None
    delay_s: float


def _now() -> datetime:
    return datetime.now(UTC)


def engine_for(url: str) -> Engine:
    """This process's engine on ``url``, with the tables created (once per process)."""
    engine: Engine = resources().get(f"content-store:{url}", lambda: _build(url))
    return engine


def _build(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.drivername in {"postgresql", "postgres"}:
        parsed = parsed.set(drivername="postgresql+psycopg")
    options: dict[str, Any] = {"pool_pre_ping": True}
    if parsed.get_backend_name() == "sqlite":
        options["connect_args"] = {"timeout": 30.0}  # shares the file with the event store's writers
    engine = create_engine(parsed, **options)
    for attempt in range(3):
        try:
            metadata.create_all(engine)
            break
        except sa_exc.IntegrityError:  # another process created them at the same moment (PostgreSQL)
            if attempt == 2:
                raise
    return engine


APP_PRIVILEGES: dict[str, tuple[str, ...]] = {
    "saga_content_items": ("SELECT", "INSERT", "UPDATE"),  # a compensation marks its row undone
    "saga_content_runs": ("SELECT", "INSERT"),
    "saga_content_faults": ("SELECT", "INSERT", "UPDATE", "DELETE"),  # test and demo fault injection
}
"""What a least-privileged app role (``relaybus db upgrade --app-role``) needs here; it cannot create tables."""


def grant_app_role(url: str, role: str) -> None:
    """Create the tables as the caller (the owner, PostgreSQL) and give ``role`` :data:`APP_PRIVILEGES`."""
    engine = _build(url)
    try:
        with engine.begin() as conn:
            for table, privileges in APP_PRIVILEGES.items():
                conn.exec_driver_sql(f'GRANT {", ".join(privileges)} ON {table} TO "{role}"')
            sequence = conn.exec_driver_sql("SELECT pg_get_serial_sequence('saga_content_runs', 'id')").scalar_one()
            conn.exec_driver_sql(f'GRANT USAGE ON SEQUENCE {sequence} TO "{role}"')
    finally:
        engine.dispose()


# -- faults ----------------------------------------------------------------------------------------


def set_fault(
    engine: Engine,
    name: str,
    *,
    saga_id: str = EVERY_SAGA,
    times: int | None = None,
    error: ErrorKind | None = "transient",
    delay_s: float = 0.0,
) -> None:
    """Make ``name`` fail (or pause ``delay_s``) the next ``times`` times it runs (``None``: always)."""
    clear_fault(engine, name, saga_id=saga_id)
    with engine.begin() as conn:
        conn.execute(insert(faults).values(scope=saga_id, name=name, remaining=times, error=error, delay_s=delay_s))


def clear_fault(engine: Engine, name: str, *, saga_id: str = EVERY_SAGA) -> None:
    with engine.begin() as conn:
        conn.execute(faults.delete().where(faults.c.scope == saga_id, faults.c.name == name))


def take_fault(engine: Engine, saga_id: str, name: str) -> Fault | None:
    """Consume one firing of the fault on ``name`` for this saga (or for every saga), if any."""
    for scope in (saga_id, EVERY_SAGA):
        where = (faults.c.scope == scope, faults.c.name == name)
        with engine.begin() as conn:
            counted = conn.execute(
                update(faults).where(*where, faults.c.remaining > 0).values(remaining=faults.c.remaining - 1)
            ).rowcount
            row = conn.execute(select(faults.c.error, faults.c.delay_s, faults.c.remaining).where(*where)).first()
        if row is not None and (counted or row.remaining is None):
            return Fault(row.error, float(row.delay_s or 0.0))
    return None


def inject(engine: Engine, saga_id: str, name: str, key: str) -> None:
    """Act on the fault on ``name``, if one fires: pause, then raise as configured."""
    fault = take_fault(engine, saga_id, name)
    if fault is None:
        return
    if fault.delay_s:
        time.sleep(fault.delay_s)
    if fault.error is None:
        return
    log_run(engine, saga_id, name, key, "fault")
    if fault.error == "permanent":
        raise InjectedFailure(f"injected permanent failure in {name}")
    raise InjectedOutage(f"injected transient failure in {name}")


# -- effects ---------------------------------------------------------------------------------------


def log_run(engine: Engine, saga_id: str, name: str, key: str, outcome: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(runs).values(saga_id=saga_id, name=name, key=key, outcome=outcome, pid=os.getpid(), at=_now())
        )


def find_item(engine: Engine, key: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(select(items).where(items.c.key == key)).mappings().first()
    return dict(row) if row is not None else None


def apply_once(
    engine: Engine, *, key: str, saga_id: str, kind: str, data: dict[str, Any]
) -> tuple[dict[str, Any], bool]:
    """Write the effect under ``key`` unless it is there already. Returns the stored data (the first
    execution's) and whether this call wrote it; :class:`AlreadyUndone` if a compensation got there first."""
    try:
        with engine.begin() as conn:
            conn.execute(
                insert(items).values(key=key, saga_id=saga_id, kind=kind, status="live", data=data, created_at=_now())
            )
        return data, True
    except sa_exc.IntegrityError:
        pass  # a concurrent (or earlier) execution of the same step holds the key
    stored = find_item(engine, key)
    assert stored is not None
    if stored["status"] != "live":
        raise AlreadyUndone(f"{kind} {key!r} was undone by {stored['undone_by']!r}; not applying it again")
    result: dict[str, Any] = stored["data"]
    return result, False


def undo(engine: Engine, *, step_key: str, undo_key: str, saga_id: str, kind: str) -> bool:
    """Mark the effect under ``step_key`` undone; ``False`` if there was nothing live to undo (then an
    ``undone`` row holds the key against a late execution of the step)."""

    def mark() -> int:
        with engine.begin() as conn:
            return conn.execute(
                update(items)
                .where(items.c.key == step_key, items.c.status == "live")
                .values(status="undone", undone_at=_now(), undone_by=undo_key)
            ).rowcount

    if mark():
        return True
    now = _now()
    try:
        with engine.begin() as conn:
            conn.execute(
                insert(items).values(
                    key=step_key,
                    saga_id=saga_id,
                    kind=kind,
                    status="undone",
                    data={},
                    created_at=now,
                    undone_at=now,
                    undone_by=undo_key,
                )
            )
        return False
    except sa_exc.IntegrityError:
        return bool(mark())  # already undone (a repeat), or the step applied it just now: undo that


# -- reading, for tests and operators --------------------------------------------------------------


def saga_items(engine: Engine, saga_id: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(select(items).where(items.c.saga_id == saga_id).order_by(items.c.created_at)).mappings()
        return [dict(r) for r in rows]


def live_items(engine: Engine, saga_id: str) -> list[dict[str, Any]]:
    return [i for i in saga_items(engine, saga_id) if i["status"] == "live"]


def saga_runs(engine: Engine, saga_id: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(select(runs).where(runs.c.saga_id == saga_id).order_by(runs.c.id)).mappings()
        return [dict(r) for r in rows]
