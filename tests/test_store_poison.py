"""No poison record: odd PBX values are cut where they enter, a call the database refuses is
quarantined (the others are stored), an outage is retried, a replay changes nothing.

Real databases (SQLite and PostgreSQL), a real PostgreSQL that refuses logins (a
proxy answering its startup with 28P01), a real unwritable spool directory.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa
import structlog
from sqlalchemy.engine import make_url
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
from callhub.records import FIELD_LIMITS, MIN_KEPT, CallRecord, bounded
from callhub.store import migrate, quarantine, worklist
from callhub.store.db import Database
from callhub.store.failures import classify
from callhub.store.followups import followups
from callhub.store.spool import Spool
from callhub.store.tables import calls, worklist_calls, worklist_entries
from callhub.store.writer import SUSPECT_TRIES, CallWriter

WAIT = 30.0
CALLER = "+8613912345678"
LONG_NAME = "张" * 150 + "Anna-Maria " * 15  # 315 characters, multibyte first


def sample(metrics: CallhubMetrics, name: str) -> float:
    return metrics.registry.get_sample_value(name) or 0.0


async def rows(db: Database, table: sa.Table, *columns: str) -> list[tuple[Any, ...]]:
    """`columns` of every row, in insertion (id) order."""
    async with db.connection() as conn:
        cols = [table.c[c] for c in columns] if columns else list(table.c)
        order = table.c.id if "id" in table.c else cols[0]
        result = await conn.execute(sa.select(*cols).order_by(order, *cols))
        return [tuple(r) for r in result]


async def run_writer(db: Database, settings: Settings, records: list[CallRecord],
                     **kwargs: Any) -> CallWriter:
    """Submit `records` before the start (so they make one batch), store them, stop."""
    writer = CallWriter(db, settings, **kwargs)
    for record in records:
        writer.submit(record)
    await writer.start()
    async with asyncio.timeout(WAIT):
        await writer.wait_written()
    await writer.stop()
    return writer


def test_bounded_cuts_on_characters_keeps_the_start_and_flags_the_record() -> None:
    record = make_call("1", caller_name=LONG_NAME, caller_number="+86" + "1" * 100,
                       queue="q\x00ueue")
    cut = bounded(record)
    assert cut.truncated and not record.truncated
    assert cut.caller_name == LONG_NAME[:FIELD_LIMITS["caller_name"]]
    assert len(cut.caller_name or "") >= MIN_KEPT
    assert (cut.caller_name or "").encode("utf-8").decode("utf-8") == cut.caller_name
    assert cut.caller_number == record.caller_number[:64]  # type: ignore[index]
    assert cut.queue == "queue"
    plain = make_call("2")
    assert bounded(plain) is plain and not plain.truncated


async def test_a_300_character_caller_name_is_stored_cut_and_flagged(
        any_db: Database, store_settings: Settings) -> None:
    records = [make_call("long", caller_name=LONG_NAME), make_call("plain", at=T0 + 60)]
    writer = await run_writer(any_db, store_settings, records)
    assert writer.quarantined == 0
    stored = await rows(any_db, calls, "linkedid", "caller_name", "truncated")
    assert stored == [("long", LONG_NAME[:256], True), ("plain", "张三", False)]


async def test_a_call_the_database_refuses_is_quarantined_and_the_rest_stored(
        any_db: Database, store_settings: Settings) -> None:
    metrics = CallhubMetrics()
    # A call no PBX value can be blamed for but the database refuses anyway (NOT NULL).
    poison = replace(make_call("p", at=T0 + 7 * 60), outcome=None)  # type: ignore[arg-type]
    good = [make_call(f"g{i}", at=T0 + i * 60, caller_number=f"+8613{i:09d}")
            for i in range(20)]
    records = [*good[:7], poison, *good[7:]]
    writer = await run_writer(any_db, store_settings, records, metrics=metrics)
    assert [r[0] for r in await rows(any_db, calls, "linkedid")] == [r.linkedid for r in good]
    assert writer.quarantined == 1 and writer.failed_batches == 0
    assert sample(metrics, "callhub_quarantined_calls_total") == 1
    health = writer.status()
    assert health.quarantine_grew and any("quarantined" in r for r in health.reasons())
    assert writer.health.check is not None and "quarantined" in (await writer.health.check()
                                                                  or "")
    async with any_db.connection() as conn:
        listed = await quarantine.listing(conn)
    assert [(q["pbx"], q["linkedid"]) for q in listed] == [("main", "p")]
    assert "IntegrityError" in listed[0]["error"] or "NotNull" in listed[0]["error"]
    assert json.loads(listed[0]["record"])["outcome"] is None
    assert len(Spool(store_settings.spool_dir)) == 0  # nothing waits: the spool moved on
    # The same record quarantined again (a crash before the checkpoint) keeps one row.
    async with any_db.begin() as conn:
        assert not await quarantine.add(conn, poison, "again")
        assert await quarantine.count(conn) == 1
    if any_db.dialect == "sqlite":  # `callhub db quarantine` shows it to an admin
        env = {k: v for k, v in os.environ.items() if not k.startswith("CALLHUB_")}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "callhub", "db", "quarantine", "--database-url",
            any_db.engine.url.render_as_string(hide_password=False), "--json", env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        listed_cli = [json.loads(line) for line in out.decode().splitlines()]
        assert [q["record"]["linkedid"] for q in listed_cli] == ["p"]
        assert listed_cli[0]["error"] == listed[0]["error"]


async def test_postgresql_value_too_long_is_a_data_error_and_quarantined(
        tmp_path: Path, store_settings: Settings) -> None:
    factory = DbFactory("postgresql", tmp_path)
    try:
        db = await factory.create()
        await migrate.upgrade(db)
        too_long = make_call("x" * 100)  # a key: it cannot be cut, so it cannot be stored
        records = [make_call("a"), too_long, make_call("b", at=T0 + 60)]
        writer = await run_writer(db, store_settings, records)
        assert [r[0] for r in await rows(db, calls, "linkedid")] == ["a", "b"]
        assert writer.quarantined == 1
        async with db.connection() as conn:
            listed = await quarantine.listing(conn)
        assert listed[0]["linkedid"] == too_long.linkedid
        assert "value too long" in listed[0]["error"]
    finally:
        await factory.cleanup()


async def test_an_error_nobody_classified_is_retried_then_blamed_on_the_lone_call(
        tmp_path: Path, store_settings: Settings) -> None:
    """An error callhub cannot place (not a data error, not an outage) while the database
    answers: a batch is split down to the call it follows; that call alone is tried
    SUSPECT_TRIES times, as an outage would be, before it is quarantined. The database is
    real: a site's own trigger refuses one call with an SQLSTATE of PL/pgSQL's own class."""
    factory = DbFactory("postgresql", tmp_path)
    try:
        db = await factory.create()
        await migrate.upgrade(db)
        async with db.begin() as conn:
            await conn.execute(sa.text(
                "CREATE FUNCTION refuse_call() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "IF NEW.linkedid = 'p' THEN RAISE EXCEPTION 'the site refuses this call' "
                "USING ERRCODE = 'P0001'; END IF; RETURN NEW; END $$"))
            await conn.execute(sa.text(
                "CREATE TRIGGER refuse_call BEFORE INSERT OR UPDATE ON calls "
                "FOR EACH ROW EXECUTE FUNCTION refuse_call()"))
        metrics = CallhubMetrics()
        missed = (2, 9, 12, 15)  # one caller's misses: one worklist entry, four calls
        good = [make_call(f"g{i}", at=T0 + i * 60, outcome="missed", caller_number=CALLER)
                if i in missed else
                make_call(f"g{i}", at=T0 + i * 60, caller_number=f"+8613{i:09d}")
                for i in range(20)]
        records = [*good[:7], make_call("p", at=T0 + 7 * 60 + 30), *good[7:]]
        writer = CallWriter(db, store_settings, metrics=metrics, retry_initial=0.01,
                            retry_max=0.02)
        for record in records:
            writer.submit(record)  # before the start: one batch, COPYed
        await writer.start()
        async with asyncio.timeout(WAIT):
            await writer.wait_written()
        assert writer.quarantined == 1
        # Tried alone SUSPECT_TRIES times: the first tries failed as an outage would...
        assert writer.failed_batches == SUSPECT_TRIES - 1
        assert sample(metrics, "callhub_db_write_errors_total") == SUSPECT_TRIES - 1
        # ...and once it is quarantined the writer is ready again, saying so.
        assert writer.health.ready
        assert any("quarantined" in r for r in writer.status().reasons())
        await writer.stop()
        # The batch was stored again on each try: every call once, each miss counted once.
        stored = [r[0] for r in await rows(db, calls, "linkedid")]
        assert sorted(stored) == sorted(r.linkedid for r in good)
        await assert_worklist_counts_each_call_once(db)
        entries = await rows(db, worklist_entries, "number", "call_count")
        assert entries == [(CALLER, len(missed))]
        async with db.connection() as conn:
            listed = await quarantine.listing(conn)
        assert [q["linkedid"] for q in listed] == ["p"]
        assert "the site refuses this call" in listed[0]["error"]
        assert len(Spool(store_settings.spool_dir)) == 0
    finally:
        await factory.cleanup()


async def test_a_statement_on_a_connection_the_network_dropped_is_an_outage() -> None:
    """The writer's COPY path talks to asyncpg directly. A statement sent after the network
    dropped the connection between two of a batch raised asyncpg's own "connection is
    closed", which callhub could not place; the database answering the ping a moment
    later (a flapping link) then blamed the data: the batch was split and its calls
    quarantined (the likely cause of calls lost once in tests/test_faults_wal.py). A value
    asyncpg cannot encode is still the data's."""
    url = make_url(pg_url())
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start()
    conn = await asyncpg.connect(via_proxy(pg_url(), proxy).replace("+asyncpg", ""))
    closed = asyncio.Event()
    conn.add_termination_listener(lambda _conn: closed.set())
    try:
        with pytest.raises(Exception) as refused:
            await conn.execute("SELECT $1::integer", "not a number")
        assert classify(refused.value) == "data"
        proxy.cut()  # the network drops the connection while nothing is sent
        async with asyncio.timeout(5):
            await closed.wait()
        with pytest.raises(Exception) as dropped:
            await conn.copy_records_to_table("calls", records=[("lab",)], columns=["pbx"])
        assert "connection is closed" in str(dropped.value)
        assert classify(dropped.value) == "outage"
    finally:
        await conn.close(timeout=1)
        await proxy.stop()


