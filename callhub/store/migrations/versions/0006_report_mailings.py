"""Issue 13: the scheduled report mails, one row per period (claimed, then sent).

Revision ID: 0006_report_mailings
Revises: 0005_call_source
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_report_mailings"
down_revision = "0005_call_source"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "report_mailings",
        sa.Column("period_kind", sa.String(8), primary_key=True),
        sa.Column("period_start", sa.Date, primary_key=True),
        sa.Column("claimed_at", TS, nullable=False),
        sa.Column("sent_at", TS),
        sa.Column("recipients", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("report_mailings")
