"""Calls, attempts, agents and the worklist.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "calls",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("pbx", sa.String(64), nullable=False),
        sa.Column("linkedid", sa.String(64), nullable=False),
        sa.Column("direction", sa.String(16), nullable=False),
        sa.Column("line", sa.String(128)),
        sa.Column("called_number", sa.String(64)),
        sa.Column("caller_number", sa.String(64)),
        sa.Column("caller_name", sa.String(256)),
        sa.Column("external_number", sa.String(64)),
        sa.Column("arrived_at", TS, nullable=False),
        sa.Column("ring_started_at", TS),
        sa.Column("answered_at", TS),
        sa.Column("ended_at", TS, nullable=False),
        sa.Column("ring_seconds", sa.Float, nullable=False),
        sa.Column("rings", sa.Integer, nullable=False),
        sa.Column("wait_seconds", sa.Float, nullable=False),
        sa.Column("talk_seconds", sa.Float, nullable=False),
        sa.Column("hold_seconds", sa.Float, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(32)),
        sa.Column("voicemail", sa.Boolean, nullable=False),
        sa.Column("short_abandon", sa.Boolean, nullable=False),
        sa.Column("agent", sa.String(128)),
        sa.Column("agent_name", sa.String(256)),
        sa.Column("hangup_by", sa.String(16)),
        sa.Column("hangup_cause", sa.Integer),
        sa.Column("queue", sa.String(128)),
        sa.Column("incomplete", sa.Boolean, nullable=False),
        sa.Column("transfers", sa.JSON, nullable=False),
        sa.Column("category", sa.String(64)),
        sa.Column("note", sa.Text),
        sa.Column("updated_at", TS, nullable=False),
        sa.UniqueConstraint("pbx", "linkedid", name="uq_calls_pbx_linkedid"),
    )
    op.create_index("ix_calls_arrived", "calls", ["arrived_at", "id"])
    op.create_index("ix_calls_outcome_arrived", "calls", ["outcome", "arrived_at"])
    op.create_index("ix_calls_direction_arrived", "calls", ["direction", "arrived_at"])
    op.create_index("ix_calls_line_arrived", "calls", ["line", "arrived_at"])
    op.create_index("ix_calls_caller_number", "calls", ["caller_number"])
    op.create_index("ix_calls_external_number", "calls", ["external_number", "answered_at"])
    op.create_index("ix_calls_agent_arrived", "calls", ["agent", "arrived_at"])

    op.create_table(
        "attempts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("call_id", sa.Integer, sa.ForeignKey("calls.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("interface", sa.String(128), nullable=False),
        sa.Column("agent_name", sa.String(256)),
        sa.Column("offered_at", TS, nullable=False),
        sa.Column("ring_started_at", TS),
        sa.Column("ended_at", TS),
        sa.Column("result", sa.String(16)),
        sa.Column("ring_seconds", sa.Float, nullable=False),
        sa.UniqueConstraint("call_id", "seq", name="uq_attempts_call_seq"),
    )

    op.create_table(
        "agents",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("pbx", sa.String(64), nullable=False),
        sa.Column("interface", sa.String(128), nullable=False),
        sa.Column("name", sa.String(256)),
        sa.Column("updated_at", TS, nullable=False),
        sa.UniqueConstraint("pbx", "interface", name="uq_agents_pbx_interface"),
    )

    op.create_table(
        "worklist_entries",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("pbx", sa.String(64), nullable=False),
        sa.Column("number", sa.String(64), nullable=False),
        sa.Column("line", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("first_missed_at", TS, nullable=False),
        sa.Column("last_missed_at", TS, nullable=False),
        sa.Column("call_count", sa.Integer, nullable=False),
        sa.Column("handled_at", TS),
        sa.Column("handled_by", sa.String(256)),
        sa.Column("how", sa.String(16)),
        sa.Column("handled_call_id", sa.Integer,
                  sa.ForeignKey("calls.id", ondelete="SET NULL")),
        sa.Column("time_to_callback_seconds", sa.Float),
        sa.Column("note", sa.Text),
        sa.Column("updated_at", TS, nullable=False),
    )
    pending = sa.text("status = 'pending'")
    op.create_index("uq_worklist_open", "worklist_entries", ["number", "line"], unique=True,
                    sqlite_where=pending, postgresql_where=pending)
    op.create_index("ix_worklist_status_first", "worklist_entries",
                    ["status", "first_missed_at"])

    op.create_table(
        "worklist_calls",
        sa.Column("entry_id", sa.Integer,
                  sa.ForeignKey("worklist_entries.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("call_id", sa.Integer, sa.ForeignKey("calls.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.UniqueConstraint("call_id", name="uq_worklist_calls_call"),
    )


def downgrade() -> None:
    op.drop_table("worklist_calls")
    op.drop_table("worklist_entries")
    op.drop_table("agents")
    op.drop_table("attempts")
    op.drop_table("calls")
