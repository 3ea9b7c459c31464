"""Issue 15: the hourly rollup keeps cumulative ring counts (each line's ring target and
"within N rings" become sums in SQL) and the resolution and satisfaction counts (GET
/stats reads no calls for them); the rollup is derived data, so the table is made
again and refilled. The worklist's index for the stats cache also covers what /stats
counts of the worklist, so that is read from the index alone too.

Revision ID: 0011_rollup_figures
Revises: 0010_hourly_rollup
Create Date: 2026-11-30
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

from callhub.store import rollup
from callhub.store.tables import INT_LIST, ROLLUP_COUNTS

TS = sa.DateTime(timezone=True)

revision = "0011_rollup_figures"
down_revision = "0010_hourly_rollup"
branch_labels = None
depends_on = None


def _create(extra: list[sa.Column[Any]]) -> None:
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
        *extra,
        sa.Column("changed_at", TS, nullable=False),
    )
    op.create_index("ix_call_hours_hour_pbx", "call_hours", ["hour", "pbx", "changed_at"])


def upgrade() -> None:
    op.drop_index("ix_call_hours_hour_pbx", "call_hours")
    op.drop_table("call_hours")
    _create([sa.Column("rings_le", INT_LIST, nullable=False),
             sa.Column("wait_bins", sa.Text, nullable=False),
             sa.Column("ring_bins", sa.Text, nullable=False),
             *(sa.Column(name, sa.Integer, nullable=False) for name in ROLLUP_COUNTS)])
    rollup.rebuild_sync(op.get_bind())
    op.drop_index("ix_worklist_first_missed_updated", "worklist_entries")
    op.create_index("ix_worklist_first_missed_figures", "worklist_entries",
                    ["first_missed_at", "updated_at", "pbx", "status"],
                    postgresql_include=["time_to_callback_seconds"])


def downgrade() -> None:
    op.drop_index("ix_worklist_first_missed_figures", "worklist_entries")
    op.create_index("ix_worklist_first_missed_updated", "worklist_entries",
                    ["first_missed_at", "updated_at", "pbx"])
    # 0010's table, left empty: the rows 0010's code wrote are not what this code writes.
    op.drop_index("ix_call_hours_hour_pbx", "call_hours")
    op.drop_table("call_hours")
    _create([sa.Column("rings_bins", sa.Text, nullable=False),
             sa.Column("wait_bins", sa.Text, nullable=False),
             sa.Column("ring_bins", sa.Text, nullable=False)])