async def test_login_refused_is_an_outage_the_calls_wait_and_nothing_is_quarantined(
        tmp_path: Path, pg_proxy: TcpProxy, store_settings: Settings) -> None:
    factory = DbFactory("postgresql", tmp_path)
    try:
        db = await factory.create(url=via_proxy(pg_url(), pg_proxy))
        await migrate.upgrade(db)
        pg_proxy.refuse_logins()
        writer = CallWriter(db, store_settings, retry_initial=0.02, retry_max=0.05,
                            stuck_after=0.2, stop_timeout=0.1)
        records = [make_call(f"r{i}", at=T0 + i * 60) for i in range(10)]
        await writer.start()
        for record in records:
            writer.submit(record)
        async with asyncio.timeout(WAIT):
            await writer.wait_until(lambda w: w.failed_batches >= 3 and len(w.spool) == 10)
            while not writer.status().stuck:  # stuck_after has to pass on the clock
                await writer.wait_until(lambda w, n=writer.failed_batches:
                                        w.failed_batches > n)
        assert writer.quarantined == 0 and writer.written == 0
        assert any("writer stuck" in r for r in writer.status().reasons())
        await writer.stop()
        assert len(Spool(store_settings.spool_dir)) == 10
        pg_proxy.restore()
        again = await run_writer(db, store_settings, [])
        assert again.written == 10
        assert [r[0] for r in await rows(db, calls, "linkedid")] == [r.linkedid for r in records]
    finally:
        await factory.cleanup()


