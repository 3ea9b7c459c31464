"""PostgreSQL's bulk path for a batch of calls: COPY into a staging table, one merge.

Sending 500 calls as a multi-row VALUES upsert costs more in SQLAlchemy's
parameter handling (a bind parameter per value, rendered, cast and
converted one by one) than in PostgreSQL. Here the rows go as asyncpg's
binary COPY (`copy_records_to_table`, on SQLAlchemy's driver connection, in
the same transaction) into a temporary table of the session, and one
`INSERT ... SELECT ... ON CONFLICT (pbx, linkedid) DO UPDATE` merges them
into `calls`. Attempts need no merge (those of the batch's stored calls are
deleted first): they are COPYed straight into `attempts`, and the
worklist's links into `worklist_calls`. Lists of keys go
as one array parameter each (`= ANY($1)`), not an IN list of a parameter
per key.

SQLite keeps the executemany path of `callhub.store.save`; both give the
same rows (tests/test_store_batch.py).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from callhub.records import CallRecord
from callhub.store.db import driver_connection
from callhub.store.rows import ATTEMPT_COLUMNS, CALL_COLUMNS, TIME_COLUMNS, TRANSFERS, call_plain

T = TypeVar("T")

# Off: PostgreSQL takes the executemany path too (bench/ingest.py measures it as the
# baseline in the same run).
ENABLED = True
STAGE = "callhub_stage_calls"
_KEY = ("pbx", "linkedid")

_STAGED = CALL_COLUMNS[:-1]  # all but updated_at, the batch's (a parameter of the merge)


def _exact_time(column: str) -> str:
    """POSIX seconds (float8) as the timestamptz `datetime.fromtimestamp(x, UTC)` gives,
    to the microsecond: whole seconds, then the fraction's microseconds rounded half to
    even as CPython does (`round` is rint). Made by PostgreSQL in ~0.06 us; in Python a
    datetime and asyncpg's encoding of it cost ~0.7 us, four of them a call."""
    return (f"to_timestamp(trunc({column})) "
            f"+ round(({column} - trunc({column})) * 1e6) * interval '1 microsecond'")


# The staging table has the columns of `calls` with their types (a value too long fails
# as it would in `calls`), but its times as POSIX seconds, and none of its constraints or
# defaults (the sequence of ids is not touched); its rows go at commit. It lives as long
# as the session: created once per connection, again after a rollback took it away.
_CREATE_STAGE = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {STAGE} ON COMMIT DELETE ROWS AS SELECT 0 AS ord, "
    + ", ".join(f"0::float8 AS {c}" if c in TIME_COLUMNS else c for c in _STAGED)
    + " FROM calls WITH NO DATA")
_INSERT = (f"INSERT INTO calls ({', '.join(CALL_COLUMNS)}) SELECT "
           + ", ".join(_exact_time(c) if c in TIME_COLUMNS else c for c in _STAGED)
           + f", $1::timestamptz FROM {STAGE} ORDER BY ord ")
_MERGE = (_INSERT + "ON CONFLICT (pbx, linkedid) DO UPDATE SET "
          + ", ".join(f"{c} = excluded.{c}" for c in CALL_COLUMNS if c not in _KEY)
          + " RETURNING id, pbx, linkedid")
# Calls the batch found new: a plain INSERT, a sixth cheaper in PostgreSQL than the
# merge's speculative insertion (99 against 83 ms for 7,497 calls). Only their ids come
# back: the sequence numbers the rows in the SELECT's order (`ord`), so the ids sorted
# are the records' in order (as worklist entries' are), and no key is sent back and
# looked up a call.
_ADD = _INSERT + "RETURNING id"


COPY_FROM = 16
"""Calls in a batch from which they go by COPY and merge (three round trips: the staging
table, COPY, merge); a smaller batch is one multi-row upsert, one round trip (a lone call
is most of what a quiet site writes, and its lag is round trips)."""


def used(conn: AsyncConnection) -> bool:
    """Whether batches on `conn` take this path (PostgreSQL)."""
    return ENABLED and conn.dialect.name == "postgresql"


def copies(conn: AsyncConnection, calls: int) -> bool:
    """Whether a batch of `calls` on `conn` goes by COPY and merge (else by upsert)."""
    return calls >= COPY_FROM and used(conn)


