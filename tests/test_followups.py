"""Follow-up calls: the category rule, due and overdue by an injected clock, closing by callbacks.

Everything goes through the real app on a loopback port (make_app with the
follow-up operations and setup_desk) over SQLite and PostgreSQL; the keeper's
`tick` is called where a test needs its effect at a chosen moment.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
from desk_fixtures import REPAIR_RULE, Desk
from store_fixtures import DbFactory, TcpProxy, auth, make_call, pg_url, store, via_proxy

from callhub.api.params import MAX_WHO
from callhub.config import Settings
from callhub.desk.keeper import FollowupKeeper
from callhub.store import migrate
from callhub.store.writer import CallWriter

SUP = auth("supervisor")
NUMBER = "+8613912340000"
HOUR = 3600.0


def overdue_gauge(desk: Desk) -> float | None:
    return desk.registry.get_sample_value("callhub_followups_overdue")


async def followups(desk: Desk, **params: str) -> list[dict[str, Any]]:
    response = await desk.client.get("/api/v1/followups", params=params, headers=SUP)
    assert response.status == 200, await response.text()
    items: list[dict[str, Any]] = (await response.json())["items"]
    return items


async def repair_call(desk: Desk) -> tuple[int, float]:
    """An answered inbound call an hour ago, set to `repair` through the API; (id, its end)."""
    record = make_call("repair-1", at=desk.clock.now - HOUR, caller_number=NUMBER)
    (call_id,) = await store(desk.db, desk.settings, record)
    response = await desk.client.patch(f"/api/v1/calls/{call_id}", headers=SUP,
                                       json={"category": "repair"})
    assert response.status == 200, await response.text()
    return call_id, record.ended_at


async def test_a_category_rule_follow_up_comes_due_and_an_answered_callback_closes_it(
        desk: Desk) -> None:
    call_id, ended = await repair_call(desk)
    tick = await desk.keeper.tick()
    assert tick.created == 2 and tick.overdue == 0
    items = await followups(desk)
    assert [(f["source"], f["category"], f["status"], f["number"]) for f in items] == [
        ("rule", "repair", "open", NUMBER)] * 2
    assert [datetime.fromisoformat(f["due_at"]).timestamp() for f in items] == [
        ended + d for d in REPAIR_RULE]
    assert await followups(desk, due="yes") == []
    assert overdue_gauge(desk) == 0

    # A callback before the due time does not count; nor does an unanswered one after it.
    await store(desk.db, desk.settings,
                make_call("early", at=ended + REPAIR_RULE[0] - HOUR, direction="outbound",
                          called_number=NUMBER),
                make_call("noanswer", at=ended + REPAIR_RULE[0] + 60, direction="outbound",
                          called_number=NUMBER, outcome="missed"))
    desk.clock.now = ended + REPAIR_RULE[0] + 120
    assert (await desk.keeper.tick()).closed == []
    due = await followups(desk, due="yes")
    assert [(f["due"], f["overdue"]) for f in due] == [(True, False)]

    # Past due by more than overdue_after: flagged and counted by the gauge.
    desk.clock.now = ended + REPAIR_RULE[0] + desk.settings.followup_overdue_seconds + 60
    assert (await desk.keeper.tick()).overdue == 1
    assert overdue_gauge(desk) == 1
    assert [f["overdue"] for f in await followups(desk, due="yes")] == [True]

    # The agent calls back and the customer answers: the 24 h follow-up is done.
    callback_at = desk.clock.now + 30
    (callback_id,) = await store(desk.db, desk.settings, make_call(
        "callback", at=callback_at, direction="outbound", called_number=NUMBER,
        agent="PJSIP/1002", agent_name="Wang Fang"))
    tick = await desk.keeper.tick()
    assert [c.followup_id for c in tick.closed] == [due[0]["id"]]
    assert tick.overdue == 0 and overdue_gauge(desk) == 0
    first, second = sorted(await followups(desk), key=lambda f: f["due_at"])
    assert (first["status"], first["how"], first["closed_call_id"], first["closed_by"]) == (
        "done", "callback", callback_id, "Wang Fang")
    assert (second["status"], second["due"]) == ("open", False)
    assert await followups(desk, due="yes") == []
    assert [f["id"] for f in await followups(desk, due="no")] == [second["id"]]

    # Idempotent: more ticks neither re-create the rule's follow-ups nor close the 48 h one.
    tick = await desk.keeper.tick()
    assert (tick.created, tick.closed) == (0, [])
    response = await desk.client.get(f"/api/v1/calls/{call_id}/followups", headers=SUP)
    assert [f["status"] for f in (await response.json())["items"]] == ["open", "done"]


async def test_a_category_change_cancels_the_old_rule_and_putting_it_back_reopens_it(
        desk: Desk) -> None:
    call_id, _ = await repair_call(desk)
    response = await desk.client.post(f"/api/v1/calls/{call_id}/followups", headers=SUP,
                                      json={"from_rule": True})
    assert response.status == 201
    assert len((await response.json())["items"]) == 2
    again = await desk.client.post(f"/api/v1/calls/{call_id}/followups", headers=SUP,
                                   json={"from_rule": True})
    assert (await again.json())["items"] == []

    await desk.client.patch(f"/api/v1/calls/{call_id}", headers=SUP,
                            json={"category": "inquiry"})
    assert (await desk.keeper.tick()).created == 0
    items = await followups(desk)
    assert [(f["status"], f["how"]) for f in items] == [("cancelled", "category_changed")] * 2

    # Back to repair (the change was a mistake): the same follow-ups are open again, at
    # the times the rule gave them; none is added.
    await desk.client.patch(f"/api/v1/calls/{call_id}", headers=SUP,
                            json={"category": "repair"})
    await desk.keeper.tick()
    reopened = await followups(desk, status="open")
    assert sorted((f["id"], f["due_at"]) for f in reopened) == sorted(
        (f["id"], f["due_at"]) for f in items)
    assert all(f["how"] is None and f["closed_at"] is None for f in reopened)
    assert len(await followups(desk)) == 2

    # One done meanwhile stays done when the category goes away and comes back.
    first = min(reopened, key=lambda f: f["due_at"])
    done = await desk.client.post(f"/api/v1/followups/{first['id']}/done", headers=SUP,
                                  json={"who": "王芳"})
    assert done.status == 200, await done.text()
    for category in ("inquiry", "repair"):
        await desk.client.patch(f"/api/v1/calls/{call_id}", headers=SUP,
                                json={"category": category})
        await desk.keeper.tick()
    assert sorted((f["id"], f["status"]) for f in await followups(desk)) == sorted(
        [(first["id"], "done"), *((f["id"], "open") for f in reopened if f is not first)])


async def test_follow_ups_by_hand_due_times_delays_done_and_cancel(desk: Desk) -> None:
    (call_id,) = await store(desk.db, desk.settings,
                             make_call("c1", at=desk.clock.now - HOUR, caller_number=NUMBER))
    response = await desk.client.post(
        f"/api/v1/calls/{call_id}/followups", headers=SUP,
        json={"due": ["2026-11-29T13:00:00", "2026-11-29T11:00:00+08:00"], "who": "王芳",
              "note": "确认维修进度"})
    assert response.status == 201, await response.text()
    made = (await response.json())["items"]
    assert [f["due_at"] for f in made] == ["2026-11-29T03:00:00+00:00",
                                           "2026-11-29T05:00:00+00:00"]
    assert [f["due"] for f in made] == [True, False]
    assert made[0]["created_by"] == "王芳" and made[0]["note"] == "确认维修进度"
    response = await desk.client.post(f"/api/v1/calls/{call_id}/followups", headers=SUP,
                                      json={"after": ["2d"]})
    (later,) = (await response.json())["items"]
    assert later["source"] == "manual" and not later["due"]

    done = await desk.client.post(f"/api/v1/followups/{made[0]['id']}/done", headers=SUP,
                                  json={"who": "王芳", "note": "已修好"})
    body = await done.json()
    assert (body["status"], body["how"], body["closed_by"], body["note"]) == (
        "done", "manual", "王芳", "已修好")
    cancelled = await desk.client.post(f"/api/v1/followups/{later['id']}/cancel", headers=SUP)
    assert (await cancelled.json())["status"] == "cancelled"
    conflict = await desk.client.post(f"/api/v1/followups/{later['id']}/done", headers=SUP)
    assert conflict.status == 409
    assert (await desk.client.post("/api/v1/followups/999999/done", headers=SUP)).status == 404
    assert [f["id"] for f in await followups(desk, status="open")] == [made[1]["id"]]


async def test_bad_follow_up_requests_get_400s_naming_the_field(desk: Desk) -> None:
    (call_id,) = await store(desk.db, desk.settings, make_call("c1", caller_number=NUMBER))
    url = f"/api/v1/calls/{call_id}/followups"
    for body, field in (({}, "body"), ({"after": ["24h"], "due": ["2026-12-01"]}, "body"),
                        ({"after": ["soon"]}, "after[0]"), ({"due": ["tomorrow"]}, "due[0]"),
                        ({"due": []}, "due"), ({"after": ["24h"], "color": "red"}, "color"),
                        ({"after": ["900d"]}, "after[0]"), ({"after": [5]}, "after[0]"),
                        ({"after": ["99999999d"]}, "after[0]")):
        response = await desk.client.post(url, headers=SUP, json=body)
        assert response.status == 400, body
        assert (await response.json())["parameter"] == field, body
    assert (await desk.client.post("/api/v1/calls/999999/followups", headers=SUP,
                                   json={"after": ["1h"]})).status == 404
    assert (await desk.client.get("/api/v1/followups", params={"due": "maybe"},
                                  headers=SUP)).status == 400
    assert (await desk.client.get("/api/v1/followups", headers=auth("viewer"))).status == 403
    assert (await desk.client.get("/api/v1/followups")).status == 401
    # A caller who withheld the number cannot be called back.
    (withheld,) = await store(desk.db, desk.settings, make_call("anon", caller_number=None))
    response = await desk.client.post(f"/api/v1/calls/{withheld}/followups", headers=SUP,
                                      json={"after": ["1h"]})
    assert response.status == 400 and "no outside number" in (await response.json())["message"]


async def test_a_who_is_kept_whole_up_to_its_limit_and_longer_is_a_400(desk: Desk) -> None:
    """Every write that records who did it, at the longest `who` it accepts and one
    character more: the first is stored whole, the second a 400 naming `who`, never the
    database's refusal (a 503)."""
    call_ids = await store(desk.db, desk.settings, *(
        make_call(f"m{i}", at=desk.clock.now - HOUR + i, outcome="missed",
                  caller_number=f"+86139000000{i:02d}") for i in range(4)))
    made = await desk.client.post(f"/api/v1/calls/{call_ids[0]}/followups", headers=SUP,
                                  json={"after": ["1h", "2h"]})
    first, second = [f["id"] for f in (await made.json())["items"]]
    entries = [e["id"] for e in (await (await desk.client.get(
        "/api/v1/worklist", headers=SUP)).json())["items"]]
    limit = MAX_WHO
    writes: list[tuple[str, str, dict[str, Any], str]] = [
        ("post", f"/api/v1/worklist/{entries[0]}/handled", {}, "handled_by"),
        ("post", f"/api/v1/worklist/{entries[1]}/dismiss", {}, "handled_by"),
        ("post", f"/api/v1/calls/{call_ids[2]}/followups", {"after": ["1h"]}, "created_by"),
        ("post", f"/api/v1/followups/{first}/done", {}, "closed_by"),
        ("post", f"/api/v1/followups/{second}/cancel", {}, "closed_by"),
        ("patch", f"/api/v1/calls/{call_ids[3]}", {"resolution": "resolved"},
         "resolution_by")]
    for method, url, body, column in writes:
        too_long = await getattr(desk.client, method)(
            url, headers=SUP, json={**body, "who": "王" * (limit + 1)})
        assert too_long.status == 400, (url, await too_long.text())
        answer = await too_long.json()
        assert answer["parameter"] == "who", url
        assert f"longer than {limit} characters" in answer["message"], answer
        kept = await getattr(desk.client, method)(url, headers=SUP,
                                                  json={**body, "who": "王" * limit})
        assert kept.status in (200, 201), (url, await kept.text())
        reply = await kept.json()
        stored = reply["items"][0] if "items" in reply else reply
        assert stored[column].startswith("王" * limit), (url, stored[column])


