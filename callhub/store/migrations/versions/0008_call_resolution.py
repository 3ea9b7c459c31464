"""Issue 13: a call's resolution and a follow-up's outcome and satisfaction.

- calls.resolution (resolved / referred / pending / unresolved), the department a
  referred matter went to, and who set it when.
- followups.outcome and followups.satisfaction (satisfied / fair / dissatisfied /
  unreachable), with who recorded them when.

Revision ID: 0008_call_resolution
Revises: 0007_sms_outbox
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

TS = sa.DateTime(timezone=True)

revision = "0008_call_resolution"
down_revision = "0007_sms_outbox"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("calls") as batch:
        batch.add_column(sa.Column("resolution", sa.String(16)))
        batch.add_column(sa.Column("resolution_department", sa.String(128)))
        batch.add_column(sa.Column("resolution_at", TS))
        batch.add_column(sa.Column("resolution_by", sa.String(256)))
    with op.batch_alter_table("followups") as batch:
        batch.add_column(sa.Column("outcome", sa.String(16)))
        batch.add_column(sa.Column("satisfaction", sa.String(16)))
        batch.add_column(sa.Column("rated_at", TS))
        batch.add_column(sa.Column("rated_by", sa.String(256)))


def downgrade() -> None:
    with op.batch_alter_table("followups") as batch:
        for name in ("rated_by", "rated_at", "satisfaction", "outcome"):
            batch.drop_column(name)
    with op.batch_alter_table("calls") as batch:
        for name in ("resolution_by", "resolution_at", "resolution_department", "resolution"):
            batch.drop_column(name)
