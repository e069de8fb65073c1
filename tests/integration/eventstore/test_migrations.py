"""Migrations: a fresh PostgreSQL schema is upgraded, and the result is exactly eventstore.schema."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from relaybus.eventstore import NewEvent, SchemaError, migrations, open_store
from relaybus.eventstore.schema import VERSION_TABLE, metadata
from tests.integration.eventstore.conftest import Database


def test_upgrade_builds_a_fresh_postgresql_schema_once(pg_schema: tuple[str, str]) -> None:
    url, schema = pg_schema
    plain_url = url.replace("postgresql+psycopg://", "postgresql://")

    migrations.upgrade(plain_url, schema=schema)
    migrations.upgrade(plain_url, schema=schema)  # at head already: nothing to do

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names(schema=schema))
            triggers = set(
                conn.execute(
                    text(
                        "SELECT tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = :s AND NOT tgisinternal"
                    ),
                    {"s": schema},
                ).scalars()
            )
            version = conn.execute(text(f'SELECT version_num FROM "{schema}".eventstore_alembic_version')).scalar()
    finally:
        engine.dispose()
    assert tables == {
        "events", "workflow_status", "projection_tracking", "payloads", "approvals", "eventstore_alembic_version"
    }
    assert triggers == {"events_append_only", "events_no_truncate"}
    assert version == migrations.HEAD


def test_a_search_path_in_the_url_is_honoured(pg_schema: tuple[str, str]) -> None:
    url, schema = pg_schema
    url_with_path = f"{url}?options=-csearch_path%3D{schema}"
    migrations.upgrade(url_with_path)
    store = open_store(url_with_path)
    try:
        assert store.append_one(NewEvent(stream_id="s", type="t")).version == 1
    finally:
        store.close()
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text(f'SELECT count(*) FROM "{schema}".events')).scalar() == 1
    finally:
        engine.dispose()


def test_a_postgresql_store_without_migrations_raises_schema_error(pg_schema: tuple[str, str]) -> None:
    url, schema = pg_schema
    store = open_store(url, schema=schema)  # create defaults to off for PostgreSQL
    try:
        with pytest.raises(SchemaError, match="relaybus db upgrade"):
            store.append([NewEvent(stream_id="s", type="t")])
    finally:
        store.close()


def test_the_migrated_schema_is_exactly_the_table_definitions(db: Database) -> None:
    store = db.open()
    with store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": "eventstore_alembic_version"})
        differences = compare_metadata(context, metadata)
    assert differences == []


def test_opening_an_sqlite_store_again_keeps_its_events(db: Database) -> None:
    first = db.open()
    first.append([NewEvent(stream_id="s", type="t")])
    first.close()
    assert db.open().stream_version("s") == 1


def test_a_log_at_revision_0001_upgrades_to_the_head_with_the_new_indexes(db: Database) -> None:
    from relaybus.eventstore._engine import make_engine

    engine = make_engine(db.url, schema=db.schema)
    try:
        migrations.upgrade(engine, schema=db.schema, revision="0001")
        first = db.open()  # open_store upgrades to the head
        with first.engine.connect() as conn:
            indexes = {ix["name"] for ix in inspect(conn).get_indexes("workflow_status")}
        assert {"ix_workflow_status_status_position", "ix_workflow_status_last_position"} <= indexes
        assert "ix_workflow_status_status" not in indexes
        with first.engine.connect() as conn:
            event_indexes = {ix["name"] for ix in inspect(conn).get_indexes("events")}
        assert {"ix_events_type_position_time", "ix_events_correlation_type_position"} <= event_indexes
        assert not {"ix_events_type_position", "ix_events_correlation_position"} & event_indexes
        first.append([NewEvent(stream_id="s", type="t")])
        assert first.projection.catch_up() == 1
    finally:
        engine.dispose()



def test_0009_back_fills_kind_and_name_as_a_rebuild_computes_them(db: Database) -> None:
    """Rows the projection held before 0009 get what opened them from the log (a pipeline outranks a saga in
    its correlation id; the first opener of a kind names it), as a rebuild computes them; a workflow the
    projection had not reached gets its own from catch_up."""
    store = db.open()
    store.append([
        NewEvent(stream_id="p1", type="pipeline.started", payload={"pipeline": "research"}),
        NewEvent(stream_id="p1", type="task.sent", task_id="p1-a"),
        NewEvent(stream_id="saga:s1", correlation_id="s1", type="saga.started", payload={"saga": "booking"}),
        NewEvent(stream_id="ps", type="saga.started", payload={"saga": "inner"}),
        NewEvent(stream_id="ps", type="pipeline.started", payload={"pipeline": "outer"}),
        NewEvent(stream_id="ps", type="pipeline.started", payload={"pipeline": "restarted"}),
        NewEvent(stream_id="t1", type="task.sent", task_id="t1-a"),
    ])  # fmt: skip
    store.projection.catch_up()
    expected = {"p1": ("pipeline", "research"), "s1": ("saga", "booking"), "ps": ("pipeline", "outer"),
                "t1": (None, None)}
    assert {w.correlation_id: (w.kind, w.name) for w in store.projection.workflows()} == expected
    from alembic import command

    with store.engine.begin() as conn:  # back to 0008: the columns go
        command.downgrade(migrations.alembic_config(conn), "0008")
    with store.engine.connect() as conn:
        assert "name" not in {c["name"] for c in inspect(conn).get_columns("workflow_status")}
    store.append([NewEvent(stream_id="late", type="saga.started", payload={"saga": "after-the-tracking"})])

    migrations.upgrade(store.engine, schema=db.schema)  # 0009 back-fills the rows there are

    migrated = {w.correlation_id: (w.kind, w.name) for w in store.projection.workflows()}
    assert migrated == expected
    assert store.projection.catch_up() == 1
    caught_up = {w.correlation_id: (w.kind, w.name) for w in store.projection.workflows()}
    assert caught_up == {**expected, "late": ("saga", "after-the-tracking")}
    store.projection.rebuild()
    assert {w.correlation_id: (w.kind, w.name) for w in store.projection.workflows()} == caught_up
    store.close()



def _task(stream: str, task: str, *ends: str) -> list[NewEvent]:
    return [NewEvent(stream_id=stream, type=type_, task_id=task) for type_ in ("task.sent", *ends)]


def test_0013_counts_rejected_and_revoked_tasks_again_as_a_rebuild_does(db: Database) -> None:
    """Rows the projection wrote before 0013 counted a rejected task as failed, and a workflow that ended with a
    revoked task and no failure as succeeded; 0013 counts them again as the fold does now (a declared status
    stays), touches no other row, and its downgrade puts the old counts back."""
    store = db.open()
    store.append([
        *_task("plain", "p-a", "task.started", "task.succeeded"), *_task("plain", "p-b", "task.rejected"),
        NewEvent(stream_id="saga:s", correlation_id="s", type="saga.started", payload={"saga": "booking"}),
        *_task("s", "s-a", "task.failed", "task.dead_lettered"), *_task("s", "s-b", "task.rejected"),
        NewEvent(stream_id="saga:s", correlation_id="s", type="saga.compensated"),
        *_task("failed", "f-a", "task.failed"), *_task("failed", "f-b", "task.rejected"),
        *_task("open", "o-a", "task.rejected"), *_task("open", "o-b"),
        *_task("other", "x-a", "task.failed"),
        *_task("revoked", "r-a", "task.started", "task.succeeded"), *_task("revoked", "r-b", "task.revoked"),
    ])  # fmt: skip
    store.projection.catch_up()

    def rows() -> dict[str, tuple[str, int]]:
        return {w.correlation_id: (w.status, w.tasks_failed) for w in store.projection.workflows()}

    now = {"plain": ("cancelled", 0), "s": ("compensated", 1), "failed": ("failed", 1), "open": ("running", 0),
           "other": ("failed", 1), "revoked": ("cancelled", 0)}
    assert rows() == now
    from alembic import command

    with store.engine.begin() as conn:
        command.downgrade(migrations.alembic_config(conn), "0012")
    assert rows() == {**now, "plain": ("failed", 1), "s": ("compensated", 2), "failed": ("failed", 2),
                      "open": ("running", 1), "revoked": ("succeeded", 0)}  # as 0012's fold counted them

    migrations.upgrade(store.engine, schema=db.schema)

    assert rows() == now
    store.projection.rebuild()
    assert rows() == now
    store.close()


def _upgrade_at_the_barrier(directory: str, rounds: int, barrier, failures) -> None:  # type: ignore[no-untyped-def]
    for r in range(rounds):
        barrier.wait(timeout=60)
        try:
            migrations.upgrade(f"sqlite:///{directory}/log{r}.sqlite")
        except Exception as error:  # counted and reported by the test
            failures.put(f"round {r}: {type(error).__name__}: {error}"[:300])


def test_processes_upgrading_one_fresh_sqlite_log_at_once_all_succeed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Each opener switches a new file to WAL; SQLite refuses that switch at once ("database is locked", no
    busy wait) while another opener holds its read lock. Four processes released together on a fresh file,
    40 times: before the switch was retried, about one open in ten failed (the CLI matrix's ``db upgrade``)."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    rounds, openers = 40, 4
    barrier = context.Barrier(openers)
    failures = context.Queue()
    processes = [context.Process(target=_upgrade_at_the_barrier, args=(str(tmp_path), rounds, barrier, failures))
                 for _ in range(openers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
    assert [p.exitcode for p in processes] == [0] * openers
    said = []
    while not failures.empty():
        said.append(failures.get())
    assert said == []
    for r in range(rounds):
        engine = create_engine(f"sqlite:///{tmp_path}/log{r}.sqlite")
        try:
            with engine.connect() as conn:
                assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
                assert MigrationContext.configure(conn, opts={"version_table": "eventstore_alembic_version"}
                                                  ).get_current_revision() == migrations.HEAD
        finally:
            engine.dispose()


def test_a_sqlite_store_checkpoints_its_wal_every_10000_pages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from relaybus.eventstore import _engine

    url = f"sqlite:///{tmp_path / 'log.sqlite'}"
    open_store(url, create=True).close()
    for pages in (None, 1000):  # the default, then SQLite's own, set before the engine connects
        if pages is not None:
            monkeypatch.setattr(_engine, "SQLITE_WAL_AUTOCHECKPOINT_PAGES", pages)
        engine = _engine.make_engine(url)
        try:
            with engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == (pages or 10_000)
        finally:
            engine.dispose()


def test_a_log_a_newer_release_upgraded_is_used_as_it_is_with_a_warning(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """A rolling upgrade: a newer release's ``db upgrade`` ran, and a worker of this release (re)starts on the log.
    It opens it without upgrading (alembic does not know the newer revision: it raised before), says so, and
    appends."""
    store = db.open()
    store.append([NewEvent(stream_id="s", type="before")])
    with store.engine.begin() as conn:
        conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '9999'"))
    store.close()

    with caplog.at_level("WARNING", logger="relaybus.eventstore.migrations"):
        again = db.open()
        migrations.upgrade(again.engine, schema=db.schema)  # relaybus db upgrade, too

    again.append([NewEvent(stream_id="s", type="after")])
    assert [e.type for e in again.read_stream("s")] == ["before", "after"]
    assert "revision 9999, which this relaybus" in caplog.text
    with again.engine.connect() as conn:
        assert conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar() == "9999"
