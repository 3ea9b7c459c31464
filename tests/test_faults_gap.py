"""Issue 11's "Done when", second half, with real processes: calls played while no callhub
runs are rebuilt from the CEL table when the next `callhub run` connects.

An AMI server over TCP plays calls (cut from recorded Asterisk traces) to `callhub run`
on PostgreSQL; the process is stopped with SIGTERM; ten more calls are played with no
callhub listening, and their CEL rows, made from the calls' own `Event: CEL` messages
as cel_pgsql with usegmtime=yes would write them, are put in a `cel` table in the test's
schema beside every earlier call's rows. The next `callhub run` stores those ten,
flagged `source = "cel"`, with the outcome and agent their streams imply; the calls it
had stored from AMI keep their AMI records; none is stored twice.
"""

from __future__ import annotations

import asyncio
import os
import random
import stat
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cel_fixtures import CEL_DDL
from daemon_fixtures import Daemon, fault_seed, write_config
from store_fixtures import TcpProxy, pg_url, via_proxy
from test_faults_wal import pbx_and_database, stored, until_stored

from callhub.ami.cel_ami import cel_rows
from callhub.ami.parser import AmiMessage
from callhub.sim.ami_server import AmiSimulator
from callhub.sim.calls import CallFactory, SynthCall, merge_calls
from callhub.store.db import Database

SEED = fault_seed(1111)
KINDS = ("answered", "missed", "abandoned", "hunt", "busy")


@dataclass
class World:
    sim: AmiSimulator
    db: Database  # the test's schema: callhub's tables and the site's `cel` table
    proxy: TcpProxy
    tmp_path: Path

    def config(self, directory: Path | None = None) -> Path:
        """A config in `directory` (default the test's): its own spool and ports."""
        path = write_config(directory or self.tmp_path, self.sim,
                            database_url=via_proxy(pg_url(), self.proxy))
        text = path.read_text("utf-8").replace(
            "\n[pbx.agents]",
            f'cel_database_url = "{pg_url()}"\ncel_table = "{self.db.schema}.cel"\n'
            "\n[pbx.agents]")
        path.write_text(text, "utf-8")
        return path

    async def insert_cel(self, calls: list[SynthCall]) -> None:
        """The calls' CEL rows as cel_pgsql inserts them (the serial numbers them)."""
        await self.insert_cel_of([m for _, m in merge_calls(calls)])

    async def insert_cel_of(self, messages: list[AmiMessage]) -> None:
        """The CEL rows of these messages of the PBX's stream, as cel_pgsql inserts them."""
        rows = list(cel_rows(messages))
        if not rows:
            return
        columns = [k for k in rows[0] if k != "id"]
        statement = sa.text(f'INSERT INTO "{self.db.schema}".cel ({", ".join(columns)}) '
                            f'VALUES ({", ".join(":" + c for c in columns)})')
        async with self.db.begin() as conn:
            await conn.execute(statement, [{k: r[k] for k in columns} for r in rows])


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with pbx_and_database(tmp_path) as (sim, proxy, db):
        async with db.begin() as conn:
            await conn.execute(sa.text(CEL_DDL.format(table=f'"{db.schema}".cel',
                                                      eventtime="timestamp")))
        yield World(sim, db, proxy, tmp_path)


async def start(config: Path) -> Daemon:
    daemon = Daemon(config)
    await daemon.start()
    await daemon.until(lambda: bool(daemon.events("daemon.started"))
                       and bool(daemon.events("ami.connected")))
    return daemon


def mismatches(row: dict[str, Any], call: SynthCall) -> list[str]:
    expected = call.expected
    return [f"{key}: {row[key]!r} != {expected.get(key)!r}"
            for key in ("direction", "outcome", "agent", "caller_number")
            if row[key] != expected.get(key)]


