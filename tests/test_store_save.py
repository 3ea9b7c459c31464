"""Writing calls: (pbx, linkedid) is the key, attempts are replaced, non-ASCII survives."""

from __future__ import annotations

import sqlalchemy as sa
from store_fixtures import T0, make_call

from callhub.config import Settings
from callhub.records import Attempt, Transfer, iso
from callhub.store import queries
from callhub.store.db import Database
from callhub.store.save import save_calls, sync_agents
from callhub.store.tables import agents, attempts, calls


async def count(db: Database, table: sa.Table) -> int:
    async with db.connection() as conn:
        return int(await conn.scalar(sa.select(sa.func.count()).select_from(table)) or 0)


async def test_same_call_twice_updates_never_duplicates(any_db: Database,
                                                        store_settings: Settings) -> None:
    first = make_call("1795922046.16", outcome="missed")
    first.attempts = [Attempt("PJSIP/1001", "Li Na", T0 + 1, T0 + 1, T0 + 21, "no_answer", 20),
                      Attempt("PJSIP/1002", None, T0 + 21, T0 + 22, T0 + 30, "no_answer", 8)]
    async with any_db.begin() as conn:
        saved = await save_calls(conn, [first], store_settings)
    async with any_db.begin() as conn:
        await queries.update_call(conn, saved.ids[0], {"category": "repair", "note": "漏水"})

    again = make_call("1795922046.16", outcome="answered", ring_seconds=12.0,
                      caller_name="李四")
    async with any_db.begin() as conn:
        saved_again = await save_calls(conn, [again, again], store_settings)

    assert saved_again.ids == saved.ids * 2
    assert await count(any_db, calls) == 1
    assert await count(any_db, attempts) == 1  # replaced, not appended
    async with any_db.connection() as conn:
        call = await queries.get_call(conn, saved.ids[0])
    assert call is not None
    assert call["outcome"] == "answered" and call["ring_seconds"] == 12.0
    assert call["caller_name"] == "李四"
    assert [a["result"] for a in call["attempts"]] == ["answered"]
    # Supervisor fields survive a rewrite of the record.
    assert (call["category"], call["note"]) == ("repair", "漏水")


async def test_same_linkedid_on_two_pbxs_is_two_calls(any_db: Database,
                                                      store_settings: Settings) -> None:
    async with any_db.begin() as conn:
        await save_calls(conn, [make_call("1.1", pbx="a"), make_call("1.1", pbx="b")],
                         store_settings)
    assert await count(any_db, calls) == 2


async def test_fields_round_trip_with_aware_times(any_db: Database,
                                                  store_settings: Settings) -> None:
    record = make_call("1795922245.64", caller_name="张三 Müller Zoë", hold_seconds=3.5,
                       hangup_by="agent", queue="support", incomplete=True)
    record.transfers = [Transfer("blind", "PJSIP/1003", T0 + 20.25)]
    async with any_db.begin() as conn:
        saved = await save_calls(conn, [record], store_settings)
    async with any_db.connection() as conn:
        call = await queries.get_call(conn, saved.ids[0])
    assert call is not None
    for key in ("pbx", "linkedid", "direction", "line", "called_number", "caller_number",
                "caller_name", "ring_seconds", "rings", "wait_seconds", "talk_seconds",
                "hold_seconds", "outcome", "reason", "voicemail", "short_abandon", "agent",
                "agent_name", "hangup_by", "hangup_cause", "queue", "incomplete"):
        assert call[key] == getattr(record, key), key
    for key in ("arrived_at", "ring_started_at", "answered_at", "ended_at"):
        assert call[key].tzinfo is not None
        assert abs(call[key].timestamp() - getattr(record, key)) < 1e-3, key
    assert call["transfers"] == [{"type": "blind", "to": "PJSIP/1003", "at": iso(T0 + 20.25)}]
    assert call["external_number"] == record.caller_number
    attempt = call["attempts"][0]
    assert attempt["seq"] == 1 and attempt["interface"] == "PJSIP/1001"
    assert abs(attempt["offered_at"].timestamp() - record.attempts[0].offered_at) < 1e-3


async def test_agents_from_config_and_records(any_db: Database,
                                              store_settings: Settings) -> None:
    from dataclasses import replace

    from callhub.config import PbxConfig
    settings = replace(store_settings, pbxs=(PbxConfig("main", agents={"PJSIP/1001": "李娜"}),))
    async with any_db.begin() as conn:
        await sync_agents(conn, settings)
        await save_calls(conn, [make_call("9.9", agent="PJSIP/1002", agent_name="Wang")],
                         settings)
    async with any_db.connection() as conn:
        rows = (await conn.execute(sa.select(agents.c.interface, agents.c.name)
                                   .order_by(agents.c.interface))).all()
    assert [tuple(r) for r in rows] == [("PJSIP/1001", "李娜"), ("PJSIP/1002", "Wang")]
