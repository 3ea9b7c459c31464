"""Alembic environment: runs on the connection `callhub.store.migrate` hands over.

The engine is async (aiosqlite, asyncpg); `migrate.upgrade` opens it and
calls Alembic inside `AsyncConnection.run_sync`, so here the connection is a
plain synchronous one and no URL is needed.
"""

from __future__ import annotations

from alembic import context

from callhub.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run the migrations with `callhub db upgrade` "
                       "(callhub.store.migrate.upgrade), not the alembic command")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True,
                  compare_type=True)
with context.begin_transaction():
    context.run_migrations()
