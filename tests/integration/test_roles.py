"""Least-privilege roles on real PostgreSQL: the owner migrates, the app role adds to the log and cannot change it.

Each test migrates a schema of its own as the owner (the test server's superuser, as the compose stack's
``migrate`` job does) and creates an app role with a unique name through the real CLI
(``relaybus db upgrade --app-role``); both are dropped after. The server trusts local connections, so the
password is set but not checked on login; the privilege checks are the server's either way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from relaybus.eventstore import NewEvent, UnsafeAppRole, open_store, roles
from relaybus.tasks.agents import content_store
from relaybus.tasks.agents.pipeline_models import ResearchRequest
from relaybus.tasks.pipelines.client import start
from tests.harness import ROOT
from tests.integration.system import running_system, system_settings
from tests.services import require_postgres, require_rabbitmq, require_redis

pytestmark = pytest.mark.integration

PASSWORD = f"pw-{uuid.uuid4().hex}"


@dataclass
class Deployment:
    owner_url: str
    app_url: str
    schema: str
    role: str
    upgrade: subprocess.CompletedProcess[str]


def relaybus(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI, configured by its environment only, as an operator or a container runs it."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT), "RELAYBUS_EVENTSTORE_URL": url}
    return subprocess.run(
        [sys.executable, "-m", "relaybus.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def in_schema(url: str, schema: str) -> str:
    return f"{url}?options=-csearch_path%3D{schema}"


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    server = require_postgres()
    tag = uuid.uuid4().hex[:10]
    schema, role = f"roles_{tag}", f"relaybus_app_{tag}"
    admin = create_engine(server)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    password_file = tmp_path / "app_password"
    password_file.write_text(PASSWORD + "\n")
    owner_url = in_schema(server, schema)
    try:
        upgrade = relaybus(owner_url, "db", "upgrade", "--app-role", role, "--app-password-file", str(password_file))
        assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
        app_url = in_schema(make_url(server).set(username=role).render_as_string(hide_password=False), schema)
        yield Deployment(owner_url, app_url, schema, role, upgrade)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
        admin.dispose()


def refusal(url: str, statement: str) -> str:
    """The server's error for ``statement`` run as the role of ``url``; fails the test if it is allowed."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text(statement))
    except sa_exc.DBAPIError as error:
        orig: Any = error.orig
        assert orig.sqlstate == "42501", f"{statement}: {orig.sqlstate} {orig}"  # insufficient_privilege
        return str(orig).splitlines()[0]
    finally:
        engine.dispose()
    raise AssertionError(f"the app role was allowed to run: {statement}")


def some_events(stream: str, n: int = 3) -> list[NewEvent]:
    return [NewEvent(stream_id=stream, type="probe.happened", payload={"i": i}) for i in range(n)]


