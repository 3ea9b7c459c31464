"""Issue 11: the rotation position of each rota line, shared by a pair of callhub instances.

Revision ID: 0009_rotation_positions
Revises: 0008_call_resolution
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_rotation_positions"
down_revision = "0008_call_resolution"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rotation_positions",
        sa.Column("line", sa.String(128), primary_key=True),
        sa.Column("agent", sa.String(128), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("moved_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("rotation_positions")
