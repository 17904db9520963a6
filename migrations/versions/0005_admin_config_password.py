"""admin_users: config_password_hash

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07

The configured ``admin_password`` (file or environment) is applied when it changes,
not at every start: its hash is kept to tell. A password set since in the dashboard or
with ``admin set-password`` then survives restarts. Existing admins start without one:
the next start applies a configured password once, as every start did before.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("admin_users", sa.Column("config_password_hash", sa.String(300), nullable=True))


def downgrade() -> None:
    op.drop_column("admin_users", "config_password_hash")
