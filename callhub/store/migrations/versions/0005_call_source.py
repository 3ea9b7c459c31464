"""Issue 11: where a call record came from, and whether its rings were estimated.

- calls.source: "ami" (the live event stream) or "cel" (rebuilt from
  Asterisk's CEL table for a gap no AMI session saw).
- calls.rings_estimated: rings and ring_seconds run from the agent leg's
  creation to its answer (CEL has no ringing event).

Revision ID: 0005_call_source
Revises: 0004_truncated_quarantine
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_call_source"
down_revision = "0004_truncated_quarantine"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("calls") as batch:
        batch.add_column(sa.Column("source", sa.String(8), nullable=False,
                                   server_default="ami"))
        batch.add_column(sa.Column("rings_estimated", sa.Boolean, nullable=False,
                                   server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("calls") as batch:
        batch.drop_column("rings_estimated")
        batch.drop_column("source")
