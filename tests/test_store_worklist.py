"""The missed-call worklist, kept from call records as they are written."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest
import sqlalchemy as sa
from store_fixtures import T0, DbFactory, make_call, pg_url
from traces_fixtures import trace, trace_pbx

from callhub.ami.replay import replay_files
from callhub.config import Settings
from callhub.records import CallRecord
from callhub.store import migrate, queries, worklist
from callhub.store.db import Database
from callhub.store.errors import InvalidTransition, NotFound
from callhub.store.save import save_calls

CALLER = "+8613800000004"


async def save(db: Database, settings: Settings, *records: CallRecord) -> list[int]:
    async with db.begin() as conn:
        return (await save_calls(conn, list(records), settings)).ids


async def entries(db: Database, **filters: str) -> list[dict[str, object]]:
    async with db.connection() as conn:
        return await queries.list_worklist(conn, queries.WorklistFilter(**filters), 100)


async def test_trace_missed_call_handled_by_the_recorded_callback(
        any_db: Database, store_settings: Settings) -> None:
    """04: +8613800000004 rings out to voicemail; 10: agent1 calls it back, answered."""
    pbx = trace_pbx("04_missed_noanswer_voicemail")
    missed = replay_files([trace("04_missed_noanswer_voicemail")], pbx)
    callback = replay_files([trace("10_outbound_callback")], trace_pbx("10_outbound_callback"))
    assert [(r.outcome, r.external_number) for r in missed] == [("missed", CALLER)]
    assert [(r.direction, r.outcome, r.external_number) for r in callback] == [
        ("outbound", "answered", CALLER)]

    [missed_id] = await save(any_db, store_settings, *missed)
    [entry] = await entries(any_db)
    assert (entry["status"], entry["number"], entry["call_count"]) == ("pending", CALLER, 1)
    assert [c["id"] for c in entry["calls"]] == [missed_id]  # type: ignore[attr-defined]

    [callback_id] = await save(any_db, store_settings, *callback)
    [entry] = await entries(any_db)
    assert entry["status"] == "handled"
    assert entry["how"] == "callback"
    assert entry["handled_call_id"] == callback_id
    assert entry["handled_by"] == "Agent One"
    answered_at = callback[0].answered_at
    assert answered_at is not None
    assert entry["time_to_callback_seconds"] == pytest.approx(
        answered_at - missed[0].arrived_at, abs=1e-3)


async def test_three_misses_are_one_entry_per_number_and_line(
        any_db: Database, store_settings: Settings) -> None:
    ids = await save(any_db, store_settings,
                     make_call("a", at=T0, outcome="missed", caller_number=CALLER),
                     make_call("b", at=T0 + 60, outcome="abandoned", reason="while_ringing",
                               caller_number=CALLER),
                     make_call("c", at=T0 + 120, outcome="missed", caller_number=CALLER),
                     make_call("d", at=T0 + 130, outcome="missed", caller_number=CALLER,
                               line="other-line"),
                     make_call("e", at=T0 + 140, outcome="missed", caller_number="+4930123"))
    rows = await entries(any_db)
    assert len(rows) == 3
    main = next(e for e in rows if e["number"] == CALLER and e["line"] == "4008001000")
    assert main["call_count"] == 3
    assert [c["id"] for c in main["calls"]] == ids[:3]  # type: ignore[attr-defined]
    # Writing the same calls again lists nothing twice.
    await save(any_db, store_settings, make_call("b", at=T0 + 60, outcome="abandoned",
                                                 caller_number=CALLER))
    again = await entries(any_db, number=CALLER, line="4008001000")
    assert again[0]["call_count"] == 3 and len(again[0]["calls"]) == 3  # type: ignore[arg-type]


async def test_called_again_and_answered_handles_every_line_of_the_number(
        any_db: Database, store_settings: Settings) -> None:
    await save(any_db, store_settings,
               make_call("a", at=T0, outcome="missed", caller_number=CALLER),
               make_call("b", at=T0 + 10, outcome="missed", caller_number=CALLER, line="x"))
    [answer_id] = await save(any_db, store_settings,
                             make_call("c", at=T0 + 300, caller_number=CALLER))
    rows = await entries(any_db)
    assert {(e["status"], e["how"], e["handled_call_id"]) for e in rows} == {
        ("handled", "called_again", answer_id)}
    # A new miss afterwards opens a new entry.
    await save(any_db, store_settings,
               make_call("d", at=T0 + 900, outcome="missed", caller_number=CALLER))
    assert [e["status"] for e in await entries(any_db)] == ["pending", "handled", "handled"]


async def test_answers_that_do_not_count(any_db: Database, store_settings: Settings) -> None:
    await save(any_db, store_settings,
               make_call("a", at=T0, outcome="missed", caller_number=CALLER))
    await save(any_db, store_settings,
               # before the miss
               make_call("z", at=T0 - 600, caller_number=CALLER),
               # unanswered callback attempt
               make_call("b", at=T0 + 60, direction="outbound", outcome="unanswered",
                         called_number=CALLER, reason=None),
               # another number
               make_call("c", at=T0 + 60, caller_number="+861111"),
               # internal call
               make_call("d", at=T0 + 60, direction="internal", caller_number=CALLER))
    [entry] = await entries(any_db)
    assert entry["status"] == "pending"


async def test_answer_stored_before_the_miss_it_follows(any_db: Database,
                                                        store_settings: Settings) -> None:
    """Out of order (a stale call closed late): the miss is handled at once."""
    [cb] = await save(any_db, store_settings,
                      make_call("cb", at=T0 + 100, direction="outbound",
                                called_number=CALLER))
    await save(any_db, store_settings,
               make_call("m", at=T0, outcome="missed", caller_number=CALLER))
    [entry] = await entries(any_db)
    assert (entry["status"], entry["how"], entry["handled_call_id"]) == (
        "handled", "callback", cb)


@pytest.mark.parametrize("include", [False, True])
async def test_short_abandons_only_when_configured(any_db: Database, store_settings: Settings,
                                                   include: bool) -> None:
    settings = replace(store_settings, worklist_include_short_abandons=include)
    await save(any_db, settings, make_call("s", outcome="abandoned", short_abandon=True,
                                           caller_number=CALLER, wait_seconds=2.0))
    assert len(await entries(any_db)) == (1 if include else 0)


async def test_manual_handling_and_dismissal(any_db: Database, store_settings: Settings) -> None:
    await save(any_db, store_settings,
               make_call("a", at=T0, outcome="missed", caller_number=CALLER),
               make_call("b", at=T0, outcome="missed", caller_number="+862222"))
    first, second = await entries(any_db)
    async with any_db.begin() as conn:
        took = await worklist.mark(conn, int(first["id"]), "handled", "王芳",  # type: ignore[call-overload]
                                   "called from mobile")
        await worklist.mark(conn, int(second["id"]), "dismissed", "王芳", None)  # type: ignore[call-overload]
    assert took is not None and took > 0
    rows = {e["id"]: e for e in await entries(any_db)}
    assert rows[first["id"]]["how"] == "manual"
    assert rows[first["id"]]["handled_by"] == "王芳"
    assert rows[second["id"]]["status"] == "dismissed"
    async with any_db.begin() as conn:
        with pytest.raises(InvalidTransition, match="already dismissed"):
            await worklist.mark(conn, int(second["id"]), "handled", "x", None)  # type: ignore[call-overload]
        with pytest.raises(NotFound, match="no worklist entry 999999"):
            await worklist.mark(conn, 999_999, "handled", "x", None)
    async with any_db.connection() as conn:
        assert await worklist.pending_summary(conn) == (0, None)


async def blocked_by(db: Database, pid: int) -> bool:
    """Whether some session waits for a lock the backend `pid` holds."""
    async with db.connection() as conn:
        return bool((await conn.execute(sa.text(
            "SELECT count(*) FROM pg_stat_activity WHERE CAST(:pid AS integer) = "
            "ANY(pg_blocking_pids(pid))"), {"pid": pid})).scalar())


async def test_two_writers_miss_one_number_at_once_one_entry_no_conflict(
        tmp_path: Path, store_settings: Settings) -> None:
    """Two `callhub run` on one PostgreSQL (docs/scaling.md), the same caller missed on a
    PBX of each: the second writer's transaction starts while the first's, which opened
    the entry, is not committed. It waits for it and joins the entry, instead of
    inserting a second open entry and failing on the index (its call quarantined)."""
    factory = DbFactory("postgresql", tmp_path)
    db = await factory.create()
    other = Database.connect(pg_url(), schema=db.schema)
    try:
        await migrate.upgrade(db)
        east = make_call("1.1", outcome="missed", caller_number=CALLER, pbx="east")
        west = make_call("1.1", at=T0 + 1, outcome="missed", caller_number=CALLER, pbx="west")
        async with db.begin() as first:
            await save_calls(first, [east], store_settings)
            first_pid = (await first.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one()
            second = asyncio.create_task(save(other, store_settings, west))
            # Until the second waits for the first (a transaction per look: PostgreSQL
            # keeps one snapshot of pg_stat_activity per transaction).
            while not await blocked_by(db, first_pid):
                if second.done():
                    await second  # raises what the second writer hit
                    raise AssertionError("the second writer did not wait for the first")
                await asyncio.sleep(0.01)  # a poll of the server's view, not a pause
        await second
        [entry] = await entries(db)
        assert entry["call_count"] == 2
        assert len(entry["calls"]) == 2  # type: ignore[arg-type]
    finally:
        await other.close()
        await factory.cleanup()