async def test_a_read_only_database_is_an_outage_the_calls_wait_and_none_is_quarantined(
        tmp_path: Path, store_settings: Settings) -> None:
    """PostgreSQL refusing writes (a hot standby after a failover, a database an admin set
    read-only: SQLSTATE 25006) is the database's state, not the data's: the batch is
    retried whole, never split or quarantined, and stored once writes are taken again."""
    factory = DbFactory("postgresql", tmp_path)
    try:
        db = await factory.create()
        await migrate.upgrade(db)
        read_only = db.connect_again(session={"default_transaction_read_only": "on"})
        records = [make_call(f"ro{i}", at=T0 + i * 60) for i in range(10)]
        with structlog.testing.capture_logs() as logs:
            writer = CallWriter(read_only, store_settings, retry_initial=0.02,
                                retry_max=0.05, stop_timeout=0.1)
            for record in records:
                writer.submit(record)
            await writer.start()
            async with asyncio.timeout(WAIT):
                await writer.wait_until(lambda w: w.failed_batches >= 3)
            await writer.stop()
        await read_only.close()
        assert writer.quarantined == 0 and writer.written == 0
        assert not [e for e in logs if e["event"] == "writer.batch_split"]
        assert {e.get("sqlstate") for e in logs if e["event"] == "writer.batch_failed"} == {
            "25006"}
        async with db.connection() as conn:
            assert await quarantine.count(conn) == 0
        assert len(Spool(store_settings.spool_dir)) == 10
        again = await run_writer(db, store_settings, [])
        assert again.written == 10
        assert [r[0] for r in await rows(db, calls, "linkedid")] == [r.linkedid for r in records]
    finally:
        await factory.cleanup()


