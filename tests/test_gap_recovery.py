"""Gaps in a PBX's AMI stream: where one began survives a restart, and its calls come back
from the CEL table once, and only those no AMI session saw.

PbxIngest against the AMI simulator over TCP (a dropped link, a new process reading the
state file); CelRecovery against a cel_pgsql table on PostgreSQL filled with the traces'
CEL events; `callhub backfill --store` as an admin runs it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import time
from dataclasses import replace
from pathlib import Path

import pytest
import sqlalchemy as sa
import structlog
from ami_fixtures import Collector, make_ingest, sim_pbx
from cel_fixtures import CelDb, pbx_toml, run_callhub, trace_rows, window_of
from prometheus_client import CollectorRegistry
from traces_fixtures import trace

from callhub.ami.gap import Gap, StreamState, read_state, state_path
from callhub.ami.groundtruth import load_truth, pbx_from_truth
from callhub.ami.ingest import PbxIngest
from callhub.config import PbxConfig, Settings
from callhub.lifecycle import Supervisor
from callhub.metrics.collectors import CallhubMetrics
from callhub.records import CallRecord
from callhub.sim.ami_server import AmiSimulator
from callhub.sim.calls import CallFactory, merge_calls
from callhub.store import migrate
from callhub.store.db import Database
from callhub.store.recovery import CelRecovery
from callhub.store.spool import Spool
from callhub.store.tables import calls
from callhub.store.writer import CallWriter

WAIT = 10.0


async def test_the_state_file_is_never_past_the_end_of_a_call_not_yet_in_the_spool(
        ami_simulator: AmiSimulator, tmp_path: Path) -> None:
    """Killed between a call's end and its group's fsync, callhub has lost the call from
    the spool; the gap its next start finds must reach back to the call for CEL to rebuild
    it. So while a finished call is not yet in the spool, the state file's last event
    stays before that call's end (a margin for CEL's stamps); once it is, the file says
    the last event seen."""
    sim = ami_simulator
    spool = tmp_path / "spool"
    writer = CallWriter(Database.connect(f"sqlite+aiosqlite:///{tmp_path / 'c.db'}"),
                        replace(Settings(), spool_dir=str(spool)), held=True)
    collector = Collector()

    def handed(record: CallRecord) -> None:  # as the daemon hands a call on
        collector.record(record)
        writer.submit(record)

    ingest = PbxIngest(sim_pbx(sim), handed, state_dir=tmp_path,
                       undurable_since=lambda: writer.unspooled_since("lab"))
    ingest.add_listener(collector.event)
    call = CallFactory(seed=4, uniqueid_counter=400).make("answered", time.time() - 600)
    last_sent = max(float(m["Timestamp"]) for m in call.messages)
    path = state_path(tmp_path, "lab")
    await ingest.start()
    try:
        await ingest.wait_connected(5)
        await sim.send([m for _, m in merge_calls([call])])
        await collector.until(lambda: len(collector.records) == 1)
        [record] = collector.records
        ingest.save_state()  # the writer has not spooled it: a kill now would lose it
        waiting = read_state(path)
        assert waiting is not None and waiting.last_event <= record.ended_at - 1.0
        assert writer.unspooled_since("lab") == record.ended_at
        assert writer.unspooled_since("branch") is None

        await writer.start()  # held (no database): it spools, and stores nothing
        async with asyncio.timeout(WAIT):
            await writer.wait_until(lambda w: w.unspooled_since("lab") is None)
        ingest.save_state()
        spooled = read_state(path)
        assert spooled is not None and spooled.last_event == last_sent
    finally:
        await ingest.stop()
        await writer.stop()
    assert [r.linkedid for r in Spool(spool).unstored()] == [call.linkedid]  # for next start


async def test_a_dropped_link_reports_its_gap_and_the_state_survives_a_restart(
        ami_simulator: AmiSimulator, tmp_path: Path) -> None:
    sim = ami_simulator
    gaps: list[Gap] = []
    collector = Collector()
    ingest = make_ingest(sim_pbx(sim), collector, backoff_base=0.01, backoff_max=0.05,
                         state_dir=tmp_path, on_gap=gaps.append)
    call = CallFactory(seed=3, uniqueid_counter=300).make("answered", time.time() - 600)
    last_sent = max(float(m["Timestamp"]) for m in call.messages)
    await ingest.start()
    try:
        await ingest.wait_connected(5)
        assert gaps == []  # the first session ever: no gap is known
        await sim.send([m for _, m in merge_calls([call])])
        await collector.until(lambda: len(collector.records) == 1)
        assert ingest.seen_on_ami(call.linkedid) and not ingest.seen_on_ami("1.2")
        dropped = time.time()
        sim.drop_clients()
        await ingest.connection.wait_sessions(2, within=5)
    finally:
        await ingest.stop()
    gap, = gaps
    assert gap.last_event == last_sent
    assert dropped - 1 < gap.alive_until <= gap.until <= time.time()
    path = state_path(tmp_path, "lab")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    left = read_state(path)
    # Saved at stop: the last event then (the resync after the drop is events too).
    assert left is not None and last_sent <= left.last_event <= left.alive_until

    # A new process (no on_gap: nothing can rebuild the calls) counts the gap's seconds.
    registry = CollectorRegistry()
    again = make_ingest(sim_pbx(sim), Collector(), state_dir=tmp_path,
                        metrics=CallhubMetrics(registry, pbxs=["lab"]))
    stopped_at = time.time()
    await again.start()
    try:
        await again.wait_connected(5)
    finally:
        await again.stop()
    counted = registry.get_sample_value("callhub_gap_seconds_total", {"pbx": "lab"})
    assert counted is not None and 0 < counted <= time.time() - stopped_at + 1


def test_a_state_file_that_cannot_be_written_is_warned_of_once_per_error_and_its_return_said(
        tmp_path: Path) -> None:
    """Saved every few seconds while events flow: an unwritable file (a full disk, the spool
    directory gone) warned at every save would bury the log. One warning per distinct
    error, the repeats at debug, and a line when it is writable again."""
    state_dir = tmp_path / "spool"
    state_dir.mkdir()
    path = state_path(state_dir, "lab")
    path.write_text('{"last_event": 1700000000.5, "alive_until": 1700000010}', encoding="utf-8")
    ingest = make_ingest(PbxConfig(name="lab", username="callhub", secret="s"), Collector(),
                         state_dir=state_dir)  # not started: only its state file
    path.unlink()
    path.mkdir()  # the file's place taken by a directory: the replace fails (EISDIR)
    (path / "x").touch()

    def saves(n: int) -> list[tuple[str, str, object]]:
        with structlog.testing.capture_logs() as logs:
            for _ in range(n):
                ingest.save_state()
        return [(e["log_level"], e["event"], e.get("error", e.get("failed_tries")))
                for e in logs if e["event"].startswith("ami.state_")]

    assert saves(3) == [("warning", "ami.state_unwritable", "IsADirectoryError(21)"),
                        ("debug", "ami.state_unwritable", "IsADirectoryError(21)"),
                        ("debug", "ami.state_unwritable", "IsADirectoryError(21)")]
    shutil.rmtree(state_dir)
    state_dir.write_text("")  # another error: the directory's place taken by a file
    assert saves(2) == [("warning", "ami.state_unwritable", "FileExistsError(17)"),
                        ("debug", "ami.state_unwritable", "FileExistsError(17)")]
    state_dir.unlink()  # mended: the next save makes the directory and writes the file
    assert saves(2) == [("info", "ami.state_writable", 5)]
    assert read_state(path) == StreamState(1700000000.5, 1700000010.0)
    path.unlink()
    path.mkdir()  # failing again after a write: news again, even the same error
    assert saves(1) == [("warning", "ami.state_unwritable", "IsADirectoryError(21)")]


@pytest.mark.parametrize("text", [
    '{"last_event": NaN, "alive_until": 1700000000}',
    '{"last_event": 1700000000, "alive_until": Infinity}',
    '{"last_event": 1e300, "alive_until": 1700000000}',
    '{"last_event": -1, "alive_until": 1700000000}',
    '{"last_event": 1' + "0" * 400 + ', "alive_until": 1700000000}',  # OverflowError
    '[' * 100_000 + ']' * 100_000,  # RecursionError
    '["last_event"]',
])
def test_a_state_file_with_no_usable_time_is_unreadable_not_fatal(
        tmp_path: Path, text: str) -> None:
    """A damaged file is read as none (no gap known), not as a gap whose CEL read fails at
    every try, nor an exception out of PbxIngest's start."""
    path = state_path(tmp_path, "lab")
    path.write_text(text, encoding="utf-8")
    assert read_state(path) is None
    path.write_text('{"last_event": 1700000000.5, "alive_until": 1700000010}', encoding="utf-8")
    assert read_state(path) == StreamState(1700000000.5, 1700000010.0)