async def test_pages_show_every_follow_up_once_while_some_are_closed_between_pages(
        desk: Desk) -> None:
    """Open first then by due time (ties by id), every follow-up on exactly one page, also
    when the supervisor closes the first page's ones before asking for the next (with
    pages by offset, those closed ones left and as many open ones were never shown)."""
    call_ids = await store(desk.db, desk.settings, *(
        make_call(f"c{i}", at=desk.clock.now - HOUR, caller_number=f"+8613900000{i:03d}")
        for i in range(5)))
    made = []
    for i, call_id in enumerate(call_ids):  # due times tie across calls
        response = await desk.client.post(f"/api/v1/calls/{call_id}/followups", headers=SUP,
                                          json={"after": ["1h", "2h", f"{3 + i % 2}h"]})
        made += [f["id"] for f in (await response.json())["items"]]
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {"limit": "4", **({"cursor": cursor} if cursor else {})}
        page = await (await desk.client.get("/api/v1/followups", params=params,
                                            headers=SUP)).json()
        seen += page["items"]
        for f in page["items"][:2]:  # closed between pages: they leave the open part
            if f["status"] == "open":
                closed = await desk.client.post(f"/api/v1/followups/{f['id']}/cancel",
                                                headers=SUP)
                assert closed.status == 200
        cursor = page["next_cursor"]
        if cursor is None:
            break
    open_seen = [f["id"] for f in seen if f["status"] == "open"]
    assert sorted(open_seen) == sorted(made)  # every one, once, as it was when listed
    keys = [(f["status"] != "open", f["due_at"], f["id"]) for f in seen]
    assert keys == sorted(keys)  # the closed ones, listed again after the open ones


