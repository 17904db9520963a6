"""usage_daily: 64-bit counts

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07

A day's roll-up of one key, model and upstream sums every request's tokens; on
PostgreSQL an INTEGER column stops at 2**31 - 1 (about 2.1 billion tokens), and a
usage batch that would pass it is refused. The request, error and token counts become
BIGINT. Downgrading fails on PostgreSQL if a row holds a larger sum.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None

COLUMNS = (
    "requests",
    "errors",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
)

# A batch: SQLite cannot change a column's type in place, so it copies the table. No
# foreign key points at usage_daily, so the copy cascades nowhere (unlike 0003's table).
# PostgreSQL alters the columns in place.


def upgrade() -> None:
    with op.batch_alter_table("usage_daily") as batch_op:
        for column in COLUMNS:
            batch_op.alter_column(
                column, existing_type=sa.Integer(), type_=sa.BigInteger(), existing_nullable=False
            )


def downgrade() -> None:
    with op.batch_alter_table("usage_daily") as batch_op:
        for column in COLUMNS:
            batch_op.alter_column(
                column, existing_type=sa.BigInteger(), type_=sa.Integer(), existing_nullable=False
            )