def rows_of(name: str) -> list[dict[str, object]]:
    return trace_rows(trace(name))


async def test_recovery_stores_only_finished_calls_no_ami_session_saw(cel_db: CelDb) -> None:
    await cel_db.create()
    names = ["01_answered_caller_hangup", "03_abandoned_ringing",
             "04_missed_noanswer_voicemail", "06_huntgroup_rna_then_answer"]
    rows = {name: rows_of(name) for name in names}
    seen = str(rows[names[1]][0]["linkedid"])
    live = str(rows[names[2]][0]["linkedid"])
    rows[names[2]] = [r for r in rows[names[2]] if r["eventtype"] != "LINKEDID_END"]
    for name in names:
        await cel_db.insert(rows[name])
    start, _ = window_of(rows[names[0]])
    _, end = window_of(rows[names[-1]])
    pbx = pbx_from_truth(load_truth(trace(names[0])))
    pbx = replace(pbx, cel_database_url=cel_db.url, cel_table=cel_db.table)
    got: list[CallRecord] = []
    registry = CollectorRegistry()
    recovery = CelRecovery(pbx, got.append, seen_on_ami=lambda linkedid: linkedid == seen,
                           metrics=CallhubMetrics(registry, pbxs=[pbx.name]),
                           settle_seconds=0)
    supervisor = Supervisor()
    task = supervisor.spawn("cel/lab", recovery.run, required=False)
    try:
        recovery.gap(Gap(start.timestamp(), start.timestamp(), end.timestamp()))
        await asyncio.wait_for(recovery.wait_idle(), WAIT)
    finally:
        await task.stop()
    assert sorted(r.linkedid for r in got) == sorted(
        str(rows[n][0]["linkedid"]) for n in (names[0], names[3]))
    assert all(r.source == "cel" and r.rings_estimated and not r.incomplete for r in got)
    assert live not in {r.linkedid for r in got}
    assert registry.get_sample_value("callhub_cel_recovered_calls_total",
                                     {"pbx": pbx.name}) == 2
    recovery.close()
    assert registry.get_sample_value("callhub_gap_seconds_total", {"pbx": pbx.name}) == 0


