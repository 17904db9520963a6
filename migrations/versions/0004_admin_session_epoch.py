"""admin_users: session_epoch

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07

A dashboard session cookie carries its admin's epoch; signing out moves the epoch on,
so the cookie (and every other session of that admin) stops working on the server,
not only in the browser that signed out. Existing admins start at 0: their current
sessions stay valid until they next sign out.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # Plain ALTER TABLE (see 0003): no batch copy of the table.
    op.add_column(
        "admin_users",
        sa.Column("session_epoch", sa.Integer(), nullable=False, server_default="0"),
    )


def downgrade() -> None:
    op.drop_column("admin_users", "session_epoch")
