"""Splitting a statement's values so each statement stays within the database's
bound-parameter limit (used by the worklist and by saving calls), and lists
of values as one array parameter on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from callhub.store import bulk


def chunks(values: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """`values` in slices of at most `size` (for statements with one parameter per value)."""
    for start in range(0, len(values), size):
        yield values[start:start + size]


def in_chunk(conn: AsyncConnection, lists: int = 1) -> int:
    """How many values each of `lists` IN lists of one statement may hold on this database
    (SQLite before 3.32 binds at most 999 parameters, asyncpg 32767)."""
    return max(1, conn.dialect.insertmanyvalues_max_parameters // lists - 16)


def is_in(conn: AsyncConnection, column: sa.ColumnElement[Any], values: Sequence[Any]
          ) -> sa.ColumnElement[bool]:
    """`column IN values`. On PostgreSQL one array parameter (`= ANY($1)`), however many
    values: sent as one binary array instead of a rendered parameter each (see
    `set_chunk`; planned well with `bulk.begin_batch`'s custom plans); elsewhere a
    parameter per value."""
    if bulk.used(conn):
        return column == sa.any_(sa.bindparam(None, list(values),
                                              type_=postgresql.ARRAY(column.type)))
    return column.in_(values)


def set_chunk(conn: AsyncConnection, lists: int = 1) -> int:
    """How many values each of `lists` `is_in` lists of one statement may hold: any number
    on PostgreSQL (one array each), `in_chunk` elsewhere."""
    if bulk.used(conn):
        return 1 << 30
    return in_chunk(conn, lists)
