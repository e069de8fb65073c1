"""Large payloads by reference: the ``payloads`` table (:mod:`eventstore.payloads`).

A value over ``payload_inline_max_bytes`` is stored here once, keyed by the SHA-256 of its canonical JSON
(the text in ``body``); messages and events carry ``{"$ref": "sha256:<digest>", "bytes": N}`` instead.
No trigger: the app role gets SELECT and INSERT only (:mod:`eventstore.roles`), and ``verify`` recomputes
every digest, so a changed row is found.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "payloads",
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("stored_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("digest", name="pk_payloads"),
    )


def downgrade() -> None:
    op.drop_table("payloads")