@pytest.mark.parametrize(("break_it", "mend_it"), [
    ("REVOKE INSERT ON attempts FROM CURRENT_USER", "GRANT INSERT ON attempts TO CURRENT_USER"),
    ("ALTER TABLE calls RENAME COLUMN caller_name TO caller_name_gone",
     "ALTER TABLE calls RENAME COLUMN caller_name_gone TO caller_name"),
], ids=["privilege-revoked", "column-renamed"])
async def test_a_schema_the_writer_cannot_write_is_an_outage_until_it_is_mended(
        tmp_path: Path, store_settings: Settings, break_it: str, mend_it: str) -> None:
    """A grant revoked (a migration run as another role) or a column renamed under a
    running writer (a newer callhub's migration): every call would fail alike, so the
    writer waits, splits and quarantines nothing, and stores each call once when the
    schema is mended, without a restart."""
    factory = DbFactory("postgresql", tmp_path)
    try:
        db = await factory.create()
        await migrate.upgrade(db)
        async with db.begin() as conn:
            await conn.execute(sa.text(break_it))
        records = [make_call(f"s{i}", at=T0 + i * 60) for i in range(10)]
        with structlog.testing.capture_logs() as logs:
            writer = CallWriter(db, store_settings, retry_initial=0.02, retry_max=0.05)
            for record in records:
                writer.submit(record)
            await writer.start()
            async with asyncio.timeout(WAIT):
                await writer.wait_until(lambda w: w.failed_batches >= 3)
            assert writer.quarantined == 0 and writer.written == 0
            async with db.begin() as conn:
                await conn.execute(sa.text(mend_it))
            async with asyncio.timeout(WAIT):
                await writer.wait_written()
            await writer.stop()
        assert not [e for e in logs if e["event"] == "writer.batch_split"]
        assert writer.quarantined == 0 and writer.written == 10
        assert [r[0] for r in await rows(db, calls, "linkedid")] == [r.linkedid for r in records]
        async with db.connection() as conn:
            assert await quarantine.count(conn) == 0
        # The outage is warned of once, its repeats at debug; its end says the tries.
        failed = [e for e in logs if e["event"] == "writer.batch_failed"]
        assert len(failed) == writer.failed_batches >= 3
        assert [e["log_level"] for e in failed] == ["warning"] + ["debug"] * (len(failed) - 1)
        back = [e for e in logs if e["event"] == "writer.database_back"]
        assert [(e["failed_tries"], e["log_level"]) for e in back] == [(len(failed), "info")]
    finally:
        await factory.cleanup()