def test_the_app_role_cannot_change_delete_or_silence_the_log(deployment: Deployment) -> None:
    store = open_store(deployment.app_url)  # create=False: the app never migrates
    try:
        store.append(some_events("s-1"))
    finally:
        store.close()
    refused = {
        statement: refusal(deployment.app_url, statement)
        for statement in (
            "UPDATE events SET type = 'rewritten'",
            "DELETE FROM events",
            "TRUNCATE events",
            "ALTER TABLE events DISABLE TRIGGER events_append_only",
            "ALTER TABLE events DISABLE TRIGGER ALL",
            "SET session_replication_role = replica",
            "DROP TABLE events",
            "LOCK TABLE events IN EXCLUSIVE MODE",
            "SELECT setval(pg_get_serial_sequence('events', 'position'), 1000)",
            "CREATE TABLE events_copy (x int)",
            "DROP FUNCTION eventstore_lock_events()",
        )
    }
    for statement, message in refused.items():
        print(f"{statement} -> {message}")  # the closing note's table (pytest -s)
    assert refused["UPDATE events SET type = 'rewritten'"] == "permission denied for table events"
    assert refused["DELETE FROM events"] == "permission denied for table events"
    assert refused["TRUNCATE events"] == "permission denied for table events"
    assert refused["ALTER TABLE events DISABLE TRIGGER events_append_only"] == "must be owner of table events"
    assert refused["SET session_replication_role = replica"].startswith(
        'permission denied to set parameter "session_replication_role"'
    )
    verify = relaybus(deployment.app_url, "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr  # nothing was changed
    owner = create_engine(deployment.owner_url)
    try:
        with owner.connect() as conn:
            functions = conn.execute(
                text("SELECT proname FROM pg_proc WHERE pronamespace = :schema ::regnamespace ORDER BY proname"),
                {"schema": deployment.schema},
            ).scalars().all()
    finally:
        owner.dispose()
    # The sequence's setval had no caller left: migration 0011 dropped it, and the app role's EXECUTE with it.
    assert "eventstore_next_positions" not in functions
    assert "eventstore_lock_events" in functions


def test_the_app_role_appends_reads_verifies_and_keeps_the_projection(deployment: Deployment) -> None:
    store = open_store(deployment.app_url)
    try:
        first = store.append(some_events("s-1"))
        assert store.append(some_events("s-2", 20))[-1].position == 23  # 20 rows: the COPY path
        assert store.append_new([*some_events("s-1"), *some_events("s-3", 2)]) == 5  # fresh ids, another path
        assert store.append(first) == first  # a redelivery: looked up, not written again
        assert [e.version for e in store.read_stream("s-1")] == [1, 2, 3, 4, 5, 6]
        assert store.verify().ok
        assert store.projection.catch_up() == 28
        assert store.projection.rebuild() == 28
    finally:
        store.close()
    content = content_store._build(deployment.app_url)  # the reference saga's tables: made by db upgrade
    try:
        content_store.set_fault(content, "step:writing", saga_id="s-1", times=1)
        assert content_store.take_fault(content, "s-1", "step:writing") is not None
        content_store.log_run(content, "s-1", "writing", "k-1", "applied")
        content_store.clear_fault(content, "step:writing", saga_id="s-1")
    finally:
        content.dispose()
    for args in (("verify", "--json"), ("workflows", "list", "--json"), ("projections", "rebuild")):
        done = relaybus(deployment.app_url, *args)
        assert done.returncode == 0, f"{args}: {done.stdout}{done.stderr}"
    assert json.loads(relaybus(deployment.app_url, "verify", "--json").stdout)["ok"] is True


def test_db_upgrade_grants_exactly_the_documented_privileges_and_never_shows_the_password(
    deployment: Deployment,
) -> None:
    assert PASSWORD not in deployment.upgrade.stdout + deployment.upgrade.stderr
    assert f"app role {deployment.role} created, password set" in deployment.upgrade.stdout
    admin = create_engine(require_postgres())
    try:
        with admin.begin() as conn:
            granted = conn.execute(
                text(
                    "SELECT table_name, privilege_type FROM information_schema.role_table_grants "
                    "WHERE grantee = :role AND table_schema = :schema"
                ),
                {"role": deployment.role, "schema": deployment.schema},
            ).all()
            stored_password = conn.execute(
                text("SELECT rolpassword FROM pg_authid WHERE rolname = :role"), {"role": deployment.role}
            ).scalar_one()
            attributes = conn.execute(
                text("SELECT rolsuper, rolcreaterole, rolcreatedb, rolbypassrls FROM pg_roles WHERE rolname = :r"),
                {"r": deployment.role},
            ).one()
            # Granted UPDATE by hand, as a mistake would: the next upgrade takes it back.
            conn.execute(text(f'GRANT UPDATE, DELETE ON "{deployment.schema}".events TO "{deployment.role}"'))
    finally:
        admin.dispose()
    expected = {**roles.APP_PRIVILEGES, **content_store.APP_PRIVILEGES}
    assert {(t, p) for t, p in granted} == {(t, p) for t, ps in expected.items() for p in ps}
    assert stored_password.startswith("SCRAM-SHA-256$") and PASSWORD not in stored_password
    assert tuple(attributes) == (False, False, False, False)
    again = relaybus(deployment.owner_url, "db", "upgrade", "--app-role", deployment.role)
    assert again.returncode == 0 and f"app role {deployment.role} exists;" in again.stdout, again.stderr
    assert refusal(deployment.app_url, "DELETE FROM events") == "permission denied for table events"


def test_a_superuser_the_owner_or_a_role_creator_is_refused_as_the_app_role(deployment: Deployment) -> None:
    owner = make_url(require_postgres()).username or "postgres"
    with pytest.raises(UnsafeAppRole, match="superuser"):
        roles.grant_app_role(deployment.owner_url, owner)
    creator = f"{deployment.role}_cr"
    admin = create_engine(require_postgres())
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE ROLE "{creator}" LOGIN CREATEROLE'))
        with pytest.raises(UnsafeAppRole, match="may create roles"):
            roles.grant_app_role(deployment.owner_url, creator)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP ROLE IF EXISTS "{creator}"'))
        admin.dispose()
    refused = relaybus(deployment.owner_url, "db", "upgrade", "--app-role", owner)
    assert refused.returncode == 1 and "cannot be the app role" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_a_pipeline_runs_on_workers_connected_as_the_app_role(deployment: Deployment, tmp_path: Path) -> None:
    settings = system_settings(tmp_path, require_rabbitmq(), require_redis(), eventstore_url=deployment.app_url)
    agents = ("system", "intake", "planner", "researcher", "writer", "reviewer", "publisher")
    with running_system(settings, tmp_path, [(agents, 2)]) as system:
        handle = start("research", ResearchRequest(request="least privilege", max_topics=2), app=system.app)
        try:
            handle.wait(60)
        except TimeoutError:
            raise AssertionError(f"pipeline {handle.id} hung\n{system.logs()}") from None
        assert handle.status() == "completed", system.logs()
    store = open_store(deployment.app_url)
    try:
        types = [e.type for e in store.by_correlation(handle.id)]
        assert store.verify().ok
    finally:
        store.close()
    assert {"pipeline.started", "pipeline.completed"} <= set(types)
    assert {"task.succeeded", "event.published"} <= set(types)
