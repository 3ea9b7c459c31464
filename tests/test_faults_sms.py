"""The SMS after the call through SIGKILLs (issue 13's "a crash ... loses none and sends none
twice"), tried as an operator would break it: `callhub run` as a real process, an AMI server
over real TCP playing synthetic calls cut from recorded Asterisk traces, and a local webhook
gateway that takes a while to answer, so a SIGKILL lands while messages are being sent.

The gateway fires each kill itself, at a random POST: on its arrival (the gateway has the
message, callhub has no answer yet) or just after answering it (callhub may not have
recorded it sent). Each run is killed so, restarted, and the last one runs to the end.

The invariant, checked from the gateway's own log: every message the outbox holds (one per
stored call, written with the call) reached the gateway, and every POST of one call carried
one idempotency key, so a receiver that drops repeated keys (as the webhook contract asks)
delivered each text once; each outbox row ends `sent` with the id the gateway gave that key
first. Every call logged finished a moment (GRACE) before a kill is stored. Seeded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp import web
from ami_fixtures import SIM_SECRET, SIM_USER
from daemon_fixtures import Daemon, fault_seed, write_config
from sqlalchemy.engine import make_url
from store_fixtures import DbFactory, TcpProxy, pg_url, via_proxy

from callhub.sim.ami_server import AmiSimulator
from callhub.sim.calls import CallFactory, SynthCall, merge_calls
from callhub.store.db import Database
from callhub.store.tables import calls, sms_outbox

SEED = fault_seed(1313)
WAIT = 60.0
GRACE = 0.5  # as tests/test_faults_wal.py: a call finished this long before a kill is durable
ROUNDS = 4
PER_ROUND = 6
LEASE = 3.0  # [sms] lease_seconds: a message a killed sender held goes again after this


@dataclass
class Post:
    """One POST as the gateway received it."""

    key: str
    to: str
    call_id: str
    first: bool  # the first POST with this key (the one the gateway delivered)
    run: int


@dataclass
class Trap:
    """Kill the daemon at this run's `n`th POST, on its arrival or after answering it."""

    n: int
    when: str  # "arrival" | "answered"
    fire: Callable[[], None]
    fired_at: float | None = None


@dataclass
class SlowGateway:
    """The site's SMS webhook: accepts a message when it arrives, drops a repeated
    idempotency key, answers after a random delay; logs every POST."""

    rng: random.Random
    posts: list[Post] = field(default_factory=list)
    delivered: dict[str, str] = field(default_factory=dict)  # key -> the gateway's id
    run: int = 0
    run_arrivals: int = 0
    run_answers: int = 0
    trap: Trap | None = None
    runner: web.AppRunner | None = None
    port: int = 0
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/send"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/send", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def next_run(self, trap: Trap | None) -> None:
        self.run += 1
        self.run_arrivals = self.run_answers = 0
        self.trap = trap

    def _spring(self, when: str, count: int) -> None:
        trap = self.trap
        if trap is not None and trap.when == when and count == trap.n:
            trap.fired_at = time.time()
            trap.fire()
            self.trap = None

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def until(self, predicate: Callable[[], bool], within: float = WAIT) -> None:
        async with asyncio.timeout(within), self.changed:
            await self.changed.wait_for(predicate)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = json.loads(await request.read())
        key = body["idempotency_key"]
        first = key not in self.delivered
        if first:
            self.delivered[key] = f"gw-{len(self.delivered) + 1}"
        run = self.run
        self.posts.append(Post(key, body["to"], body["call_id"], first, run))
        self.run_arrivals += 1
        self._spring("arrival", self.run_arrivals)
        await self._notify()
        await asyncio.sleep(self.rng.uniform(0.05, 0.6))  # the gateway is slow: the scenario
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        with contextlib.suppress(ConnectionResetError):  # the sender was killed meanwhile
            await response.prepare(request)
            await response.write(json.dumps({"id": self.delivered[key],
                                             "duplicate": not first}).encode())
            await response.write_eof()
        if run == self.run:  # not the answer to a run killed before
            self.run_answers += 1
            self._spring("answered", self.run_answers)
        await self._notify()
        return response


@contextlib.asynccontextmanager
async def database(kind: str, tmp_path: Path) -> AsyncIterator[tuple[Database, str]]:
    """The test's database and the URL the daemon reaches it by: a SQLite file, or a
    PostgreSQL schema of its own behind a proxy that puts the daemon's sessions in it."""
    if kind == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'calls.db'}"
        db = Database.connect(url)
        try:
            yield db, url
        finally:
            await db.close()
        return
    factory = DbFactory("postgresql", tmp_path)
    db = await factory.create()
    target = make_url(pg_url())
    proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432, schema=db.schema)
    await proxy.start()
    try:
        yield db, via_proxy(pg_url(), proxy)
    finally:
        await proxy.stop()
        await factory.cleanup()


def sms_section(url: str) -> str:
    return f"""
[sms]
gateway = "webhook"
url = "{url}"
quiet_seconds = 0
timeout_seconds = 2
lease_seconds = {LEASE}
retry_base_seconds = 0.5
retry_max_seconds = 1

[[sms.rules]]
line = "*"
after = "both"
template = "您好！感谢您的来电。"
missed_template = "您好！很抱歉未能及时接听您的来电，我们会尽快给您回电。"
"""