async def test_an_unwritable_spool_is_said_and_calls_are_stored_from_memory(
        any_db: Database, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the spool directory should be")
    settings = replace(Settings(), spool_dir=str(blocker / "spool"))
    metrics = CallhubMetrics()
    writer = CallWriter(any_db, settings, metrics=metrics, spool_retry=0.05)
    await writer.start()
    records = [make_call(f"m{i}", at=T0 + i * 60) for i in range(5)]
    for record in records:
        writer.submit(record)
    async with asyncio.timeout(WAIT):
        await writer.wait_written()
    health = writer.status()
    assert not health.spool_writable and "NotADirectoryError" in (health.spool_error or "")
    assert any("spool not writable" in r for r in health.reasons())
    # /readyz shows the writer part not ready, with that reason.
    (part,) = [p for p in await writer.supervisor.states() if p.name == "writer"]
    assert not part.ready and "spool not writable" in (part.reason or "")
    assert sample(metrics, "callhub_spool_errors_total") >= 1
    assert sample(metrics, "callhub_spool_writable") == 0
    assert writer.dropped == 0
    await writer.stop()
    assert [r[0] for r in await rows(any_db, calls, "linkedid")] == [r.linkedid
                                                                   for r in records]


async def test_replaying_stored_calls_changes_nothing(any_db: Database, tmp_path: Path) -> None:
    """A crash after a batch committed but before the checkpoint moved: the next start
    stores those calls again. No second worklist entry, no count, no follow-up."""
    settings = replace(Settings(), spool_dir=str(tmp_path / "a"))
    number = "+8613911112222"
    records = [
        make_call("m1", at=T0, outcome="missed", caller_number=number),
        make_call("m2", at=T0 + 60, outcome="missed", caller_number=number),
        make_call("o1", at=T0 + 120, outcome="missed", caller_number="+8613900000009"),
        make_call("cb", at=T0 + 600, direction="outbound", called_number=number),
        make_call("m3", at=T0 + 900, outcome="missed", caller_number=number),
    ]
    await run_writer(any_db, settings, records)
    async with any_db.begin() as conn:  # a supervisor dismisses one entry meanwhile
        entry = (await conn.execute(sa.select(worklist_entries.c.id).where(
            worklist_entries.c.number == "+8613900000009"))).scalar_one()
        await worklist.mark(conn, entry, "dismissed", "sup", None)

    async def state() -> list[Any]:
        return [await rows(any_db, calls, "id", "linkedid", "outcome", "truncated"),
                await rows(any_db, worklist_entries, "id", "number", "status", "call_count",
                           "how", "handled_call_id"),
                await rows(any_db, worklist_calls, "entry_id", "call_id"),
                await rows(any_db, followups, "id")]

    before = await state()
    assert [e[2] for e in before[1]] == ["handled", "dismissed", "pending"]
    replay_dir = tmp_path / "replay"
    Spool(replay_dir).append(records)  # the same calls, still after the checkpoint
    metrics = CallhubMetrics()
    again = await run_writer(any_db, replace(settings, spool_dir=str(replay_dir)), [],
                             metrics=metrics)
    assert again.written == len(records)
    assert await state() == before
    assert sample(metrics, "callhub_callback_seconds_count") == 0  # no callback twice


def test_errors_are_classified_by_what_they_mean() -> None:
    import sqlite3

    from sqlalchemy import exc as sa_exc

    locked = sa_exc.OperationalError("INSERT", {}, sqlite3.OperationalError("locked"))
    assert classify(locked) == "outage"
    assert classify(ConnectionRefusedError(111, "refused")) == "outage"
    assert classify(TimeoutError()) == "outage"
    null = sa_exc.IntegrityError("INSERT", {}, sqlite3.IntegrityError("NOT NULL"))
    assert classify(null) == "data"
    assert classify(ValueError("naive datetime")) == "data"

    class PgError(Exception):
        def __init__(self, sqlstate: str) -> None:
            super().__init__(sqlstate)
            self.sqlstate = sqlstate

    for code, kind in (("22001", "data"), ("23505", "data"), ("28P01", "outage"),
                       ("08006", "outage"), ("57P01", "outage"), ("25006", "outage"),
                       ("42501", "outage"), ("42P01", "outage"), ("42703", "outage"),
                       ("25P02", "unknown"), ("42601", "unknown"), ("P0001", "unknown")):
        assert classify(sa_exc.DBAPIError("INSERT", {}, PgError(code))) == kind, code


async def test_a_new_sqlite_database_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "callhub.db"
    db = Database.connect(f"sqlite+aiosqlite:///{path}")
    try:
        await migrate.upgrade(db)
    finally:
        await db.close()
    for name in ("callhub.db", "callhub.db-wal", "callhub.db-shm"):
        if (tmp_path / name).exists():
            assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name
