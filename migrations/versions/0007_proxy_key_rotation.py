"""proxy_keys: rotated_at, rotations

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08

A key may be given a new secret and keep its row (name, limits, allowed models,
expiry, usage). ``rotated_at`` says when that last happened; ``rotations`` counts it,
and running gateways sum it to notice a rotation made by another process. Existing
keys start never rotated.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # Plain ALTER TABLE (see 0003): no batch copy of the table.
    op.add_column("proxy_keys", sa.Column("rotated_at", sa.DateTime(), nullable=True))
    op.add_column(
        "proxy_keys",
        sa.Column("rotations", sa.Integer(), nullable=False, server_default="0"),
    )


def downgrade() -> None:
    op.drop_column("proxy_keys", "rotations")
    op.drop_column("proxy_keys", "rotated_at")
