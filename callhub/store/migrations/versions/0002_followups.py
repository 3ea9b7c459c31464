"""Follow-up calls (callhub/store/followups.py).

Revision ID: 0002_followups
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_followups"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "followups",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("call_id", sa.Integer, sa.ForeignKey("calls.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("pbx", sa.String(64), nullable=False),
        sa.Column("number", sa.String(64), nullable=False),
        sa.Column("due_at", TS, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("category", sa.String(64)),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("created_by", sa.String(256)),
        sa.Column("closed_at", TS),
        sa.Column("closed_by", sa.String(256)),
        sa.Column("how", sa.String(16)),
        sa.Column("closed_call_id", sa.Integer,
                  sa.ForeignKey("calls.id", ondelete="SET NULL")),
        sa.Column("note", sa.Text),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_index("ix_followups_status_due", "followups", ["status", "due_at"])
    op.create_index("ix_followups_call", "followups", ["call_id"])
    op.create_index("ix_followups_number_status", "followups", ["number", "status"])
    rule = sa.text("source = 'rule'")
    op.create_index("uq_followups_rule", "followups", ["call_id", "category", "due_at"],
                    unique=True, sqlite_where=rule, postgresql_where=rule)


def downgrade() -> None:
    op.drop_table("followups")
