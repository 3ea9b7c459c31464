"""Splitting a statement's values so each statement stays within the database's
bound-parameter limit (used by the worklist and by saving calls)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection


def chunks(values: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """`values` in slices of at most `size` (for statements with one parameter per value)."""
    for start in range(0, len(values), size):
        yield values[start:start + size]


def in_chunk(conn: AsyncConnection, lists: int = 1) -> int:
    """How many values each of `lists` IN lists of one statement may hold on this database
    (SQLite before 3.32 binds at most 999 parameters, asyncpg 32767)."""
    return max(1, conn.dialect.insertmanyvalues_max_parameters // lists - 16)
