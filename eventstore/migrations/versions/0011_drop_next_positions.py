"""``eventstore_next_positions`` goes: nothing calls it, and an unused ``SECURITY DEFINER`` is a right held for nothing.

Migration 0006 gave the app role two owner's functions: the append's table lock and ``setval`` of the position
sequence. Appends stopped moving the sequence along (:mod:`eventstore._insert` counts positions from the log under
the lock: setval cost the server 200-300 us of CPU an append), so the second function had no caller left, yet
``relaybus db upgrade --app-role`` still granted EXECUTE on it: a role that can only add to the log could still
move the owner's sequence. Dropping the function takes the grant with it (PostgreSQL only; SQLite has neither).
The downgrade puts back 0006's function, revoked from PUBLIC; grants are given again by ``--app-role``.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    schema = bind.execute(sa.text("SELECT current_schema()")).scalar_one()
    op.execute(f'DROP FUNCTION IF EXISTS "{schema}".eventstore_next_positions(bigint)')


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    schema = bind.execute(sa.text("SELECT current_schema()")).scalar_one()
    events = f'"{schema}".events'
    op.execute(
        f'CREATE OR REPLACE FUNCTION "{schema}".eventstore_next_positions(n bigint) RETURNS bigint LANGUAGE sql '
        "SECURITY DEFINER SET search_path = pg_catalog, pg_temp "
        f"AS $$ SELECT setval(pg_get_serial_sequence('{events}', 'position'), "
        f"coalesce((SELECT max(position) FROM {events}), 0) + n) $$"
    )
    op.execute(f'REVOKE ALL ON FUNCTION "{schema}".eventstore_next_positions(bigint) FROM PUBLIC')
