"""Issue 15: the hourly rollup of calls behind /stats (callhub/store/rollup.py);
the index the stats cache reads the worklist's changes from.

Revision ID: 0010_hourly_rollup
Revises: 0009_rotation_positions
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

TS = sa.DateTime(timezone=True)

revision = "0010_hourly_rollup"
down_revision = "0009_rotation_positions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "call_hours",
        sa.Column("pbx", sa.String(64), nullable=False),
        sa.Column("line", sa.String(128)),
        sa.Column("hour", sa.BigInteger, nullable=False),
        sa.Column("outbound", sa.Integer, nullable=False),
        sa.Column("short_abandons", sa.Integer, nullable=False),
        sa.Column("answered", sa.Integer, nullable=False),
        sa.Column("abandoned", sa.Integer, nullable=False),
        sa.Column("missed", sa.Integer, nullable=False),
        sa.Column("other_inbound", sa.Integer, nullable=False),
        sa.Column("hangup_known", sa.Integer, nullable=False),
        sa.Column("agent_hung_up_first", sa.Integer, nullable=False),
        sa.Column("ring_sum", sa.Float, nullable=False),
        sa.Column("wait_sum", sa.Float, nullable=False),
        sa.Column("rings_bins", sa.Text, nullable=False),
        sa.Column("wait_bins", sa.Text, nullable=False),
        sa.Column("ring_bins", sa.Text, nullable=False),
        sa.Column("changed_at", TS, nullable=False),
    )
    op.create_index("ix_call_hours_hour_pbx", "call_hours", ["hour", "pbx", "changed_at"])
    op.create_index("ix_worklist_first_missed_updated", "worklist_entries",
                    ["first_missed_at", "updated_at", "pbx"])
    # Filled by 0011_rollup_figures, which makes the table again in the shape the rollup's
    # code (callhub/store/rollup.py) writes today.


def downgrade() -> None:
    op.drop_index("ix_worklist_first_missed_updated", "worklist_entries")
    op.drop_index("ix_call_hours_hour_pbx", "call_hours")
    op.drop_table("call_hours")