async def test_a_gap_the_cel_database_cannot_give_is_retried_then_counted(
        cel_db: CelDb) -> None:
    pbx = replace(pbx_from_truth(load_truth(trace("01_answered_caller_hangup"))),
                  cel_database_url=cel_db.url, cel_table=f"{cel_db.schema}.nothing")
    registry = CollectorRegistry()
    got: list[CallRecord] = []
    recovery = CelRecovery(pbx, got.append, seen_on_ami=lambda _: False,
                           metrics=CallhubMetrics(registry, pbxs=[pbx.name]), settle_seconds=0)
    supervisor = Supervisor(backoff_base=0.01, backoff_max=0.05)
    task = supervisor.spawn("cel/lab", recovery.run, required=False)
    now = time.time()
    try:
        recovery.gap(Gap(now - 100, now - 60, now))
        await asyncio.wait_for(task.wait_failures(2), WAIT)
        assert len(recovery.pending) == 1  # kept for the next try
    finally:
        await task.stop()
    recovery.close()
    assert got == [] and recovery.pending == []
    counted = registry.get_sample_value("callhub_gap_seconds_total", {"pbx": pbx.name})
    assert counted == pytest.approx(60.0)


async def test_backfill_store_writes_the_calls_once(cel_db: CelDb, tmp_path: Path) -> None:
    await cel_db.create()
    names = ["01_answered_caller_hangup", "03_abandoned_ringing"]
    rows = {name: rows_of(name) for name in names}
    for name in names:
        await cel_db.insert(rows[name])
    truth = load_truth(trace(names[0]))
    db_path = tmp_path / "calls.db"
    config = tmp_path / "callhub.toml"
    config.write_text(f'database_url = "sqlite+aiosqlite:///{db_path}"\n'
                      + pbx_toml(truth["expected"]["config"]), encoding="utf-8")
    db = Database.connect(f"sqlite+aiosqlite:///{db_path}")
    try:
        await migrate.upgrade(db)
        start, _ = window_of(rows[names[0]])
        _, end = window_of(rows[names[1]])
        args = ["backfill", "--config", str(config), "--from", start.isoformat(),
                "--to", end.isoformat(), "--cel-database-url", cel_db.url,
                "--cel-table", cel_db.table, "--store"]
        code, out, err = await run_callhub(*args, cwd=tmp_path)
        assert code == 0, err
        assert out == "" and "2 stored, 0 already stored" in err
        code, out, err = await run_callhub(*args, cwd=tmp_path)
        assert code == 0 and "0 stored, 2 already stored" in err, err
        async with db.connection() as conn:
            stored = [(r.linkedid, r.source) for r in await conn.execute(
                sa.select(calls.c.linkedid, calls.c.source))]
        assert sorted(stored) == sorted((str(rows[n][0]["linkedid"]), "cel") for n in names)
    finally:
        await db.close()
