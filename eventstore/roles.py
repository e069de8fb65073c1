"""The least-privileged PostgreSQL role the app connects as: it can add to the log, never change it.

Migrations run as the tables' owner (``relaybus db upgrade``). Workers, clients and the CLI connect as
an app role that holds exactly :data:`APP_PRIVILEGES`:

- ``events``: SELECT and INSERT. No UPDATE, DELETE or TRUNCATE (refused before the append-only
  triggers are even asked), and, not being the owner, no ``ALTER TABLE … DISABLE TRIGGER``; not being
  a superuser, no ``SET session_replication_role`` (which would silence the triggers).
- The append's table lock, which PostgreSQL gives only to roles with UPDATE, through the
  ``SECURITY DEFINER`` function of migration 0006: EXECUTE, and nothing on the position sequence
  (0006's second function, ``setval`` of that sequence, had no caller left and went in 0011).
- The small append of migration 0012 (``eventstore_append_v1``): EXECUTE. It runs with the caller's rights
  (``SECURITY INVOKER``): the lock and INSERT above, nothing more.
- ``workflow_status`` (the projection ``relaybus workflows`` reads): SELECT, INSERT, UPDATE, DELETE.
  It is derived from the log and rebuilt from it (``relaybus projections rebuild`` empties it and
  refills it; the sweep upserts it), so these rights change nothing that ``verify`` relies on.
- ``projection_tracking``: SELECT, INSERT, UPDATE (the projection's position; ``SELECT … FOR UPDATE``).
- ``payloads`` (large values by reference, migration 0007): SELECT and INSERT; a stored payload is never
  changed, and ``verify`` recomputes its digest.
- ``approvals`` (migration 0008): SELECT, INSERT, UPDATE (a request is inserted, then decided once by a conditional
  UPDATE; never deleted). It is not the record: every request and decision is also in the log.
- the revision table: SELECT (``open_store`` checks the schema is current).
- the schema: USAGE; never CREATE.

:func:`grant_app_role` is idempotent: it revokes whatever else the role held on these tables, then
grants the above. It refuses a role that is a superuser, may create roles, bypass row security or
replicate, or is (a member of) the tables' owner: such a role holds, or can take, every right this
module withholds.

The password, when given, is turned into a SCRAM-SHA-256 verifier by libpq on this side
(``PQencryptPasswordConn``): the server, its statement log and ``pg_stat_activity`` never see it in
clear, and nothing here prints it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, text
from sqlalchemy.engine import URL

from relaybus.eventstore import _serverappend as server
from relaybus.eventstore._engine import ProcessLocalEngine, make_engine, translate_errors
from relaybus.eventstore.errors import UnsafeAppRole
from relaybus.eventstore.schema import (
    APPROVALS,
    EVENTS,
    PAYLOADS,
    PROJECTION_TRACKING,
    VERSION_TABLE,
    WORKFLOW_STATUS,
)

APP_PRIVILEGES: dict[str, tuple[str, ...]] = {
    EVENTS: ("SELECT", "INSERT"),
    VERSION_TABLE: ("SELECT",),
    WORKFLOW_STATUS: ("SELECT", "INSERT", "UPDATE", "DELETE"),
    PROJECTION_TRACKING: ("SELECT", "INSERT", "UPDATE"),
    PAYLOADS: ("SELECT", "INSERT"),
    APPROVALS: ("SELECT", "INSERT", "UPDATE"),
}
"""Table -> the privileges the app role holds on it; nothing on any other table of the schema."""

APP_FUNCTIONS = ("eventstore_lock_events()", f"{server.FUNCTION}({server.SIGNATURE})")
"""The functions the app role may EXECUTE: the owner's lock (migration 0006) and the small append (0012), which runs
with the caller's rights."""

_ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_VERIFIER = re.compile(r"^SCRAM-SHA-256\$[0-9]+:[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+$")


@dataclass(frozen=True)
class Granted:
    """What :func:`grant_app_role` did (no password in it)."""

    role: str
    schema: str
    created: bool
    password_set: bool


