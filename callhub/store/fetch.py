"""The rows of a prebuilt SELECT: straight from asyncpg on PostgreSQL, through SQLAlchemy elsewhere.

`conn` is an `AsyncConnection` or, on `Database.read`'s pool, a `PgReader`
(`callhub.store.read_pool`). The API's list pages run a handful of
statements, each built once per filter combination (`callhub.store.queries`),
thousands of times. Through SQLAlchemy every execution pays for the
statement's cache key, the parameters' processing, a Row per row and a result
processor per value: about a quarter of the Python a page of 50 calls costs.
On PostgreSQL this module compiles each statement once (its SQL, which
parameter goes in which position, the values the statement itself fixes) and
hands SQL and values to the asyncpg connection; its Records are read as they
come. The values are the same as SQLAlchemy's: asyncpg hands timestamps back
as aware UTC datetimes (what `UtcDateTime` makes of them) and JSON through the
codecs SQLAlchemy's dialect registers (the read pool registers the same).

A failure becomes a SQLAlchemy `DBAPIError`, as from an ordinary execution;
when the driver's connection died with it, the error says so
(`connection_invalidated`; an `AsyncConnection` is invalidated too), so
`Database.read` can try once more on a new one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from callhub.store.db import driver_connection
from callhub.store.read_pool import PgReader, Reader

_FIXED = object()  # a parameter whose value is part of the statement


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A statement compiled for asyncpg: its SQL and how to fill its positions."""

    sql: str
    positions: tuple[tuple[str, Any, Callable[[Any], Any] | None], ...]
    """Per position ($1, $2, ...): the parameter's name, its value when the statement fixes
    it (else _FIXED: taken from the call's parameters), and its type's bind processor."""

    def values(self, params: Mapping[str, Any]) -> list[Any]:
        out = []
        for name, fixed, process in self.positions:
            value = params[name] if fixed is _FIXED else fixed
            out.append(process(value) if process is not None and value is not None else value)
        return out


@functools.lru_cache(maxsize=1024)
def _prepare(stmt: sa.Select[Any], dialect: Dialect) -> _Prepared:
    compiled = stmt.compile(dialect=dialect)
    positions = []
    for name in compiled.positiontup or ():
        bind = compiled.binds[name]
        if bind.expanding:
            raise ValueError(f"{name}: an expanding parameter needs SQLAlchemy's execution")
        fixed = _FIXED if bind.required or bind.callable is not None else bind.value
        positions.append((name, fixed, bind.type.bind_processor(dialect)))
    return _Prepared(compiled.string, tuple(positions))


async def _records(conn: Reader, stmt: sa.Select[Any],
                   params: Mapping[str, Any]) -> list[Any]:
    prepared = _prepare(stmt, conn.dialect)
    values = prepared.values(params)
    driver = conn.driver if isinstance(conn, PgReader) else await driver_connection(conn)
    try:
        return list(await driver.fetch(prepared.sql, *values))
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        dead = _closed(driver)
        if dead and isinstance(conn, AsyncConnection):
            await conn.invalidate(exc)
        raise sa.exc.DBAPIError(prepared.sql, None, exc, connection_invalidated=dead) from exc


def _closed(driver: Any) -> bool:
    try:
        return bool(driver.is_closed())
    except asyncpg.InterfaceError:  # a pool's connection, let go of by the pool as it closed
        return True


async def dicts(conn: Reader, stmt: sa.Select[Any], params: Mapping[str, Any]
                ) -> list[dict[str, Any]]:
    """The rows of `stmt` with `params`, each a dict by column name."""
    if isinstance(conn, AsyncConnection) and conn.dialect.name != "postgresql":
        result = await conn.execute(stmt, dict(params))
        keys = list(map(str, result.keys()))  # plain str: faster to JSON
        return [dict(zip(keys, row, strict=True)) for row in result.all()]
    records = await _records(conn, stmt, params)
    if not records:
        return []
    keys = list(records[0].keys())
    return [dict(zip(keys, record, strict=True)) for record in records]  # faster than dict(record)


async def rows(conn: Reader, stmt: sa.Select[Any], params: Mapping[str, Any]
               ) -> Sequence[Sequence[Any]]:
    """The rows of `stmt` with `params`, each a sequence in the column order of `stmt`."""
    if isinstance(conn, AsyncConnection) and conn.dialect.name != "postgresql":
        found: Sequence[Sequence[Any]] = (await conn.execute(stmt, dict(params))).all()
        return found
    records: list[Sequence[Any]] = await _records(conn, stmt, params)
    return records
