"""The writer loses nothing: batches, a database outage, the spool, stop and restart."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from store_fixtures import (
    T0,
    DbFactory,
    TcpProxy,
    assert_worklist_counts_each_call_once,
    make_call,
    pg_url,
    via_proxy,
)

from callhub.config import Settings
from callhub.metrics.collectors import CallhubMetrics
from callhub.records import CallRecord
from callhub.store import migrate, quarantine, queries
from callhub.store.db import Database
from callhub.store.spool import CHECKPOINT_FILE, SEGMENT, Spool
from callhub.store.tables import attempts, calls
from callhub.store.writer import CallWriter

WAIT = 30.0


def sample(metrics: CallhubMetrics, name: str) -> float:
    return metrics.registry.get_sample_value(name) or 0.0


async def stored(db: Database) -> tuple[list[str], int]:
    """Linkedids in id order (duplicates would show) and the number of attempts rows."""
    async with db.connection() as conn:
        ids = list((await conn.scalars(sa.select(calls.c.linkedid).order_by(calls.c.id))).all())
        n_attempts = int(await conn.scalar(sa.select(sa.func.count()).select_from(attempts))
                         or 0)
    return ids, n_attempts


async def drained(writer: CallWriter) -> None:
    """Start the writer, wait until it has stored everything handed over, stop it."""
    await writer.start()
    async with asyncio.timeout(WAIT):
        await writer.wait_written()
    await writer.stop()


def calls_named(prefix: str, n: int, start: float) -> list[CallRecord]:
    """A mix: answered calls and misses (with a callback for some) from distinct numbers."""
    out = []
    base = f"+86{ord(prefix[0]):03d}"
    for i in range(n):
        number = f"{base}{i:06d}"
        if i % 3 == 0:
            out.append(make_call(f"{prefix}{i}", at=start + i, outcome="missed",
                                 caller_number=number))
        elif i % 3 == 1:
            out.append(make_call(f"{prefix}{i}", at=start + i, direction="outbound",
                                 called_number=f"{base}{i - 1:06d}"))
        else:
            out.append(make_call(f"{prefix}{i}", at=start + i, caller_number=number))
    return out


async def outage_round_trip(db: Database, settings: Settings, cut: Callable[[], None],
                            restore: Callable[[], None]) -> None:
    metrics = CallhubMetrics()
    writer = CallWriter(db, settings, metrics=metrics, batch_size=20, max_buffer=25,
                        retry_initial=0.05, retry_max=0.2)
    await writer.start()
    before = calls_named("a", 30, T0)
    for record in before:
        writer.submit(record)
    async with asyncio.timeout(WAIT):
        await writer.wait_written()

    cut()
    during = calls_named("b", 60, T0 + 1000)
    for record in during:
        writer.submit(record)  # returns at once although the database is gone
    async with asyncio.timeout(WAIT):
        await writer.wait_until(lambda w: w.failed_batches >= 2)
    assert writer.pending == 60
    # Every call is in the fsynced spool before anything else happens to it; past
    # max_buffer the writer reads the oldest back from there.
    assert len(writer.spool) == 60
    assert [r.linkedid for r in writer.spool.unstored()] == [r.linkedid for r in during]
    assert sample(metrics, "callhub_db_buffered_calls") == 60
    assert sample(metrics, "callhub_db_write_errors_total") >= 2

    restore()
    after = calls_named("c", 10, T0 + 5000)
    for record in after:
        writer.submit(record)
    async with asyncio.timeout(WAIT):
        await writer.wait_written()
    await writer.stop()

    linkedids, n_attempts = await stored(db)
    expected = [r.linkedid for r in before + during + after]
    assert sorted(linkedids) == sorted(expected)  # every call, none twice
    assert linkedids == expected  # and in the order they finished
    assert n_attempts == sum(len(r.attempts) for r in before + during + after)
    assert writer.spool.segments() == [] and len(writer.spool) == 0
    assert sample(metrics, "callhub_db_buffered_calls") == 0
    # Misses written from the spool were handled by the callbacks that followed them.
    async with db.connection() as conn:
        entries = await queries.list_worklist(conn, queries.WorklistFilter(), 1000)
    pending = {e["number"] for e in entries if e["status"] == "pending"}
    assert pending == {after[9].caller_number}  # the last miss has no callback yet
    assert {e["how"] for e in entries if e["status"] == "handled"} == {"callback"}
    assert len(entries) == 10 + 20 + 4


async def test_postgresql_cut_mid_stream(tmp_path: Path, pg_proxy: TcpProxy,
                                         store_settings: Settings) -> None:
    factory = DbFactory("postgresql", tmp_path)
    try:
        db = await factory.create(url=via_proxy(pg_url(), pg_proxy))
        await migrate.upgrade(db)
        await outage_round_trip(db, store_settings, pg_proxy.cut, pg_proxy.restore)
    finally:
        await factory.cleanup()


async def test_sqlite_locked_mid_stream(tmp_path: Path, store_settings: Settings) -> None:
    factory = DbFactory("sqlite", tmp_path)
    db = await factory.create(busy_timeout=0.05)
    await migrate.upgrade(db)
    path = tmp_path / "callhub.db"
    holder = sqlite3.connect(path, isolation_level=None, timeout=5)

    def lock() -> None:
        holder.execute("BEGIN EXCLUSIVE")  # another process holding the write lock

    def unlock() -> None:
        holder.execute("COMMIT")

    try:
        await outage_round_trip(db, store_settings, lock, unlock)
    finally:
        holder.close()
        await factory.cleanup()


async def test_stop_spools_what_it_cannot_write_and_restart_writes_it_first(
        tmp_path: Path, store_settings: Settings) -> None:
    factory = DbFactory("sqlite", tmp_path)
    db = await factory.create(busy_timeout=0.05)
    await migrate.upgrade(db)
    holder = sqlite3.connect(tmp_path / "callhub.db", isolation_level=None, timeout=5)
    holder.execute("BEGIN EXCLUSIVE")
    writer = CallWriter(db, store_settings, max_buffer=100, retry_initial=0.02,
                        stop_timeout=0.3)
    await writer.start()
    early = calls_named("e", 12, T0)
    for record in early:
        writer.submit(record)
    async with asyncio.timeout(WAIT):
        await writer.wait_until(lambda w: w.failed_batches >= 1)
    await writer.stop()  # like SIGTERM while the database is locked
    holder.execute("COMMIT")
    holder.close()
    assert len(Spool(store_settings.spool_dir)) == 12
    assert (await stored(db))[0] == []

    # Next run: the spool is written before anything new.
    restarted = CallWriter(db, store_settings)
    late = calls_named("l", 5, T0 + 100)
    for record in late:
        restarted.submit(record)
    await drained(restarted)
    assert (await stored(db))[0] == [r.linkedid for r in early + late]
    await factory.cleanup()


async def test_a_call_handed_over_after_stop_waits_in_the_spool_for_the_next_start(
        any_db: Database, store_settings: Settings, tmp_path: Path) -> None:
    """Ingestion may still finish a call while the daemon stops: it goes straight to the
    spool (the writer's task has ended) and the next start stores it, once. When even the
    spool cannot take it, it is counted as dropped, not silently lost."""
    metrics = CallhubMetrics()
    writer = CallWriter(any_db, store_settings, metrics=metrics)
    first = calls_named("f", 3, T0)
    for record in first:
        writer.submit(record)
    await drained(writer)
    late = calls_named("late", 2, T0 + 100)
    for record in late:
        writer.submit(record)
    assert writer.pending == 2 and writer.dropped == 0
    assert len(Spool(store_settings.spool_dir)) == 2

    restarted = CallWriter(any_db, store_settings)
    await drained(restarted)
    assert restarted.written == 2
    assert (await stored(any_db))[0] == [r.linkedid for r in first + late]

    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    nowhere = CallWriter(any_db, Settings(spool_dir=str(blocked / "spool")), metrics=metrics)
    await nowhere.stop()
    nowhere.submit(make_call("lost", at=T0 + 200))
    assert nowhere.dropped == 1 and nowhere.pending == 0
    assert sample(metrics, "callhub_calls_dropped_total") == 1


async def test_past_max_memory_calls_are_dropped_and_counted(
        any_db: Database, store_settings: Settings) -> None:
    """The memory bound: calls handed over faster than the spool takes them wait in
    memory up to `max_memory`; past it each is dropped, counted and logged."""
    metrics = CallhubMetrics()
    writer = CallWriter(any_db, store_settings, metrics=metrics, max_memory=5)
    records = calls_named("m", 8, T0)
    for record in records:  # not started: nothing takes them from memory
        writer.submit(record)
    assert writer.pending == 5 and writer.dropped == 3
    assert sample(metrics, "callhub_calls_dropped_total") == 3
    await drained(writer)
    assert (await stored(any_db))[0] == [r.linkedid for r in records[:5]]


async def test_batches_are_one_transaction_each(any_db: Database,
                                                store_settings: Settings) -> None:
    writer = CallWriter(any_db, store_settings, batch_size=50)
    batches: list[int] = []
    writer.listeners.append(lambda records, saved: batches.append(len(saved.ids)))
    records = calls_named("x", 120, T0)
    for record in records:
        writer.submit(record)
    await drained(writer)
    assert batches == [50, 50, 20]
    assert writer.written == 120 and writer.failed_batches == 0
    assert len((await stored(any_db))[0]) == 120


def test_the_spool_rolls_over_segments_drops_the_stored_and_survives_a_torn_checkpoint(
        tmp_path: Path) -> None:
    """Past `segment_bytes` appends go to a new segment; the checkpoint deletes the
    segments wholly before it; a reopened spool goes on from the checkpoint; one torn
    by a power cut means "from the oldest segment left" (calls stored again, never
    skipped)."""
    directory = tmp_path / "spool"
    spool = Spool(directory, segment_bytes=2048)
    records = calls_named("s", 60, T0)
    ends: list[tuple[int, int]] = []
    for i in range(0, len(records), 3):  # a group commit at a time, as the writer appends
        ends += spool.append(records[i:i + 3])
    segments = sorted({seg for seg, _ in ends})
    assert len(segments) >= 5, "the segments did not roll over"
    assert ends == sorted(ends) and len(spool.segments()) == len(segments)
    plain = [r.to_plain() for r in records]
    assert [r.to_plain() for r in spool.unstored()] == plain  # across every segment, in order

    done = 31
    spool.set_checkpoint(ends[done])  # the first 32 are stored
    left = [int(m[1]) for path in spool.segments() if (m := SEGMENT.fullmatch(path.name))]
    assert min(left) >= ends[done][0] > segments[0]  # the stored segments are gone
    assert [r.to_plain() for r in spool.unstored()] == plain[done + 1:]
    spool.close()

    reopened = Spool(directory, segment_bytes=2048)
    assert [r.to_plain() for r in reopened.unstored()] == plain[done + 1:]
    more = calls_named("t", 2, T0 + 100)
    (after,) = {seg for seg, _ in reopened.append(more)}
    assert after > segments[-1]  # a new segment on every open
    reopened.close()

    everything = plain + [r.to_plain() for r in more]
    for damage in (b'{"segment": 3, "off',  # torn
                   b'{"segment": 1e999, "offset": 0}',  # was an OverflowError at open
                   b"[" * 100_000,  # was a RecursionError
                   b'{"segment": [3], "offset": 0}'):
        (directory / CHECKPOINT_FILE).write_bytes(damage)
        torn = Spool(directory, segment_bytes=2048)
        again = [r.to_plain() for r in torn.unstored()]
        # From the oldest segment left: a tail of everything appended, in order, holding
        # every call not stored; only stored calls come again.
        assert again == everything[len(everything) - len(again):], damage
        assert len(again) > len(everything) - (done + 1)
        torn.close()


async def test_the_writer_stores_across_segments_once_even_after_a_torn_checkpoint(
        any_db: Database, store_settings: Settings, tmp_path: Path) -> None:
    """The writer on a spool of small segments: every call stored once and in order, the
    stored segments deleted as it goes. Then the disk as a crash would leave it (the
    spool copied before the clean stop) with its checkpoint torn: the next start stores
    some calls again and the new ones, each still once in the database."""
    directory = Path(store_settings.spool_dir)
    writer = CallWriter(any_db, store_settings, spool=Spool(directory, segment_bytes=2048),
                        batch_size=7, max_buffer=10)
    first = calls_named("a", 40, T0)
    for record in first:
        writer.submit(record)
    await writer.start()
    async with asyncio.timeout(WAIT):
        await writer.wait_written()
    assert 1 <= len(writer.spool.segments()) < 5  # stored segments deleted as it went
    crashed = tmp_path / "crashed"
    shutil.copytree(directory, crashed)
    await writer.stop()
    assert (await stored(any_db))[0] == [r.linkedid for r in first]

    shutil.rmtree(directory)
    shutil.copytree(crashed, directory)
    (directory / CHECKPOINT_FILE).write_bytes(b'{"seg')
    restarted = CallWriter(any_db, store_settings,
                           spool=Spool(directory, segment_bytes=2048), batch_size=7)
    second = calls_named("b", 30, T0 + 1000)
    for record in second:
        restarted.submit(record)
    await drained(restarted)
    assert restarted.written > len(second)  # some of the first stored again
    linkedids, n_attempts = await stored(any_db)
    assert linkedids == [r.linkedid for r in first + second]  # each once, in order
    assert n_attempts == sum(len(r.attempts) for r in first + second)
    await assert_worklist_counts_each_call_once(any_db)


def test_spool_skips_a_torn_last_line_and_survives_reopening(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append([make_call("1", caller_name="张三"), make_call("2")])
    spool.close()
    with spool.segments()[-1].open("ab") as fh:
        fh.write(b'{"pbx": "main", "linkedid": "3", "dir')  # a crash mid-write
    reopened = Spool(tmp_path)
    assert len(reopened) == 2  # complete lines only
    records = reopened.unstored()
    assert [r.linkedid for r in records] == ["1", "2"]
    assert records[0].caller_name == "张三"
    # The next append goes to a new segment: nothing is glued to the torn line.
    end = reopened.append([make_call("4")])[-1]
    assert [r.linkedid for r in reopened.unstored()] == ["1", "2", "4"]
    assert len(reopened.segments()) == 2 and reopened.skipped == 0
    # Progress: stored calls are not read again; segments wholly stored are deleted.
    reopened.set_checkpoint(end)
    assert len(reopened.segments()) == 1 and reopened.unstored() == []
    for path in [*reopened.segments(), tmp_path / "wal.checkpoint"]:
        assert path.stat().st_mode & 0o777 == 0o600, path
    reopened.close()
    again = Spool(tmp_path)  # a restart: the last segment is wholly stored, so deleted
    assert again.unstored() == [] and again.segments() == []
    again.append([make_call("5")])
    again.clear()
    assert len(again) == 0 and again.segments() == []


def spool_with_damage(directory: str) -> list[bytes]:
    """A spool of the call `before` and, after it, lines a disk fault could leave: not
    JSON, JSON of another shape, a record with a wrong value, one whose attempt is no
    object, nesting deeper than any parser's. Returns those lines."""
    no_attempt = make_call("no-attempt").to_dict()
    no_attempt["attempts"] = [1]
    damaged = [b"\x00\x00\x00garbage", b"[1, 2]", b"null",
               b'{"pbx": "main", "linkedid": "x", "arrived_at": "soon"}',
               json.dumps(no_attempt).encode(), b"[" * 5000 + b"]" * 5000]
    spool = Spool(directory)
    spool.append([make_call("before")])
    spool.close()
    with spool.segments()[-1].open("ab") as fh:
        fh.write(b"".join(line + b"\n" for line in damaged))
    return damaged


async def test_damaged_lines_amid_the_spool_are_quarantined_and_passed(
        any_db: Database, store_settings: Settings, tmp_path: Path) -> None:
    """Unreadable lines between calls are skipped, counted once and kept in the
    quarantine before their segment goes; the calls around them are stored, and the
    checkpoint moves past the damage. A crash before the checkpoint moved (the spool
    as it was) quarantines nothing twice and stores nothing twice."""
    damaged = spool_with_damage(store_settings.spool_dir)
    spool = Spool(store_settings.spool_dir)
    spool.append([make_call("after", at=T0 + 60)])
    spool.close()
    crashed = tmp_path / "crashed"
    shutil.copytree(store_settings.spool_dir, crashed)

    metrics = CallhubMetrics()
    writer = CallWriter(any_db, store_settings, metrics=metrics)
    await drained(writer)
    assert writer.spool.skipped == len(damaged) and writer.quarantined == len(damaged)
    assert sample(metrics, "callhub_quarantined_calls_total") == len(damaged)
    assert (await stored(any_db))[0] == ["before", "after"]
    assert Spool(store_settings.spool_dir).segments() == []
    async with any_db.connection() as conn:
        kept = await quarantine.listing(conn)
    assert len(kept) == len(damaged)
    assert all(row["error"].startswith("spool line unreadable: ") for row in kept)
    records = [json.loads(row["record"]) for row in kept]
    assert "\x00\x00\x00garbage" in records and [1, 2] in records
    assert {(row["pbx"], row["linkedid"]) for row in kept} >= {("main", "x"),
                                                              ("main", "no-attempt")}

    shutil.rmtree(store_settings.spool_dir)
    shutil.copytree(crashed, store_settings.spool_dir)
    again = CallWriter(any_db, store_settings)
    await drained(again)
    assert again.spool.skipped == len(damaged) and again.quarantined == 0
    assert (await stored(any_db))[0] == ["before", "after"]
    async with any_db.connection() as conn:
        assert await quarantine.count(conn) == len(damaged)


async def test_damaged_lines_wait_for_a_locked_database_before_the_checkpoint_passes(
        tmp_path: Path, store_settings: Settings) -> None:
    """The quarantine cannot be written (another process holds SQLite's write lock):
    the writer retries, stores nothing past the damage meanwhile, and keeps every
    line once the lock goes."""
    factory = DbFactory("sqlite", tmp_path)
    db = await factory.create(busy_timeout=0.05)
    await migrate.upgrade(db)
    damaged = spool_with_damage(store_settings.spool_dir)
    holder = sqlite3.connect(tmp_path / "callhub.db", isolation_level=None, timeout=5)
    holder.execute("BEGIN EXCLUSIVE")
    writer = CallWriter(db, store_settings, retry_initial=0.02, retry_max=0.05)
    first = writer.spool.checkpoint
    try:
        await writer.start()
        async with asyncio.timeout(WAIT):
            await writer.wait_until(lambda w: w.failed_batches >= 2)
        assert writer.quarantined == 0 and writer.spool.checkpoint == first
        holder.execute("COMMIT")
        async with asyncio.timeout(WAIT):
            await writer.wait_written()
        await writer.stop()
        assert writer.quarantined == len(damaged) and writer.spool.skipped == len(damaged)
        assert (await stored(db))[0] == ["before"]
        async with db.connection() as conn:
            assert await quarantine.count(conn) == len(damaged)
    finally:
        holder.close()
        await factory.cleanup()


async def test_a_newer_callhubs_spool_is_stored_without_its_new_fields(
        any_db: Database, store_settings: Settings) -> None:
    """A downgrade over a spool a newer callhub wrote: records with fields this version
    does not know (at the top and in an attempt) are stored without them, not lost."""
    spool = Spool(store_settings.spool_dir)
    spool.append([make_call("before")])
    spool.close()
    newer = make_call("newer", at=T0 + 30).to_dict()
    newer["mood"] = "calm"
    for attempt in newer["attempts"]:
        attempt["headset"] = "wireless"
    assert newer["attempts"], "the sample call needs an attempt"
    with spool.segments()[-1].open("ab") as fh:
        fh.write(json.dumps(newer).encode() + b"\n")

    writer = CallWriter(any_db, store_settings)
    await drained(writer)
    assert writer.spool.skipped == 0 and writer.quarantined == 0
    ids, n_attempts = await stored(any_db)
    assert ids == ["before", "newer"]
    assert n_attempts == len(make_call("before").attempts) + len(newer["attempts"])


def test_a_failed_spool_write_is_cut_back_off(tmp_path: Path) -> None:
    """Disk full mid-write (a real EFBIG in a child process): no half line stays behind."""
    import subprocess
    import sys
    script = f"""
import resource, signal, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from store_fixtures import make_call
from callhub.store.spool import Spool
spool = Spool({str(tmp_path)!r})
spool.append([make_call("1")])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (spool.size() + 200, resource.RLIM_INFINITY))
try:
    spool.append([make_call("2", caller_name="x" * 1000)])
except OSError as exc:
    print("refused", exc.errno)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.startswith("refused"), done.stdout + done.stderr
    spool = Spool(tmp_path)
    assert spool.segments()[0].read_bytes().endswith(b"\n")
    spool.append([make_call("3")])
    records = spool.unstored()
    assert [r.linkedid for r in records] == ["1", "3"] and spool.skipped == 0


def test_the_spool_keeps_records_exactly_and_reads_the_old_format(tmp_path: Path) -> None:
    import dataclasses
    import json

    from callhub.records import Transfer

    record = make_call("1", at=T0 + 0.123456, caller_name="张三\n\"x\"",
                       transfers=[Transfer("blind", "PJSIP/1002", T0 + 40.5)])
    assert CallRecord.from_dict(record.to_plain()) == record  # times exact, not to the ms
    # to_dict is what dataclasses.asdict gives, with ISO times.
    plain = dataclasses.asdict(record)
    assert list(record.to_dict()) == list(plain)
    assert record.to_dict()["attempts"][0].keys() == plain["attempts"][0].keys()
    assert CallRecord.from_dict(record.to_dict()).arrived_at == round(record.arrived_at, 3)
    # A spool left by an earlier version (calls.jsonl, ISO times) is stored first.
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "calls.jsonl").write_text(json.dumps(make_call("old").to_dict()) + "\n")
    spool = Spool(tmp_path)
    spool.append([record])
    assert [r.linkedid for r in spool.unstored()] == ["old", "1"]
    assert spool.unstored()[1] == record


def test_the_spool_keeps_odd_values_exactly(tmp_path: Path) -> None:
    """A lone surrogate (orjson cannot write it), NaN and infinity (orjson writes null):
    such a record's line falls back to json and reads back the same."""
    import dataclasses
    import math

    plain = make_call("plain", at=T0 + 0.5, caller_name="Müller 张三")
    surrogate = make_call("surrogate", at=T0 + 1, caller_name="x\ud800y")
    nan = dataclasses.replace(make_call("nan", at=T0 + 2), ring_seconds=math.nan)
    inf = dataclasses.replace(make_call("inf", at=T0 + 3), hold_seconds=math.inf)
    spool = Spool(tmp_path)
    spool.append([plain, surrogate, nan, inf])
    back = Spool(tmp_path).unstored()
    assert back[:2] == [plain, surrogate]
    assert math.isnan(back[2].ring_seconds)
    assert dataclasses.replace(back[2], ring_seconds=0.0) == dataclasses.replace(
        nan, ring_seconds=0.0)
    assert back[3] == inf
