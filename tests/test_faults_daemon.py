"""SIGTERM to `callhub run` while writes are in flight, then a restart.

The daemon runs as a real process, reading a real AMI simulator over TCP and
writing a SQLite file that another process holds locked, so every write is
blocked when SIGTERM comes: the writer must give up within its stop timeout
and spool the calls, exit 0, and the next run must store each of them once.
(tests/test_daemon.py covers SIGTERM with a free database.)
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from pathlib import Path

from ami_fixtures import SIM_SECRET, SIM_USER
from daemon_fixtures import Daemon, write_config

from callhub.sim.ami_server import AmiSimulator
from callhub.sim.calls import CallFactory, merge_calls
from callhub.sim.mix import MixSettings, generate_mix
from callhub.store.spool import Spool


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
        # (AMI is heard before the database is migrated: wait for both.)
        await first.until(lambda: bool(first.events("ami.connected"))
                          and bool(first.events("daemon.started")))
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
