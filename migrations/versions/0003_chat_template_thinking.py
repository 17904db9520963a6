"""upstreams: chat_template_thinking

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07

An upstream may switch thinking through ``chat_template_kwargs`` as well as
``reasoning_effort`` (hybrid models behind vLLM, SGLang or llama.cpp read only the
former). Existing upstreams keep sending what they sent: the column starts false.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


# Plain ALTER TABLE, not a batch: on SQLite a batch would copy the table and drop the old
# one, and with foreign keys on, that drop deletes every upstream's keys and routes
# (ON DELETE CASCADE). SQLite >= 3.35 drops a column in place.


def upgrade() -> None:
    op.add_column(
        "upstreams",
        sa.Column("chat_template_thinking", sa.Boolean(), nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    op.drop_column("upstreams", "chat_template_thinking")