async def test_calls_played_while_callhub_is_down_are_stored_from_cel_once(
        world: World) -> None:
    factory = CallFactory(seed=SEED, uniqueid_counter=SEED * 100)
    t0 = time.time() - 3600

    def play(n: int, first: int) -> list[SynthCall]:
        return [factory.make(KINDS[(first + i) % len(KINDS)], t0 + (first + i) * 60,
                             number=f"+86139{first + i:08d}") for i in range(n)]

    before, during = play(5, 0), play(10, 5)
    config = world.config()
    first = await start(config)
    try:
        await world.sim.send([m for _, m in merge_calls(before)])
        await until_stored(world.db, [c.linkedid for c in before])
        assert await first.stop() == 0
    finally:
        await first.kill()
    state = world.tmp_path / "spool" / "ami-lab.state"
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o600
    assert not first.events("cel.recovered")  # its first session ever: no gap before it

    # Nobody listens: the PBX goes on, and cel_pgsql logs every call it sees.
    await world.sim.send([m for _, m in merge_calls(during)])
    await world.insert_cel(before + during)

    second = await start(config)
    try:
        await second.until(lambda: bool(second.events("cel.recovered")))
        await until_stored(world.db, [c.linkedid for c in before + during])
        assert await second.stop() == 0
    finally:
        await second.kill()
    [recovered] = second.events("cel.recovered")
    assert recovered["live"] == 0
    assert recovered["recovered"] >= len(during)  # and any earlier call the window touched
    rows = await stored(world.db)  # fails if a call is there twice
    assert set(rows) == {c.linkedid for c in before + during}
    for call in before:
        assert rows[call.linkedid]["source"] == "ami", call.linkedid
        assert not rows[call.linkedid]["rings_estimated"]
    for call in during:
        row = rows[call.linkedid]
        assert (row["source"], row["rings_estimated"]) == ("cel", True), call.linkedid
        assert mismatches(row, call) == [], (call.kind, call.linkedid)


async def test_sigkill_at_random_points_loses_no_call_where_cel_is_kept(world: World) -> None:
    """Issue 10's invariant where the site keeps CEL: `callhub run` SIGKILLed at random
    points of the PBX's stream, three times, the PBX going on while none runs, cel_pgsql
    logging every event as it happens. Whatever a kill caught (calls not yet read, read
    but not yet in the spool: the milliseconds before a group's fsync, which the spool
    alone cannot keep; in the spool but not stored; in progress), the last run leaves
    every call the PBX played stored exactly once, rebuilt from CEL where AMI's record
    was lost."""
    rng = random.Random(SEED)
    factory = CallFactory(seed=SEED, uniqueid_counter=SEED * 1000)
    t0 = time.time() - 3600
    synth = [factory.make(KINDS[i % len(KINDS)], t0 + i * 20, number=f"+86138{i:08d}")
             for i in range(36)]
    stream = [m for _, m in merge_calls(synth)]
    config = world.config()
    sent = 0

    async def play(upto: int) -> None:
        """The PBX plays its stream on to `upto`; cel_pgsql writes the rows as it goes."""
        nonlocal sent
        upto = min(upto, len(stream))
        await world.insert_cel_of(stream[sent:upto])
        await world.sim.send(stream[sent:upto])
        sent = upto

    for run in range(3):
        daemon = await start(config)
        try:
            if run == 0:  # a first call heard: the state file exists from here on
                firsts = {id(m) for m in synth[0].messages}
                await play(max(i for i, m in enumerate(stream) if id(m) in firsts) + 1)
                await daemon.until(lambda d=daemon: bool(d.events("call.finished")))
            until = sent + rng.randint(30, len(stream) // 5)
            while sent < min(until, len(stream)):
                await play(min(sent + rng.randint(1, 30), until))
            await asyncio.sleep(rng.uniform(0.0, 0.05))  # the random point: not a wait
        finally:
            await daemon.kill()
        await play(sent + rng.randint(100, 500))  # nobody listens: the PBX goes on

    last = await start(config)
    try:
        await play(len(stream))
        await until_stored(world.db, [c.linkedid for c in synth])
        assert await last.stop() == 0
    finally:
        await last.kill()
    rows = await stored(world.db)  # fails if a call is there twice
    assert set(rows) == {c.linkedid for c in synth}
    for call in synth:
        row = rows[call.linkedid]
        if row["source"] == "cel" or not row["incomplete"]:  # heard or rebuilt whole
            assert mismatches(row, call) == [], (row["source"], call.kind, call.linkedid)
    # Not vacuous: the kills left calls for CEL to rebuild, and for the spool or AMI.
    assert {row["source"] for row in rows.values()} == {"ami", "cel"}
