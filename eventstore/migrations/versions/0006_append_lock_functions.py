"""The append's lock and positions as functions owned by the table owner, so the app role needs no more
than INSERT and SELECT on the events table (PostgreSQL; nothing on SQLite).

An append takes ``LOCK TABLE events IN EXCLUSIVE MODE`` and moves the position sequence along
(:mod:`eventstore._insert`). PostgreSQL allows that lock mode only to a role with UPDATE, DELETE or
TRUNCATE on the table, and ``setval`` only with UPDATE on the sequence: the app role
(:mod:`eventstore.roles`) has neither, and should not. These two ``SECURITY DEFINER`` functions do
exactly those two things with the owner's rights, and nothing else: the schema is fixed in their
bodies and their ``search_path`` is ``pg_catalog, pg_temp``, so a caller cannot point them at
another table. EXECUTE is revoked from PUBLIC (any role could otherwise hold the log's write lock);
``relaybus db upgrade --app-role`` grants it to the app role. The owner runs them as before.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    schema = bind.execute(sa.text("SELECT current_schema()")).scalar_one()
    events = f'"{schema}".events'
    definer = "SECURITY DEFINER SET search_path = pg_catalog, pg_temp"
    op.execute(
        f'CREATE OR REPLACE FUNCTION "{schema}".eventstore_lock_events() RETURNS void LANGUAGE sql {definer} '
        f"AS $$ LOCK TABLE {events} IN EXCLUSIVE MODE $$"
    )
    op.execute(
        f'CREATE OR REPLACE FUNCTION "{schema}".eventstore_next_positions(n bigint) RETURNS bigint LANGUAGE sql '
        f"{definer} AS $$ SELECT setval(pg_get_serial_sequence('{events}', 'position'), "
        f"coalesce((SELECT max(position) FROM {events}), 0) + n) $$"
    )
    for function in ("eventstore_lock_events()", "eventstore_next_positions(bigint)"):
        op.execute(f'REVOKE ALL ON FUNCTION "{schema}".{function} FROM PUBLIC')


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP FUNCTION IF EXISTS eventstore_next_positions(bigint)")
    op.execute("DROP FUNCTION IF EXISTS eventstore_lock_events()")
