"""SIGTERM to `callhub run` while writes are in flight, then a restart.

The daemon runs as a real process, reading a real AMI simulator over TCP and
writing a SQLite file that another process holds locked, so every write is
blocked when SIGTERM comes: the writer must give up within its stop timeout
and spool the calls, exit 0, and the next run must store each of them once.
(tests/test_daemon.py covers SIGTERM with a free database.)
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from ami_fixtures import SIM_SECRET, SIM_USER

from callhub.sim.ami_server import AmiSimulator
from callhub.sim.calls import CallFactory, merge_calls
from callhub.sim.mix import MixSettings, generate_mix
from callhub.sim.templates import load_template
from callhub.store.spool import Spool

WAIT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def write_config(tmp_path: Path, sim: AmiSimulator) -> Path:
    config = load_template("01_answered_caller_hangup").config
    agents = "\n".join(f'"{k}" = "{v}"' for k, v in config["agents"].items())
    path = tmp_path / "callhub.toml"
    path.write_text(f"""
database_url = "sqlite+aiosqlite:///{tmp_path / 'calls.db'}"
spool_dir = "{tmp_path / 'spool'}"
log_level = "info"

[api]
listen = "127.0.0.1:{free_port()}"

[fastagi]
listen = "127.0.0.1:{free_port()}"

[[pbx]]
name = "lab"
host = "127.0.0.1"
port = {sim.port}
username = "{SIM_USER}"
secret = "{SIM_SECRET}"
inbound_contexts = ["from-pstn"]
outbound_contexts = ["to-pstn"]
voicemail_extensions = ["voicemail"]

[pbx.agents]
{agents}
""", encoding="utf-8")
    return path


class Daemon:
    """`callhub run` as a child process; its JSON log lines, read as they come."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.lines: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CALLHUB_")}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "callhub", "--config", str(self.config), "run", env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        async for raw in self.proc.stderr:
            self.lines.append(raw.decode("utf-8", "replace"))
            self._changed.set()
        self._changed.set()

    def events(self, name: str) -> list[dict[str, object]]:
        out = []
        for line in self.lines:
            if f'"{name}"' in line and line.startswith("{"):
                out.append(json.loads(line))
        return out

    async def until(self, predicate: Callable[[], bool], within: float = WAIT) -> None:
        async def _wait() -> None:
            while not predicate():
                if self._reader is not None and self._reader.done():
                    raise AssertionError("callhub run ended:\n" + "".join(self.lines[-30:]))
                self._changed.clear()
                await self._changed.wait()
        try:
            await asyncio.wait_for(_wait(), within)
        except TimeoutError:
            raise AssertionError("waited in vain; callhub run said:\n"
                                 + "".join(self.lines[-30:])) from None

    async def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.proc.wait(), WAIT)
        if self._reader is not None:
            await self._reader
        return code

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


def stored(path: Path) -> Counter[str]:
    with sqlite3.connect(path) as conn:
        return Counter(row[0] for row in conn.execute("SELECT linkedid FROM calls"))


async def test_sigterm_with_writes_blocked_spools_them_and_the_next_run_stores_each_once(
        tmp_path: Path) -> None:
    sim = AmiSimulator(username=SIM_USER, secret=SIM_SECRET)
    await sim.start()
    config = write_config(tmp_path, sim)
    made = generate_mix(time.time() - 3600, MixSettings(rate_per_minute=30.0), seed=41,
                        factory=CallFactory(seed=41, uniqueid_counter=4100))
    calls = [next(made) for _ in range(40)]
    first = Daemon(config)
    holder: sqlite3.Connection | None = None
    try:
        await first.start()
        await first.until(lambda: bool(first.events("ami.connected")))
        # Another process takes the database's write lock: every batch now waits on it.
        holder = sqlite3.connect(tmp_path / "calls.db", isolation_level=None, timeout=5)
        holder.execute("BEGIN EXCLUSIVE")
        await sim.send([m for _, m in merge_calls(calls)])
        await first.until(lambda: len(first.events("call.finished")) >= len(calls))
        assert await first.stop() == 0, "".join(first.lines[-30:])
    finally:
        await first.kill()
        if holder is not None:
            holder.execute("ROLLBACK")
            holder.close()
    finished = {str(e["linkedid"]) for e in first.events("call.finished")}
    assert finished == {c.linkedid for c in calls}
    spooled = Counter(r.linkedid for r in Spool(tmp_path / "spool").unstored())
    in_db = stored(tmp_path / "calls.db")
    # Nothing finished is lost, and each call is in exactly one place.
    assert set(spooled) | set(in_db) == finished
    assert not set(spooled) & set(in_db)
    assert spooled and max(spooled.values()) == 1, "the blocked writes were not spooled"
    stopped = first.events("daemon.stopped")
    assert stopped and stopped[-1]["pending_calls"] == len(spooled)

    second = Daemon(config)
    try:
        await second.start()
        await second.until(lambda: bool(second.events("daemon.started")))
        assert await second.stop() == 0, "".join(second.lines[-30:])
    finally:
        await second.kill()
        await sim.stop()
    in_db = stored(tmp_path / "calls.db")
    assert set(in_db) == finished, "a finished call was lost across the restart"
    assert max(in_db.values()) == 1, "a call was stored twice"
    assert len(Spool(tmp_path / "spool")) == 0