async def test_the_follow_up_routes_are_in_the_openapi_document(desk: Desk) -> None:
    doc = await (await desk.client.get("/api/v1/openapi.json", headers=SUP)).json()
    assert {"post", "get"} <= set(doc["paths"]["/api/v1/calls/{id}/followups"])
    assert "get" in doc["paths"]["/api/v1/followups"]
    assert "post" in doc["paths"]["/api/v1/followups/{id}/done"]
    assert "post" in doc["paths"]["/api/v1/followups/{id}/cancel"]


async def test_the_writer_wakes_the_keeper_which_closes_a_due_follow_up(desk: Desk) -> None:
    """The running keeper (not a hand-called tick) reacts to calls the writer stores."""
    call_id, ended = await repair_call(desk)
    desk.clock.now = ended + REPAIR_RULE[1] + 60  # both follow-ups are due
    writer = CallWriter(desk.db, desk.settings)
    writer.listeners.append(lambda _batch, _saved: desk.keeper.wake())
    await writer.start()
    try:
        async with asyncio.timeout(10):
            ticks = desk.keeper.ticks
            desk.keeper.wake()
            await desk.keeper.wait_ticks(ticks + 1)
            assert len(await followups(desk, due="yes")) == 2
            ticks = desk.keeper.ticks
            writer.submit(make_call("cb", at=desk.clock.now, direction="outbound",
                                    called_number=NUMBER))
            await writer.wait_written()
            await desk.keeper.wait_ticks(ticks + 1)
    finally:
        await writer.stop()
    assert [f["status"] for f in await followups(desk)] == ["done", "done"]
    response = await desk.client.get(f"/api/v1/calls/{call_id}/followups", headers=SUP)
    assert {f["how"] for f in (await response.json())["items"]} == {"callback"}