def check_role_name(role: str) -> str:
    """``role`` if it is a plain lower-case identifier (it is quoted in SQL, but kept simple for ops)."""
    if not _ROLE_NAME.match(role):
        raise ValueError(f"invalid role name {role!r} (lower-case letters, digits and _, up to 63)")
    return role


def grant_app_role(
    url: str | URL | Engine, role: str, *, password: str | None = None, schema: str | None = None
) -> Granted:
    """Create ``role`` if missing (LOGIN, no other attribute) and give it exactly :data:`APP_PRIVILEGES`.

    Run as the tables' owner (creating the role, or setting its password, also needs CREATEROLE).
    ``schema``: the schema holding the tables (default: the connection's current schema).
    ``password``: set as the role's password (as a SCRAM verifier); ``None`` leaves it as it is.
    """
    check_role_name(role)
    engine = url if isinstance(url, Engine) else make_engine(url, schema=schema)
    if engine.dialect.name != "postgresql":
        raise ValueError("database roles are a PostgreSQL feature; SQLite has none")
    local = ProcessLocalEngine(engine)
    try:
        with translate_errors(), local.write() as conn:
            return _grant(conn, role, password)
    finally:
        if not isinstance(url, Engine):
            engine.dispose()


def _grant(conn: Connection, role: str, password: str | None) -> Granted:
    schema = conn.execute(text("SELECT current_schema()")).scalar_one()
    attributes = conn.execute(
        # CREATEROLE too: such a role can make itself a member of the owner's role (a non-superuser owner).
        text("SELECT rolsuper OR rolcreaterole OR rolbypassrls OR rolreplication FROM pg_roles WHERE rolname = :role"),
        {"role": role},
    ).scalar()
    created = attributes is None
    quoted = f'"{role}"'
    if created:
        conn.execute(text(f"CREATE ROLE {quoted} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"))
    elif attributes:
        raise UnsafeAppRole(role, "it is a superuser, or may create roles, bypass row security or replicate")
    owner = conn.execute(
        text("SELECT tableowner FROM pg_tables WHERE schemaname = :schema AND tablename = :table"),
        {"schema": schema, "table": EVENTS},
    ).scalar()
    if owner is None:
        raise ValueError(f"no events table in schema {schema!r}: run the migrations first")
    if conn.execute(text("SELECT pg_has_role(:role, :owner, 'MEMBER')"), {"role": role, "owner": owner}).scalar():
        raise UnsafeAppRole(role, "it owns the event log's tables (or is a member of their owner)")
    if password is not None:
        # The driver's own execute: no bind-parameter parsing of the verifier (which holds ':').
        conn.exec_driver_sql(f"ALTER ROLE {quoted} PASSWORD '{_verifier(conn, role, password)}'")
    conn.execute(text(f'GRANT USAGE ON SCHEMA "{schema}" TO {quoted}'))
    for table, privileges in APP_PRIVILEGES.items():
        target = f'"{schema}"."{table}"'
        conn.execute(text(f"REVOKE ALL ON {target} FROM {quoted}"))
        conn.execute(text(f"GRANT {', '.join(privileges)} ON {target} TO {quoted}"))
    sequence = conn.execute(
        text("SELECT pg_get_serial_sequence(:table, 'position')"), {"table": f'"{schema}".{EVENTS}'}
    ).scalar_one()
    conn.execute(text(f"REVOKE ALL ON SEQUENCE {sequence} FROM {quoted}"))
    for function in APP_FUNCTIONS:
        conn.execute(text(f'GRANT EXECUTE ON FUNCTION "{schema}".{function} TO {quoted}'))
    return Granted(role, schema, created, password is not None)


def _verifier(conn: Connection, role: str, password: str) -> str:
    """The SCRAM-SHA-256 verifier of ``password``, computed by libpq here, never sent in clear."""
    if not password:
        raise ValueError("the app role's password is empty")
    driver = conn.connection.driver_connection
    assert driver is not None
    verifier: str = driver.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256").decode()
    if not _VERIFIER.match(verifier):  # it is written into the statement: nothing but the verifier's alphabet
        raise ValueError("libpq returned an unexpected password verifier")
    return verifier
