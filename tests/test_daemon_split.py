"""Past one machine (issue 15, docs/scaling.md): PBXs split across several `callhub run`
processes by configuration, all writing to one PostgreSQL.

Two real `callhub run` processes, each configured with two of four AMI simulators
(real TCP), both writing into one PostgreSQL schema. Every PBX plays the same calls
(recorded Asterisk calls, renamed and re-timed), so the four PBXs' linkedids are
the same: only the `(pbx, linkedid)` key keeps them apart, as it must when two
Asterisks count uniqueids alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import aiohttp
import sqlalchemy as sa
from ami_fixtures import SIM_SECRET, SIM_USER
from daemon_fixtures import Daemon, fault_seed, write_pbxs_config
from sqlalchemy.engine import make_url
from store_fixtures import (
    DbFactory,
    TcpProxy,
    assert_worklist_counts_each_call_once,
    pg_url,
    via_proxy,
)

from callhub.sim.ami_server import AmiSimulator
from callhub.sim.calls import CallFactory, SynthCall, merge_calls
from callhub.sim.mix import DEFAULT_MIX, MixSettings, generate_mix
from callhub.store.db import Database
from callhub.store.tables import calls

SEED = fault_seed(1515)
CALLS_PER_PBX = 12
TOKEN = "supervisor-token-split-0001"
OWNERS = {"east": ("east-1", "east-2"), "west": ("west-1", "west-2")}
CHECKED = ("direction", "outcome", "reason", "caller_number", "called_number")


@contextlib.asynccontextmanager
async def four_pbxs_and_one_database(tmp_path: Path) -> AsyncIterator[
        tuple[dict[str, AmiSimulator], Database, str]]:
    """Four AMI simulators by PBX name; a PostgreSQL schema of the test's own, and the
    URL (through a proxy that puts every session in that schema) the daemons use."""
    factory = DbFactory("postgresql", tmp_path)
    db = await factory.create()
    url = make_url(pg_url())
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432, schema=db.schema)
    await proxy.start()
    sims = {name: AmiSimulator(username=SIM_USER, secret=SIM_SECRET)
            for names in OWNERS.values() for name in names}
    for sim in sims.values():
        await sim.start()
    try:
        yield sims, db, via_proxy(pg_url(), proxy)
    finally:
        for sim in sims.values():
            await sim.stop()
        await proxy.stop()
        await factory.cleanup()


def the_calls() -> list[SynthCall]:
    """The calls every PBX plays: the same seed and counter, so the same linkedids."""
    kinds = {k: w for k, w in DEFAULT_MIX.items() if k not in ("ringgroup_local", "held")}
    made = generate_mix(time.time() - 3600, MixSettings(rate_per_minute=30.0, kinds=kinds),
                        seed=SEED, factory=CallFactory(seed=SEED, uniqueid_counter=SEED))
    return [next(made) for _ in range(CALLS_PER_PBX)]


async def stored_rows(db: Database) -> list[dict[str, Any]]:
    async with db.connection() as conn:
        if not await conn.run_sync(lambda c: sa.inspect(c).has_table("calls")):
            return []
        return [dict(r) for r in (await conn.execute(sa.select(calls))).mappings()]


async def until_rows(db: Database, count: int, daemons: Iterable[Daemon],
                     within: float = 30.0) -> None:
    """Poll the database (the daemons are other processes) until `count` calls are there;
    if they never are, say what the daemons' writers logged."""
    deadline = time.monotonic() + within
    while len(await stored_rows(db)) < count:
        if time.monotonic() > deadline:
            said = [line for d in daemons for line in d.lines
                    if '"writer.' in line or "quarantine" in line or '"level":"error"' in line]
            raise AssertionError(f"{len(await stored_rows(db))} of {count} calls stored; the "
                                 f"writers said:\n" + "".join(said[-20:]))
        await asyncio.sleep(0.05)  # a poll of another process's database, not a pause


async def api_calls(daemon: Daemon) -> list[tuple[str, str]]:
    """(pbx, linkedid) of every call GET /api/v1/calls lists, page after page."""
    listen = next(e["url"] for e in daemon.events("daemon.api"))
    out: list[tuple[str, str]] = []
    cursor: str | None = None
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        while True:
            params = {"limit": "7", **({"cursor": cursor} if cursor else {})}
            async with http.get(f"{listen}/api/v1/calls", params=params) as response:
                assert response.status == 200, await response.text()
                page = await response.json()
            out += [(item["pbx"], item["linkedid"]) for item in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                return out


async def test_two_processes_each_own_half_the_pbxs_and_write_one_database(
        tmp_path: Path) -> None:
    played = the_calls()
    stream = [m for _, m in merge_calls(played)]
    expected = {c.linkedid: c.expected for c in played}
    assert len(expected) == CALLS_PER_PBX
    async with four_pbxs_and_one_database(tmp_path) as (sims, db, url):
        daemons: dict[str, Daemon] = {}
        try:
            for owner, names in OWNERS.items():
                directory = tmp_path / owner
                directory.mkdir()
                config = write_pbxs_config(directory, {n: sims[n] for n in names},
                                           database_url=url, tokens=[f"supervisor:{TOKEN}"])
                daemons[owner] = daemon = Daemon(config)
                await daemon.start()
            for owner, daemon in daemons.items():
                await daemon.until(lambda d=daemon, o=owner: bool(d.events("daemon.started"))
                                   and {e["pbx"] for e in d.events("ami.connected")}
                                   == set(OWNERS[o]))
            await asyncio.gather(*(sim.send(stream) for sim in sims.values()))
            await until_rows(db, CALLS_PER_PBX * len(sims), daemons.values())

            rows = await stored_rows(db)
            keys = [(r["pbx"], r["linkedid"]) for r in rows]
            assert len(keys) == len(set(keys)), "a call was stored twice"
            assert set(keys) == {(pbx, lid) for pbx in sims for lid in expected}
            for row in rows:
                want = expected[row["linkedid"]]
                assert {k: row[k] for k in CHECKED if k in want} == \
                    {k: want[k] for k in CHECKED if k in want}, (row["pbx"], row["linkedid"])

            # The worklist, kept by both writers: each missed call counted once.
            await assert_worklist_counts_each_call_once(db)

            # Each process logged in to its own PBXs only, and finished only their calls.
            for sim in sims.values():
                assert sim.stats.logins == 1
            for owner, daemon in daemons.items():
                finished = [(e["pbx"], e["linkedid"]) for e in daemon.events("call.finished")]
                assert sorted(finished) == sorted(
                    (pbx, lid) for pbx in OWNERS[owner] for lid in expected), owner

            # Either process's API lists every call of every PBX, once.
            for owner, daemon in daemons.items():
                listed = await api_calls(daemon)
                assert sorted(listed) == sorted(keys), owner
            for daemon in daemons.values():
                assert await daemon.stop() == 0
        finally:
            for daemon in daemons.values():
                await daemon.kill()
