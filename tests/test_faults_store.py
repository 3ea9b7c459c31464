"""Faults on the storage side, with the whole chain running: AMI simulator over TCP ->
PbxIngest -> CallWriter -> database.

- PostgreSQL cut (connections dropped, new ones refused) three times while calls
  stream in and batches are in flight, then back;
- the spool's file system full: a real `EFBIG` from the kernel (RLIMIT_FSIZE, in a
  child process so that pytest's own files are not limited), while the database
  is down and ingestion goes on: the writer says so and keeps the calls in memory
  until there is space again.

Each proves every finished call ends up stored once: none lost, none twice.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from ami_fixtures import Collector, sim_pbx
from store_fixtures import DbFactory, TcpProxy, pg_url, via_proxy

from callhub.ami.ingest import PbxIngest
from callhub.config import Settings
from callhub.metrics.collectors import CallhubMetrics
from callhub.records import CallRecord
from callhub.sim.ami_server import AmiSimulator
from callhub.sim.calls import CallFactory, SynthCall, merge_calls
from callhub.sim.mix import MixSettings, generate_mix
from callhub.store import migrate
from callhub.store.db import Database
from callhub.store.spool import Spool
from callhub.store.tables import calls
from callhub.store.writer import CallWriter

WAIT = 30.0


def mix(count: int, start: float, seed: int) -> list[SynthCall]:
    made = generate_mix(start, MixSettings(rate_per_minute=30.0), seed=seed,
                        factory=CallFactory(seed=seed, uniqueid_counter=seed * 1000))
    return [next(made) for _ in range(count)]


async def stored_rows(db: Database) -> list[tuple[str, str]]:
    async with db.connection() as conn:
        rows = await conn.execute(sa.select(calls.c.linkedid, calls.c.outcome))
        return [(r.linkedid, r.outcome) for r in rows]


async def test_database_down_under_load_and_back(tmp_path: Path, pg_proxy: TcpProxy) -> None:
    factory = DbFactory("postgresql", tmp_path)
    sim = AmiSimulator(username="callhub", secret="s3cret-for-tests")
    await sim.start()
    try:
        db = await factory.create(url=via_proxy(pg_url(), pg_proxy))
        await migrate.upgrade(db)
        settings = Settings(spool_dir=str(tmp_path / "spool"))
        writer = CallWriter(db, settings, batch_size=10, max_buffer=40, retry_initial=0.02,
                            retry_max=0.1)
        collector = Collector()

        def to_writer(record: CallRecord) -> None:
            writer.submit(record)
            collector.record(record)

        ingest = PbxIngest(sim_pbx(sim), to_writer)
        generated = mix(150, time.time() - 7200, seed=21)
        stream = [m for _, m in merge_calls(generated)]
        cuts = {len(stream) * k // 8: len(stream) * (k + 1) // 8 for k in (1, 3, 5)}
        restore_at = set(cuts.values())
        await writer.start()
        await ingest.start()
        await ingest.wait_connected(5)
        for i, message in enumerate(stream):
            if i in cuts:
                pg_proxy.cut()  # mid-stream: batches are being written right now
            if i in restore_at:
                pg_proxy.restore()
            await sim.send([message])
            if i % 50 == 0:
                await asyncio.sleep(0)  # let the writer take turns, as in production
        await collector.until(lambda: len(collector.records) >= len(generated), WAIT)
        async with asyncio.timeout(WAIT):
            await writer.wait_written()
        await ingest.stop()
        await writer.stop()
        assert writer.failed_batches >= 3, "the outages did not hit any write"
        rows = await stored_rows(db)
    finally:
        await sim.stop()
        await factory.cleanup()
    counts = Counter(linkedid for linkedid, _ in rows)
    assert set(counts) == {c.linkedid for c in generated}, "a finished call was lost"
    assert max(counts.values()) == 1, "a call was stored twice"
    want = {c.linkedid: c.expected["outcome"] for c in generated}
    assert dict(rows) == want


# -- the spool's disk full -------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def disk_full_child(workdir: Path) -> dict[str, Any]:
    """Runs in its own process: database unreachable, spool limited mid-run."""
    sim = AmiSimulator(username="callhub", secret="s3cret-for-tests")
    await sim.start()
    settings = Settings(spool_dir=str(workdir / "spool"))
    down = Database.connect(f"postgresql+asyncpg://nobody:none@127.0.0.1:{free_port()}/none",
                            busy_timeout=0.2)
    metrics = CallhubMetrics()
    writer = CallWriter(down, settings, metrics=metrics, max_buffer=3, retry_initial=0.05,
                        retry_max=0.1, stop_timeout=0.2, spool_retry=0.05)
    collector = Collector()
    refused: list[str] = []

    def to_writer(record: CallRecord) -> None:
        collector.record(record)
        try:
            writer.submit(record)
        except OSError:
            refused.append(record.linkedid)
            raise  # PbxIngest logs it and goes on

    ingest = PbxIngest(sim_pbx(sim), to_writer)
    phases = [mix(8, time.time() - 7200, seed=31), mix(8, time.time() - 5000, seed=32),
              mix(6, time.time() - 3000, seed=33)]

    async def play(batch: list[SynthCall]) -> None:
        target = len(collector.records) + len(batch)
        await sim.send([m for _, m in merge_calls(batch)])
        await collector.until(lambda: len(collector.records) >= target, WAIT)

    await writer.start()
    await ingest.start()
    await ingest.wait_connected(5)
    await play(phases[0])
    async with asyncio.timeout(WAIT):
        await writer.wait_until(lambda w: len(w.spool) == len(phases[0]))
    spooled_before = [r.linkedid for r in Spool(settings.spool_dir).unstored()]
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
    # Room for half a record more: the next append is torn mid-line, as on a full disk.
    resource.setrlimit(resource.RLIMIT_FSIZE, (writer.spool.size() + 300, hard))
    await play(phases[1])
    async with asyncio.timeout(WAIT):
        await writer.wait_until(lambda w: not w.status().spool_writable)
    health_full = writer.status()
    writable_full = metrics.registry.get_sample_value("callhub_spool_writable")
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space again
    await play(phases[2])
    async with asyncio.timeout(WAIT):
        await writer.wait_until(lambda w: w.status().spool_writable
                                and len(w.spool) == w.pending)
    await ingest.stop()
    await writer.stop()
    await down.close()
    await sim.stop()
    in_spool = [r.linkedid for r in Spool(settings.spool_dir).unstored()]

    # The database comes back (a fresh SQLite here): the spool is written first.
    db = Database.connect(f"sqlite+aiosqlite:///{workdir / 'back.db'}")
    await migrate.upgrade(db)
    again = CallWriter(db, settings)
    await again.start()
    async with asyncio.timeout(WAIT):
        await again.wait_written()
    await again.stop()
    rows = await stored_rows(db)
    await db.close()
    return {"phases": [[c.linkedid for c in p] for p in phases], "handed": collector.linkedids(),
            "refused": refused, "spooled_before": spooled_before, "in_spool": in_spool,
            "stored": [r[0] for r in rows], "ingest_records": ingest.records,
            "open_calls": ingest.correlator.active_calls,
            "health_full": health_full.reasons(), "writable_full": writable_full,
            "writable_after": metrics.registry.get_sample_value("callhub_spool_writable"),
            "spool_errors": metrics.registry.get_sample_value("callhub_spool_errors_total"),
            "dropped": writer.dropped}


@pytest.fixture(scope="module")
def disk_full(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    """One run of the disk-full child: its result and its log (stderr, a pipe)."""
    workdir = tmp_path_factory.mktemp("diskfull")
    proc = subprocess.run([sys.executable, __file__, str(workdir)], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).parent,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def test_spool_disk_full_is_said_loudly_calls_are_kept_in_memory_and_none_is_lost(
        disk_full: tuple[dict[str, Any], str]) -> None:
    result, log = disk_full
    a, b, c = result["phases"]
    # Ingestion went on: every call of every phase became a record, none refused.
    assert result["ingest_records"] == len(a + b + c) and result["open_calls"] == 0
    assert sorted(result["handed"]) == sorted(a + b + c)
    assert result["refused"] == [] and result["dropped"] == 0
    assert result["spooled_before"] == result["handed"][:len(a)]  # in the order they ended
    # The disk-full failure was real and said loudly: an error log with the system's
    # reason, the metrics, and the writer's health (what /readyz reads).
    errors = [json.loads(line) for line in log.splitlines()
              if line.startswith("{") and '"spool.write_failed"' in line]
    assert errors and all(e["level"] == "error" and "File too large" in e["error"]
                          for e in errors)
    assert result["spool_errors"] >= 1
    assert result["writable_full"] == 0 and result["writable_after"] == 1
    assert any("spool not writable" in reason for reason in result["health_full"])
    # Once there was space again, the calls kept in memory went to the spool, in order.
    assert result["in_spool"] == result["handed"]


def test_every_call_is_stored_once_after_the_disk_full_and_the_outage(
        disk_full: tuple[dict[str, Any], str]) -> None:
    result, _ = disk_full
    a, b, c = result["phases"]
    stored = Counter(result["stored"])
    assert set(stored) == set(a + b + c), "a finished call was lost"
    assert max(stored.values()) == 1, "a call was stored twice"


if __name__ == "__main__":
    from callhub.logs import configure_logging

    configure_logging("info", stream=sys.stderr, json=True)
    print(json.dumps(asyncio.run(disk_full_child(Path(sys.argv[1])))))
