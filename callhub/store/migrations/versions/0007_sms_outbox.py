"""Issue 13: the SMS outbox (written with its call) and the SMS opt-out list.

Revision ID: 0007_sms_outbox
Revises: 0006_report_mailings
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

TS = sa.DateTime(timezone=True)

revision = "0007_sms_outbox"
down_revision = "0006_report_mailings"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sms_outbox",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("idempotency_key", sa.String(64), nullable=False),
        sa.Column("pbx", sa.String(64), nullable=False),
        sa.Column("linkedid", sa.String(64), nullable=False),
        sa.Column("call_id", sa.Integer, sa.ForeignKey("calls.id", ondelete="SET NULL")),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("line", sa.String(128)),
        sa.Column("to_number", sa.String(64), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("template_code", sa.String(64)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", TS, nullable=False),
        sa.Column("lease_until", TS),
        sa.Column("last_error", sa.Text),
        sa.Column("provider_id", sa.String(128)),
        sa.Column("call_ended_at", TS, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("sent_at", TS),
        sa.UniqueConstraint("idempotency_key", name="uq_sms_outbox_idempotency_key"),
    )
    op.create_index("ix_sms_outbox_status_due", "sms_outbox", ["status", "next_attempt_at"])
    op.create_index("ix_sms_outbox_to_created", "sms_outbox", ["to_number", "created_at"])
    op.create_index("ix_sms_outbox_call", "sms_outbox", ["call_id"])
    op.create_index("ix_sms_outbox_created", "sms_outbox", ["created_at"])
    op.create_table(
        "sms_optouts",
        sa.Column("number", sa.String(64), primary_key=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("by", sa.String(256)),
    )


def downgrade() -> None:
    op.drop_table("sms_optouts")
    op.drop_index("ix_sms_outbox_created", "sms_outbox")
    op.drop_index("ix_sms_outbox_call", "sms_outbox")
    op.drop_index("ix_sms_outbox_to_created", "sms_outbox")
    op.drop_index("ix_sms_outbox_status_due", "sms_outbox")
    op.drop_table("sms_outbox")