async def begin_batch(conn: AsyncConnection) -> None:
    """Plan the batch's statements for their values (this transaction only).

    asyncpg prepares every statement; after five runs PostgreSQL may keep a
    generic plan, made without the arrays' lengths and, on young tables,
    from statistics that say they are empty: a nested loop comparing every
    row with every value of the array (tens of milliseconds at 500 calls,
    where a plan for the values, with `= ANY` of a known array hashed, takes
    a fraction of one). Planning each of the batch's few statements costs
    far less. A batch too small for COPY (`copies`) keeps the cached plans:
    planning its dozen statements would cost more than running them.
    `copy_rows` lifts it for its COPY (see there).
    """
    await conn.execute(sa.text(_CUSTOM_PLANS))


_CUSTOM_PLANS = "SET LOCAL plan_cache_mode = force_custom_plan"
_CACHED_PLANS = "SET LOCAL plan_cache_mode = auto"


async def driver(conn: AsyncConnection) -> Any:
    """The asyncpg connection under `conn`, inside `conn`'s transaction.

    SQLAlchemy's asyncpg adapter opens the transaction with its first
    statement; COPY sent before it would commit on its own, so one is sent.
    """
    driver_conn = await driver_connection(conn)
    if not driver_conn.is_in_transaction():
        await conn.execute(sa.text("SELECT 1"))
    return driver_conn


async def merge_calls(conn: AsyncConnection, records: Sequence[CallRecord], now: datetime,
                      meanwhile: Callable[[], T], *, new: bool = False
                      ) -> tuple[list[int], T]:
    """Upsert calls (distinct keys) by (pbx, linkedid); their ids in the order of
    `records`, and what `meanwhile` returned. New calls get their ids in that order.

    `meanwhile` (Python only, no statement) runs while PostgreSQL merges: the merge
    is most of a batch's time in PostgreSQL (~15 us a call, its indexes), and the two
    take turns on one connection otherwise.

    `new`: none of the calls was stored when the batch read them; they are inserted,
    not merged. One that another writer stores meanwhile then fails the batch (a
    unique violation, a data error), for a caller that stores it again in parts
    (CallWriter), where the merge takes it."""
    pg = await driver(conn)
    # One round trip: the table if this session lacks it, empty (an earlier run of the
    # same transaction left its rows).
    await pg.execute(f"{_CREATE_STAGE}; DELETE FROM {STAGE}")
    await pg.copy_records_to_table(
        STAGE, columns=("ord", *_STAGED),
        records=[(n, *_for_copy(call_plain(r))) for n, r in enumerate(records)])
    merging = asyncio.ensure_future(pg.fetch(_ADD if new else _MERGE, now))
    try:
        await asyncio.sleep(0)  # the merge is sent (its statement is prepared already)
        done = meanwhile()
    finally:
        merged = await merging
    if new:
        return sorted(row[0] for row in merged), done
    by_key = {(row[1], row[2]): row[0] for row in merged}
    return [by_key[(r.pbx, r.linkedid)] for r in records], done


def _for_copy(values: tuple[Any, ...]) -> tuple[Any, ...]:
    """asyncpg sends a json value as its text."""
    transfers = values[TRANSFERS]
    text = json.dumps(transfers) if transfers else "[]"
    return (*values[:TRANSFERS], text, *values[TRANSFERS + 1:])


async def replace_attempts(conn: AsyncConnection, replaced: Sequence[int],
                           rows: Sequence[tuple[Any, ...]]) -> None:
    """Delete the attempts of the calls `replaced`, COPY in `rows` (`ATTEMPT_COLUMNS`).

    One round trip for the COPY: `attempts` has no foreign key (migration
    0012_attempts_cascade), so no check is planned per row and the batch's plan mode
    can stay as it is (`copy_rows`)."""
    pg = await driver(conn)
    if replaced:
        await pg.execute("DELETE FROM attempts WHERE call_id = ANY($1::integer[])",
                         list(replaced))
    if rows:
        await pg.copy_records_to_table("attempts", columns=list(ATTEMPT_COLUMNS), records=rows)


async def copy_rows(conn: AsyncConnection, table: str, columns: Sequence[str],
                    rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert `rows` (values of `columns`) into `table`, a table with foreign keys (the
    worklist's links), by COPY, in `conn`'s transaction.

    With cached plans: every row's foreign-key check runs one query, and under the
    batch's `force_custom_plan` PostgreSQL planned it again for each row (an
    attempt's COPY took 18 us instead of 9 while attempts had a key, a worklist link's
    two checks 30 us); the batch's own statements get theirs back afterwards. Two round
    trips more than the COPY (a table without keys is COPYed straight, as
    `replace_attempts` does).
    """
    pg = await driver(conn)
    await pg.execute(_CACHED_PLANS)
    await pg.copy_records_to_table(table, columns=list(columns), records=rows)
    await pg.execute(_CUSTOM_PLANS)
