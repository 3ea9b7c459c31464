"""Issue 15: an attempt's call is no longer checked row by row by a foreign key; deleting
calls still deletes their attempts, by a trigger.

On PostgreSQL the foreign key's check ran once per attempt COPYed (a query and a
`FOR KEY SHARE` lock of its call): 4.1 µs of the ~7 µs an attempt costs, 35 ms of
PostgreSQL for the 8,548 attempts of the bench's 7,497 calls (bench/README.md). The
writer is the only writer of attempts, and it writes them in the transaction that
merged their call, under the id that merge returned while it still holds the call's
row lock, so the check could never fail. What the key also did, delete a call's
attempts with the call (`ON DELETE CASCADE`), a trigger now does: on PostgreSQL once
per statement from its transition table (and on TRUNCATE), on SQLite per row.

Revision ID: 0012_attempts_cascade
Revises: 0011_rollup_figures
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0012_attempts_cascade"
down_revision = "0011_rollup_figures"
branch_labels = None
depends_on = None

# `SET search_path FROM CURRENT`: the function finds the `attempts` of the schema it was
# made in, whatever the deleting session's search_path. `OR REPLACE`: a schema emptied of
# its tables by hand keeps the functions, and the migration runs again on it.
_PG_UP = (
    """CREATE OR REPLACE FUNCTION callhub_delete_attempts() RETURNS trigger LANGUAGE plpgsql
       SET search_path FROM CURRENT AS $$
       BEGIN
         DELETE FROM attempts WHERE call_id IN (SELECT id FROM gone);
         RETURN NULL;
       END $$""",
    """CREATE OR REPLACE FUNCTION callhub_truncate_attempts() RETURNS trigger LANGUAGE plpgsql
       SET search_path FROM CURRENT AS $$
       BEGIN
         TRUNCATE attempts;
         RETURN NULL;
       END $$""",
    """CREATE TRIGGER calls_delete_attempts AFTER DELETE ON calls
       REFERENCING OLD TABLE AS gone FOR EACH STATEMENT
       EXECUTE FUNCTION callhub_delete_attempts()""",
    """CREATE TRIGGER calls_truncate_attempts AFTER TRUNCATE ON calls
       FOR EACH STATEMENT EXECUTE FUNCTION callhub_truncate_attempts()""",
)
_PG_DOWN = (
    "DROP TRIGGER calls_truncate_attempts ON calls",
    "DROP TRIGGER calls_delete_attempts ON calls",
    "DROP FUNCTION callhub_truncate_attempts()",
    "DROP FUNCTION callhub_delete_attempts()",
)
_SQLITE_TRIGGER = """CREATE TRIGGER calls_delete_attempts AFTER DELETE ON calls FOR EACH ROW
BEGIN DELETE FROM attempts WHERE call_id = OLD.id; END"""
# SQLite's key has no name: batch mode names it by this convention to drop it.
_NAMING = {"fk": "fk_%(table_name)s_%(column_0_name)s"}


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint("attempts_call_id_fkey", "attempts", type_="foreignkey")
        for statement in _PG_UP:
            op.execute(statement)
        return
    with op.batch_alter_table("attempts", naming_convention=_NAMING) as batch:
        batch.drop_constraint("fk_attempts_call_id", type_="foreignkey")
    op.execute(_SQLITE_TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for statement in _PG_DOWN:
            op.execute(statement)
        op.execute("DELETE FROM attempts WHERE call_id NOT IN (SELECT id FROM calls)")
        op.create_foreign_key("attempts_call_id_fkey", "attempts", "calls", ["call_id"], ["id"],
                              ondelete="CASCADE")
        return
    op.execute("DROP TRIGGER calls_delete_attempts")
    op.execute("DELETE FROM attempts WHERE call_id NOT IN (SELECT id FROM calls)")
    with op.batch_alter_table("attempts", naming_convention=_NAMING) as batch:
        batch.create_foreign_key("fk_attempts_call_id", "calls", ["call_id"], ["id"],
                                 ondelete="CASCADE")
