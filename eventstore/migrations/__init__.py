"""Schema migrations (alembic), runnable without an ``alembic.ini``: ``upgrade(url)``.

The alembic environment and the revisions live in this package, so the CLI (``relaybus db
upgrade``), ``open_store(url, create=True)`` and the embedded SQLite default all run the same
migrations. Concurrent upgrades are serialised (``BEGIN IMMEDIATE`` on SQLite, an advisory lock on
PostgreSQL) and each runs in one transaction: DDL is transactional on both databases.

Revisions are snapshots: they spell their columns out rather than import :mod:`eventstore.schema`
(a test checks that the two agree).
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.engine import URL

from relaybus.eventstore._engine import ProcessLocalEngine, check_schema_name, make_engine, translate_errors
from relaybus.eventstore.schema import VERSION_TABLE

HEAD = "0013"
"""The newest revision; ``open_store`` skips alembic entirely when a database is already there."""

_LOCATION = Path(__file__).parent
logger = logging.getLogger(__name__)
_PG_LOCK_KEY = 0x6576_656E_7473  # "events": any constant shared by every upgrader


def alembic_config(connection: Connection | None = None) -> Config:
    """An alembic ``Config`` pointing at this package (no ini file needed)."""
    config = Config()
    config.set_main_option("script_location", str(_LOCATION))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def current_revision(connection: Connection) -> str | None:
    """The revision the database behind ``connection`` is at; ``None`` for an empty database."""
    if not inspect(connection).has_table(VERSION_TABLE):
        return None
    return connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()


def upgrade_connection(connection: Connection, revision: str = "head") -> None:
    """Upgrade inside the caller's transaction (which the caller commits)."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
    current = current_revision(connection)
    if revision == "head" and current == HEAD:
        return
    if revision == "head" and current is not None and not _known(current):
        # A newer relaybus upgraded this log (a rolling upgrade: its workers and this older one share it). Its
        # revisions keep what older releases use (the server append's ``_v1`` is a contract): use the log as it is.
        logger.warning("the event log is at revision %s, which this relaybus (revisions up to %s) does not know: "
                       "a newer release upgraded it; using it without upgrading", current, HEAD)
        return
    command.upgrade(alembic_config(connection), revision)


def _known(revision: str) -> bool:
    try:
        return ScriptDirectory.from_config(alembic_config()).get_revision(revision) is not None
    except CommandError:
        return False


def upgrade(url: str | URL | Engine, *, schema: str | None = None, revision: str = "head") -> None:
    """Bring the database at ``url`` up to ``revision`` (the newest by default).

    ``schema`` (PostgreSQL): create that schema if needed and put the tables there.
    """
    engine = url if isinstance(url, Engine) else make_engine(url, schema=schema)
    local = ProcessLocalEngine(engine)
    try:
        if revision == "head" and schema is None:
            with translate_errors(), local.read() as connection:
                if current_revision(connection) == HEAD:
                    return  # the common case, without taking any lock
        with translate_errors(), local.write() as connection:
            if schema is not None and connection.dialect.name == "postgresql":
                connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{check_schema_name(schema)}"'))
            upgrade_connection(connection, revision)
    finally:
        if not isinstance(url, Engine):
            engine.dispose()
