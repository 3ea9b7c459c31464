"""Reading a cel_pgsql table on PostgreSQL, then rebuilding its calls.

The table is created with cel_pgsql's documented columns and types in a
schema of the test's own, filled with the traces' CEL events as cel_pgsql would
have inserted them (eventtime in UTC, ids from the serial in arrival order).
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
from traces_fixtures import all_traces, trace

from callhub.ami.cel import interpret
from callhub.ami.cel_ami import cel_rows
from callhub.ami.groundtruth import compare, load_truth, pbx_from_truth
from callhub.ami.parser import iter_file_messages
from callhub.cli import main
from callhub.records import CallRecord
from callhub.store.cel_source import read_cel

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


async def test_every_trace_read_back_from_the_cel_table_rebuilds_its_ground_truth(
        cel_db: CelDb) -> None:
    await cel_db.create()
    traces = all_traces()
    for path in traces:
        await cel_db.insert(trace_rows(path))
    for path in traces:
        rows = trace_rows(path)
        start, end = window_of(rows)
        read = await read_cel(cel_db.engine, start=start, end=end, table=cel_db.table)
        assert [(r["linkedid"], r["uniqueid"], r["eventtype"]) for r in read] == [
            (r["linkedid"], r["uniqueid"], r["eventtype"]) for r in rows], path.stem
        truth = load_truth(path)
        assert compare(interpret(read, pbx_from_truth(truth)), truth) == [], path.stem


async def test_a_window_touching_part_of_a_call_reads_the_whole_call(cel_db: CelDb) -> None:
    await cel_db.create()
    first = trace_rows(trace("01_answered_caller_hangup"))
    second = trace_rows(trace("02_answered_agent_hangup"))
    await cel_db.insert(first + second)
    answer = next(r["eventtime"] for r in first if r["eventtype"] == "ANSWER")
    start = answer.replace(tzinfo=UTC)
    read = await read_cel(cel_db.url, start=start, end=start + timedelta(seconds=1),
                          table=cel_db.table)
    assert [r["id"] for r in read] == list(range(1, len(first) + 1))
    assert {r["linkedid"] for r in read} == {first[0]["linkedid"]}
    assert read[0]["eventtime"] == first[0]["eventtime"]  # microseconds kept, naive UTC


async def test_a_window_without_rows_reads_nothing(cel_db: CelDb) -> None:
    await cel_db.create()
    rows = trace_rows(trace("01_answered_caller_hangup"))
    await cel_db.insert(rows)
    start, _ = window_of(rows)
    earlier = await read_cel(cel_db.engine, start=start - timedelta(hours=1),
                             end=start, table=cel_db.table)
    assert earlier == []


async def test_naive_bounds_are_utc_and_timestamptz_columns_work(cel_db: CelDb) -> None:
    await cel_db.create(eventtime="timestamptz")
    rows = trace_rows(trace("p01_sip_direct_utf8_caller_hangup"))
    await cel_db.insert(rows, zoned=True)
    start, end = window_of(rows)
    naive = await read_cel(cel_db.engine, start=start.replace(tzinfo=None),
                           end=end.replace(tzinfo=None), table=cel_db.table)
    assert len(naive) == len(rows)
    truth = load_truth(trace("p01_sip_direct_utf8_caller_hangup"))
    assert compare(interpret(naive, pbx_from_truth(truth)), truth) == []


async def test_a_table_that_is_not_cel_is_refused(cel_db: CelDb) -> None:
    async with cel_db.engine.begin() as conn:
        await conn.execute(sa.text(f'CREATE TABLE "{cel_db.schema}".cel (id int)'))
    now = datetime.now(UTC)
    with pytest.raises(ValueError, match="not a CEL table"):
        await read_cel(cel_db.engine, start=now, end=now, table=cel_db.table)


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


async def test_backfill_command_prints_the_calls_of_a_window(cel_db: CelDb,
                                                             tmp_path: Path) -> None:
    """`callhub backfill` as an admin runs it: a config, a window, the CEL database."""
    await cel_db.create()
    names = ["03_abandoned_ringing", "04_missed_noanswer_voicemail", "06_huntgroup_rna_then_answer"]
    rows = {name: trace_rows(trace(name)) for name in names}
    for name in names:
        await cel_db.insert(rows[name])
    truths = {name: load_truth(trace(name)) for name in names}
    config = tmp_path / "callhub.toml"
    config.write_text(pbx_toml(truths[names[0]]["expected"]["config"]), encoding="utf-8")
    start = window_of(rows[names[0]])[0]
    end = window_of(rows[names[-1]])[1]
    code, out, err = await run_callhub(
        "backfill", "--config", str(config), "--from", start.isoformat(),
        "--to", end.isoformat(), "--cel-database-url", cel_db.url,
        "--cel-table", cel_db.table, "--dry-run", cwd=tmp_path)
    assert code == 0, err
    records = [CallRecord.from_dict(json.loads(line)) for line in out.splitlines()]
    assert len(records) == len(names)
    assert all(r.source == "cel" and r.pbx == "lab" for r in records)
    together = {"expected": {**truths[names[0]]["expected"],
                             "calls": [c for t in truths.values() for c in t["expected"]["calls"]]}}
    assert compare(records, together) == []
    assert "3 calls rebuilt from CEL, none stored" in err


def test_backfill_command_says_what_is_wrong(cel_db: CelDb, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CALLHUB_CONFIG", raising=False)
    now = datetime.now(UTC).isoformat()
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    window = ["backfill", "--pbx", "main", "--from", now, "--to", later]
    assert main(["backfill", "--pbx", "main", "--from", now, "--to", now,
                 "--cel-database-url", cel_db.url]) == 2
    assert "--to must be after --from" in capsys.readouterr().err
    assert main(window) == 2
    assert "give --cel-database-url" in capsys.readouterr().err
    assert main([*window, "--cel-database-url", cel_db.url,
                 "--cel-table", f"{cel_db.schema}.nothing"]) == 1
    assert f"no table '{cel_db.schema}.nothing'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["backfill", "--from", "yesterday", "--to", later])
    assert "not an ISO 8601 time" in capsys.readouterr().err
