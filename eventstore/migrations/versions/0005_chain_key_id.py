"""Keyed chains: each event names the chain key that linked it.

``key_id`` is NULL for the events written before (their hash stays plain SHA-256 over the content,
and keeps verifying as such), ``"sha256"`` for an unkeyed link written since, or the id of the HMAC
key (never the key: the database does not hold it). See :mod:`eventstore.hashing` and docs/integrity.md.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # ADD COLUMN of a nullable column without a default: no table rewrite on either database.
    op.add_column("events", sa.Column("key_id", sa.String(32), nullable=True))


def downgrade() -> None:
    op.execute("ALTER TABLE events DROP COLUMN key_id")  # SQLite 3.35+; keeps the triggers, unlike a batch copy
