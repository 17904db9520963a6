"""proxy_keys: revision

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-08

Running gateways notice a key changed by another process (the CLI, another gateway)
by a fingerprint of the key table. Built from counts, maxima and sums of some columns,
it missed edits that left them as they were: a key's allowed models, an expiry not
the latest, limits moved between keys. ``revision`` is moved on by every change to
a key's definition, and the fingerprint sums it. Existing keys start at 0.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # Plain ALTER TABLE (see 0003): no batch copy of the table.
    op.add_column(
        "proxy_keys",
        sa.Column("revision", sa.Integer(), nullable=False, server_default="0"),
    )


def downgrade() -> None:
    op.drop_column("proxy_keys", "revision")
