"""Indexes for the API's reads: the worklist's pages and filters, the stats' periods.

- (status, first_missed_at, id) replaces (status, first_missed_at): each
  status's entries in page order, so `GET /worklist` (pending first, oldest
  first, keyset pages) reads an index range per status instead of sorting.
- (number, status): `GET /worklist?number=` over every status (the unique
  open-entry index covers only pending entries).
- (first_missed_at): the worklist figures of a `GET /stats` period.

Revision ID: 0003_query_indexes
Revises: 0002_followups
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0003_query_indexes"
down_revision = "0002_followups"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_worklist_status_first", table_name="worklist_entries")
    op.create_index("ix_worklist_status_first_id", "worklist_entries",
                    ["status", "first_missed_at", "id"])
    op.create_index("ix_worklist_number_status", "worklist_entries", ["number", "status"])
    op.create_index("ix_worklist_first_missed", "worklist_entries", ["first_missed_at"])


def downgrade() -> None:
    op.drop_index("ix_worklist_first_missed", table_name="worklist_entries")
    op.drop_index("ix_worklist_number_status", table_name="worklist_entries")
    op.drop_index("ix_worklist_status_first_id", table_name="worklist_entries")
    op.create_index("ix_worklist_status_first", "worklist_entries",
                    ["status", "first_missed_at"])
