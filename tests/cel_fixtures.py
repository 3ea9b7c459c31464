"""A cel_pgsql `cel` table on PostgreSQL in a schema of the test's own, filled from the
traces' CEL events as cel_pgsql would insert them; `callhub` as a child process.

Used by the CEL reader's tests and the gap recovery's.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from store_fixtures import pg_url

from callhub.ami.cel_ami import cel_rows
from callhub.ami.parser import iter_file_messages

# Asterisk's `cel` table for cel_pgsql (its documented DDL) with the `extra`
# column Asterisk 11+ fills; `{eventtime}` lets a test try timestamptz too.
CEL_DDL = """
CREATE TABLE {table} (
    id serial,
    eventtype varchar(30) NOT NULL,
    eventtime {eventtime} NOT NULL,
    userdeftype varchar(255) NOT NULL,
    cid_name varchar(80) NOT NULL,
    cid_num varchar(80) NOT NULL,
    cid_ani varchar(80) NOT NULL,
    cid_rdnis varchar(80) NOT NULL,
    cid_dnid varchar(80) NOT NULL,
    exten varchar(80) NOT NULL,
    context varchar(80) NOT NULL,
    channame varchar(80) NOT NULL,
    appname varchar(80) NOT NULL,
    appdata varchar(80) NOT NULL,
    amaflags int NOT NULL,
    accountcode varchar(20) NOT NULL,
    peeraccount varchar(20) NOT NULL,
    uniqueid varchar(150) NOT NULL,
    linkedid varchar(150) NOT NULL,
    userfield varchar(255) NOT NULL,
    peer varchar(80) NOT NULL,
    extra varchar(512) NOT NULL
)
"""


@dataclass
class CelDb:
    engine: AsyncEngine
    url: str
    schema: str

    @property
    def table(self) -> str:
        return f"{self.schema}.cel"

    async def create(self, eventtime: str = "timestamp") -> None:
        async with self.engine.begin() as conn:
            await conn.execute(sa.text(CEL_DDL.format(table=f'"{self.schema}".cel',
                                                      eventtime=eventtime)))

    async def insert(self, rows: list[dict[str, Any]], zoned: bool = False) -> None:
        """Insert as cel_pgsql does: one row per event, the serial numbering them."""
        columns = [k for k in rows[0] if k != "id"]
        statement = sa.text(
            f'INSERT INTO "{self.schema}".cel ({", ".join(columns)}) '
            f'VALUES ({", ".join(":" + c for c in columns)})')
        values = [{k: (r[k].replace(tzinfo=UTC) if zoned and k == "eventtime" else r[k])
                   for k in columns} for r in rows]
        async with self.engine.begin() as conn:
            await conn.execute(statement, values)


@pytest.fixture
async def cel_db() -> AsyncIterator[CelDb]:
    url = pg_url()
    schema = f"t_{uuid.uuid4().hex[:16]}"
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield CelDb(engine, url, schema)
    finally:
        async with engine.begin() as conn:
            await conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        await engine.dispose()


def trace_rows(path: Path) -> list[dict[str, Any]]:
    return list(cel_rows(iter_file_messages(path)))


def window_of(rows: list[dict[str, Any]]) -> tuple[datetime, datetime]:
    """[first row, just after the last row) as aware UTC times."""
    times = [row["eventtime"].replace(tzinfo=UTC) for row in rows]
    return min(times), max(times) + timedelta(microseconds=1)


def pbx_toml(config: dict[str, Any]) -> str:
    """A `[[pbx]]` table from a trace's expected.config (JSON strings are TOML strings)."""
    lines = ["[[pbx]]", f"name = {json.dumps(config['pbx'])}"]
    for key, value in config.items():
        if key not in ("pbx", "agents"):
            lines.append(f"{key} = {json.dumps(value)}")
    lines.append("[pbx.agents]")
    lines.extend(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in config["agents"].items())
    return "\n".join(lines) + "\n"


async def run_callhub(*args: str, cwd: Path) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLHUB_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "callhub", *args, cwd=cwd, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
