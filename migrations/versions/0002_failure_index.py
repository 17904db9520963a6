"""usage_events: the status index holds failures only

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07

The dashboard reads failures through the status index and counts "ok" from the daily
roll-up minus the failures, so the rows of requests that went well (nearly all of them)
never needed an entry in it: each one cost the usage writer an index insert (~2.3 k
instructions a row, issue 7). A partial index on failures serves the same queries.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

FAILURES = sa.text("status <> 'ok'")


def upgrade() -> None:
    op.drop_index("ix_usage_events_status_time", table_name="usage_events")
    op.create_index(
        "ix_usage_events_failure_time",
        "usage_events",
        ["status", "time"],
        unique=False,
        sqlite_where=FAILURES,
        postgresql_where=FAILURES,
    )


def downgrade() -> None:
    op.drop_index("ix_usage_events_failure_time", table_name="usage_events")
    op.create_index("ix_usage_events_status_time", "usage_events", ["status", "time"], unique=False)
