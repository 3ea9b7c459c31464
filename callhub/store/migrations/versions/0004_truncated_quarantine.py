"""Issue 10: calls cut to their columns are flagged; a quarantine for calls the database refuses.

- calls.truncated: a value from the PBX was longer than its column and was cut
  (records.bounded), so one odd caller name no longer fails its batch.
- quarantine: a call the database refused for a reason of its own (found by
  splitting the batch), with the record as JSON and the error, for an admin.

Revision ID: 0004_truncated_quarantine
Revises: 0003_query_indexes
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_truncated_quarantine"
down_revision = "0003_query_indexes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("calls") as batch:
        batch.add_column(sa.Column("truncated", sa.Boolean, nullable=False,
                                   server_default=sa.false()))
    op.create_table(
        "quarantine",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("record_key", sa.String(64), nullable=False),
        sa.Column("pbx", sa.Text, nullable=False),
        sa.Column("linkedid", sa.Text, nullable=False),
        sa.Column("record", sa.Text, nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("quarantined_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("record_key", name="uq_quarantine_record_key"),
    )


def downgrade() -> None:
    op.drop_table("quarantine")
    with op.batch_alter_table("calls") as batch:
        batch.drop_column("truncated")