async def table(db: Database, stmt: sa.Select[Any]) -> list[dict[str, Any]]:
    async with db.connection() as conn:
        if not await conn.run_sync(lambda c: sa.inspect(c).has_table("calls")):
            return []
        return [dict(r) for r in (await conn.execute(stmt)).mappings()]


async def poll(db: Database, check: Callable[[], Any], what: str) -> None:
    """Poll the database (the daemon is another process) until `check()` is true."""
    deadline = time.monotonic() + WAIT
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited in vain for {what}")
        await asyncio.sleep(0.1)  # a poll of another process's database, not a pause


def connected(daemon: Daemon) -> bool:
    return bool(daemon.events("daemon.started")) and bool(daemon.events("ami.connected"))


def kill_now(daemon: Daemon) -> Callable[[], None]:
    """SIGKILL the daemon's process at once (from the gateway's handler)."""
    def kill() -> None:
        assert daemon.proc is not None
        daemon.proc.kill()
    return kill


def finished_before(daemon: Daemon, moment: float) -> set[str]:
    return {str(e["linkedid"]) for e in daemon.events("call.finished")
            if datetime.fromisoformat(str(e["timestamp"])).timestamp() <= moment}


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_sigkill_while_sending_every_sms_arrives_and_repeats_share_their_key(
        kind: str, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    gateway = SlowGateway(random.Random(rng.random()))
    await gateway.start()
    sim = AmiSimulator(username=SIM_USER, secret=SIM_SECRET)
    await sim.start()
    factory = CallFactory(seed=SEED, uniqueid_counter=SEED * 1000)
    t0 = time.time() - 1800
    played: list[SynthCall] = []  # the calls the PBX played to a running daemon
    durable: set[str] = set()  # calls finished GRACE before a kill: they must be stored
    try:
        async with database(kind, tmp_path) as (db, url):
            config = write_config(tmp_path, sim, database_url=url)
            config.write_text(config.read_text("utf-8") + sms_section(gateway.url), "utf-8")
            for run in range(ROUNDS + 1):
                last = run == ROUNDS
                daemon = Daemon(config)
                trap = None if last else Trap(rng.randint(1, PER_ROUND),
                                              rng.choice(["arrival", "answered"]),
                                              kill_now(daemon))
                # The trap counts this run's POSTs: messages a killed run held (once their
                # lease ends) and the new calls' messages.
                gateway.next_run(trap)
                batch = [factory.make(rng.choice(["answered", "answered", "missed"]),
                                      t0 + (run * PER_ROUND + i) * 20,
                                      number=f"+86139{run * PER_ROUND + i:08d}")
                         for i in range(PER_ROUND)]
                await daemon.start()
                if last:
                    await daemon.until(lambda d=daemon: connected(d))
                    await sim.send([m for _, m in merge_calls(batch)])
                    played += batch
                    break
                assert trap is not None
                try:
                    await daemon.until(lambda d=daemon, t=trap: connected(d)
                                       or t.fired_at is not None)
                    if trap.fired_at is None:
                        await sim.send([m for _, m in merge_calls(batch)])
                        played += batch
                    await gateway.until(lambda t=trap: t.fired_at is not None)
                finally:
                    await daemon.kill()
                assert trap.fired_at is not None
                durable |= finished_before(daemon, trap.fired_at - GRACE)

            # The last run: every message of every stored call goes out, then a clean stop.
            try:
                async def all_sent() -> bool:
                    stored = await table(db, sa.select(calls.c.linkedid))
                    rows = await table(db, sa.select(sms_outbox.c.status))
                    return (durable | {c.linkedid for c in batch}) <= {
                        r["linkedid"] for r in stored} and bool(rows) and all(
                        r["status"] == "sent" for r in rows)
                await poll(db, all_sent, "every call stored and every SMS sent")
                assert await daemon.stop() == 0
            finally:
                await daemon.kill()

            stored = {r["linkedid"]: r for r in await table(db, sa.select(calls))}
            outbox = await table(db, sa.select(sms_outbox))
    finally:
        await sim.stop()
        await gateway.stop()

    assert set(stored) <= {c.linkedid for c in played}
    assert durable <= set(stored), "calls finished before a SIGKILL were lost"
    # One message per stored call (every call here is inbound from a number of its own and
    # the rule covers answered and missed), written with the call.
    assert sorted(r["linkedid"] for r in outbox) == sorted(stored)
    # Every message reached the gateway and ends sent, with the id the gateway gave its key.
    assert {r["idempotency_key"] for r in outbox} == set(gateway.delivered)
    for row in outbox:
        assert row["status"] == "sent", row
        assert row["provider_id"] == gateway.delivered[row["idempotency_key"]], row
    # Repeats carry the key of the first POST of their call, to the same number.
    keys_of: dict[str, set[str]] = {}
    numbers_of: dict[str, set[str]] = {}
    for post in gateway.posts:
        keys_of.setdefault(post.call_id, set()).add(post.key)
        numbers_of.setdefault(post.key, set()).add(post.to)
    assert all(len(keys) == 1 for keys in keys_of.values()), keys_of
    assert all(len(numbers) == 1 for numbers in numbers_of.values()), numbers_of
    assert len(keys_of) == len(outbox)
    # Not vacuous: kills caught messages the gateway had and callhub had not recorded, and
    # a later run sent them again (with their key, dropped as repeats).
    repeats = [p for p in gateway.posts if not p.first]
    assert repeats, "no SIGKILL caught a message mid-send"
