"""The dialect's INSERT that knows ON CONFLICT, for every module of the store."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection


def insert(conn: AsyncConnection, table: sa.Table) -> Any:
    """The dialect's INSERT that knows ON CONFLICT (both SQLite and PostgreSQL do)."""
    return insert_for(conn.dialect.name, table)


def insert_for(dialect: str, table: sa.Table) -> Any:
    """`insert` by the dialect's name (for statements built once per dialect)."""
    if dialect == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)