async def test_a_stop_that_meets_a_wake_stops_the_keeper(desk: Desk) -> None:
    """The writer wakes the keeper whenever it stores calls, so at shutdown a wake and the
    stop can land in the same turn of the loop. On Python 3.11 `asyncio.wait_for` then
    returned the woken wait and dropped the cancellation: the keeper ticked on, and the
    daemon's stop waited for it for ever (seen under load, 1 run in ~30)."""
    ticks = desk.keeper.ticks
    desk.keeper.wake()
    await desk.keeper.wait_ticks(ticks + 1)  # waiting for the next wake, as it mostly is
    desk.keeper.wake()
    async with asyncio.timeout(10):
        await desk.keeper.stop()
    assert desk.keeper.ticks == ticks + 1


async def test_the_keeper_leaves_old_calls_alone_but_a_request_applies_the_rule(
        desk: Desk) -> None:
    """A rule added to the config must not flood the desk with last month's repairs."""
    (old,) = await store(desk.db, desk.settings, make_call(
        "old", at=desk.clock.now - 30 * 86400, caller_number=NUMBER))
    await desk.client.patch(f"/api/v1/calls/{old}", headers=SUP, json={"category": "repair"})
    assert (await desk.keeper.tick()).created == 0
    response = await desk.client.post(f"/api/v1/calls/{old}/followups", headers=SUP,
                                      json={"from_rule": True})
    assert [f["overdue"] for f in (await response.json())["items"]] == [True, True]
    assert (await desk.keeper.tick()).overdue == 2


async def test_an_outage_is_warned_of_once_not_at_every_tick(
        tmp_path: Path, pg_proxy: TcpProxy, desk_settings: Settings) -> None:
    """The keeper ticks every 5 s and warned at each failed tick through an outage (720 an
    hour); now once per error, its reason counting the tries, and its end said at info."""
    factory = DbFactory("postgresql", tmp_path)
    try:
        db = await factory.create(url=via_proxy(pg_url(), pg_proxy))
        await migrate.upgrade(db)
        keeper = FollowupKeeper(db, desk_settings, interval=3600.0)
        await keeper.start()
        try:
            async with asyncio.timeout(30):
                await keeper.wait_ticks(1)
                assert keeper.health.ready
                with structlog.testing.capture_logs() as logs:
                    pg_proxy.cut()
                    for _ in range(6):
                        ticks = keeper.ticks
                        keeper.wake()
                        await keeper.wait_ticks(ticks + 1)
                    assert not keeper.health.ready
                    assert "; 6 tries" in (keeper.health.reason or "")
                    pg_proxy.restore()
                    ticks = keeper.ticks
                    keeper.wake()
                    await keeper.wait_ticks(ticks + 1)
                assert keeper.health.ready
        finally:
            await keeper.stop()
            await db.close()
    finally:
        await factory.cleanup()
    assert keeper.errors == 6
    warned = [e["error"] for e in logs
              if e["event"] == "followups.tick_failed" and e["log_level"] == "warning"]
    assert 1 <= len(warned) <= 2 and len(set(warned)) == len(warned)  # the cut, the refusals
    back, = [e for e in logs if e["event"] == "followups.tick_back"]
    assert back["log_level"] == "info" and back["tries"] == 6
