"""The desk page in headless Chromium against the app served in-process over a SQLite file.

A known day of calls is stored through the store's `save_calls`, so the page's
figures, timelines and follow-ups can be checked against exact values. (The
end-to-end run against `callhub run --demo` is tests/test_desk_demo.py.)
Screenshots go to test-artifacts/screenshots/.
"""

from __future__ import annotations

import asyncio
import csv
import io
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from desk_fixtures import (
    LOCALES,
    Clock,
    Desk,
    day_start,
    expect,
    hold_page_timers,
    launch_chromium,
    screenshot_path,
    seed_day,
    sign_in_as,
)
from prometheus_client import CollectorRegistry
from store_fixtures import auth, make_call, store

from callhub.api import followups as followups_api
from callhub.api.app import make_app
from callhub.api.params import MAX_NOTE
from callhub.config import Settings
from callhub.desk import setup_desk
from callhub.desk.pages import LIST_LIMIT
from callhub.store import migrate
from callhub.store.db import Database

SUP = auth("supervisor")


async def sign_in(page: Any, desk: Desk, role: str) -> None:
    await sign_in_as(page, desk, role, "Supervisor Wu")


async def test_a_viewer_sees_todays_figures_as_stats_gives_them_and_no_numbers(
        live_desk: Desk, chromium: Any) -> None:
    desk = live_desk
    await seed_day(desk.db, desk.settings, day_start(time.time()))
    page = await chromium.new_page()
    await page.goto(desk.url)
    # Before sign-in the navigation is hidden (its `hidden` attribute beats #nav's flex).
    assert await page.locator("#nav").count() == 1
    assert not await page.is_visible("#nav")
    await page.fill("#token", "not-a-token-at-all")
    await page.click("#signin-button")
    await page.wait_for_selector("#signin-error:has-text('not valid')")
    await sign_in(page, desk, "viewer")
    await page.wait_for_selector("#hour-chart rect.bar")
    stats = await (await desk.client.get("/api/v1/stats", headers=auth("viewer"))).json()
    totals = stats["totals"]
    assert await page.inner_text("#fig-missed .value") == str(totals["missed"])
    assert await page.inner_text("#fig-inbound .value") == str(totals["inbound"])
    within = f"{totals['within_rings_rate'] * 100:.1f}%"
    assert await page.inner_text("#fig-within .value") == within
    assert "bad" in (await page.get_attribute("#fig-missed", "class") or "")
    # The chart has one bar segment per hour and outcome that had calls.
    hours = await (await desk.client.get("/api/v1/stats", params={"group_by": "hour"},
                                         headers=auth("viewer"))).json()
    segments = sum((g["answered"] > 0) + (g["abandoned"] > 0) + (g["missed"] > 0)
                   for g in hours["groups"])
    assert await page.locator("#hour-chart rect.bar").count() == segments
    lines = await page.locator("#lines tbody tr").all_inner_texts()
    assert any(row.startswith("repairs") for row in lines)
    await page.screenshot(path=screenshot_path("inproc-today-viewer"), full_page=True)
    # No caller number anywhere the viewer can reach.
    html = await page.content()
    assert "+86139" not in html and "+86136" not in html
    await page.click("#nav-worklist")
    await page.wait_for_selector("text=needs a supervisor or admin token")
    assert await page.locator("#worklist").count() == 0


async def test_follow_ups_due_and_overdue_on_the_worklist_and_a_rule_from_the_call_page(
        live_desk: Desk, chromium: Any) -> None:
    desk = live_desk
    ids = await seed_day(desk.db, desk.settings, day_start(time.time() - 86400))
    now = datetime.now(UTC)
    overdue_at = datetime.fromtimestamp(now.timestamp() - 2 * 3600, UTC).isoformat()
    due_at = datetime.fromtimestamp(now.timestamp() - 600, UTC).isoformat()
    response = await desk.client.post(f"/api/v1/calls/{ids[0]}/followups", headers=SUP,
                                      json={"due": [overdue_at], "note": "check the boiler"})
    assert response.status == 201
    response = await desk.client.post(f"/api/v1/calls/{ids[1]}/followups", headers=SUP,
                                      json={"due": [due_at]})
    assert response.status == 201
    page = await chromium.new_page()
    await sign_in(page, desk, "supervisor")
    rows = page.locator("#followups tbody tr")
    await rows.nth(1).wait_for()
    assert await rows.count() == 2
    assert "overdue" in (await rows.nth(0).get_attribute("class") or "")
    assert "Overdue" in await rows.nth(0).inner_text()
    assert "check the boiler" in await rows.nth(0).inner_text()
    assert "overdue" not in (await rows.nth(1).get_attribute("class") or "")
    assert await page.inner_text("#followups-count") == "2 due, 1 overdue"
    await page.screenshot(path=screenshot_path("inproc-worklist-followups"), full_page=True)
    await rows.nth(0).locator("input.note").fill("boiler fixed")
    await rows.nth(0).locator("[data-action=followup-done]").click()
    await expect(rows).to_have_count(1)
    closed = await (await desk.client.get("/api/v1/followups", params={"status": "done"},
                                          headers=SUP)).json()
    assert [(f["how"], f["closed_by"], f["note"]) for f in closed["items"]] == [
        ("manual", "Supervisor Wu", "boiler fixed")]

    # Category "repair" on a call: the rule plans follow-ups 24 h and 48 h after it.
    await page.goto(desk.url + f"#/call/{ids[2]}")
    await page.wait_for_selector("#timeline li")
    await page.select_option("#category", "repair")
    await page.fill("#note", "热水器漏水")
    await page.click("#save-call")
    await page.wait_for_selector("#call-followups tbody tr >> nth=1")
    texts = await page.locator("#call-followups tbody tr").all_inner_texts()
    assert all("Repair" in t and "Open" in t for t in texts)
    call = await (await desk.client.get(f"/api/v1/calls/{ids[2]}", headers=SUP)).json()
    assert (call["category"], call["note"]) == ("repair", "热水器漏水")
    await page.screenshot(path=screenshot_path("inproc-call-followups"), full_page=True)


async def test_saving_a_call_page_opened_earlier_keeps_what_another_saved_meanwhile(
        live_desk: Desk, chromium: Any) -> None:
    """Two supervisors open one call; the first sets its category (planning the rule's
    follow-ups), the second, whose page still shows none, saves a note: the category and
    its follow-ups stay."""
    desk = live_desk
    (call_id,) = await store(desk.db, desk.settings, make_call(
        "both", at=time.time() - 3600, caller_number="+8613900139077"))
    first, second = await chromium.new_page(), await chromium.new_page()
    for page in (first, second):
        await sign_in(page, desk, "supervisor")
        await page.goto(desk.url + f"#/call/{call_id}")
        await page.wait_for_selector("#timeline li")
    await first.select_option("#category", "repair")
    await first.click("#save-call")
    await first.wait_for_selector("#call-followups tbody tr >> nth=1")
    await second.fill("#note", "客户下午在家")
    await second.click("#save-call")
    await second.wait_for_selector("#call-followups tbody tr >> nth=1")
    call = await (await desk.client.get(f"/api/v1/calls/{call_id}", headers=SUP)).json()
    assert (call["category"], call["note"]) == ("repair", "客户下午在家")
    planned = await (await desk.client.get(f"/api/v1/calls/{call_id}/followups",
                                           headers=SUP)).json()
    assert [f["status"] for f in planned["items"]] == ["open", "open"]


async def test_a_long_or_disguised_caller_name_shows_as_what_it_is_within_the_page(
        live_desk: Desk, chromium: Any) -> None:
    """A name with a right-to-left override shows its letters in their order, and the
    longest name the store keeps wraps inside the worklist instead of widening it."""
    desk = live_desk
    disguised = "\u202eevil\u202c 张三"
    long_name = "李" + "x" * 255
    await store(desk.db, desk.settings,
                make_call("rlo", at=time.time() - 60, outcome="missed",
                          caller_number="+8613900139001", caller_name=disguised),
                make_call("long", at=time.time() - 30, outcome="missed",
                          caller_number="+8613900139002", caller_name=long_name))
    page = await chromium.new_page()
    await page.set_viewport_size({"width": 1200, "height": 800})
    await sign_in(page, desk, "supervisor")
    names = page.locator("#worklist tbody .name")
    await expect(names).to_have_count(2)
    assert sorted(await names.all_text_contents()) == sorted(["evil 张三", long_name])
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 1200, f"the page is {width} px wide in a 1200 px window"


async def test_what_is_typed_in_a_follow_up_stays_when_it_turns_overdue_and_ages_move_on(
        live_desk: Desk, chromium: Any) -> None:
    """A follow-up row turning overdue between two polls keeps the note and answer being
    entered in it (it was drawn again, empty); a kept worklist row's "ago" moves on."""
    desk = live_desk
    (call_id,) = await store(desk.db, desk.settings, make_call(
        "fu", at=time.time() - 5, outcome="missed", caller_number="+8613900139003"))
    turns_overdue = time.time() - desk.settings.followup_overdue_seconds + 2
    made = await desk.client.post(f"/api/v1/calls/{call_id}/followups", headers=SUP, json={
        "due": [datetime.fromtimestamp(turns_overdue, UTC).isoformat()]})
    assert made.status == 201
    page = await chromium.new_page()
    await sign_in(page, desk, "supervisor")
    row = page.locator("#followups tbody tr")
    await expect(row).to_have_count(1)
    age = page.locator("#worklist tbody .ago")
    first_age = await age.inner_text()
    assert await row.locator("input.note").get_attribute("maxlength") == str(MAX_NOTE)
    await row.locator("input.note").fill("客户说已修好")
    await row.locator("select[data-field=satisfaction]").select_option("satisfied")
    await expect(row).to_have_class("overdue", timeout=10_000)
    assert await row.locator("input.note").input_value() == "客户说已修好"
    assert await row.locator("select[data-field=satisfaction]").input_value() == "satisfied"
    await expect(age).not_to_have_text(first_age, timeout=10_000)


async def test_more_pending_than_the_view_draws_says_so_and_not_a_total(
        live_desk: Desk, chromium: Any) -> None:
    """Past the rows the worklist draws, the count says only the oldest are shown; the
    newest caller, not drawn, is not claimed in a total."""
    desk = live_desk
    start = time.time() - 3600
    await store(desk.db, desk.settings, *(
        make_call(f"m{i}", at=start + i, outcome="missed", caller_number=f"+86139{i:08d}")
        for i in range(LIST_LIMIT + 1)))
    page = await chromium.new_page()
    await sign_in(page, desk, "supervisor")
    rows = page.locator("#worklist tbody tr")
    await expect(rows).to_have_count(LIST_LIMIT)
    count = await page.inner_text("#worklist-count")
    assert count == f"over {LIST_LIMIT} waiting: the oldest {LIST_LIMIT} shown"
    assert f"+86139{LIST_LIMIT:08d}" not in await page.inner_text("#worklist")
    await rows.nth(0).locator("[data-action=dismiss]").click()
    await expect(page.locator("#worklist-count")).to_have_text(f"{LIST_LIMIT} waiting")


async def test_export_downloads_the_searched_calls_as_csv(live_desk: Desk, chromium: Any) -> None:
    desk = live_desk
    await seed_day(desk.db, desk.settings, day_start(time.time()))
    page = await chromium.new_page()
    await sign_in(page, desk, "admin")
    await page.click("#nav-calls")
    await page.fill("#f-number", "+8613912345678")
    await page.click("#search-button")
    await expect(page.locator("#calls tbody tr")).to_have_count(2)
    async with page.expect_download() as info:
        await page.click("#export")
    download = await info.value
    text = (await download.path()).read_bytes().decode("utf-8")
    assert text.startswith("\ufeffid,")
    rows = text.strip().splitlines()[1:]
    assert len(rows) == 2 and all("+8613912345678" in r and "王小明" in r for r in rows)


async def test_the_export_and_the_table_always_show_the_same_calls(
        live_desk: Desk, chromium: Any) -> None:
    """A filter changed after the search and exported at once: the file has what the form
    says, and the table is searched again to show the same calls."""
    desk = live_desk
    day = day_start(time.time())
    await seed_day(desk.db, desk.settings, day)
    page = await chromium.new_page()
    await sign_in(page, desk, "supervisor")
    await page.click("#nav-calls")
    rows = page.locator("#calls tbody tr")
    await page.select_option("#f-direction", "inbound")
    await page.click("#search-button")
    response = await desk.client.get("/api/v1/calls", headers=SUP, params={
        "from": day.date().isoformat(), "to": (day + timedelta(days=1)).date().isoformat(),
        "direction": "inbound", "outcome": "missed"})
    missed = [str(c["id"]) for c in (await response.json())["items"]]
    inbound = await desk.client.get("/api/v1/calls", headers=SUP, params={
        "from": day.date().isoformat(), "to": (day + timedelta(days=1)).date().isoformat(),
        "direction": "inbound"})
    await expect(rows).to_have_count(len((await inbound.json())["items"]))
    assert 0 < len(missed) < await rows.count()

    await page.select_option("#f-outcome", "missed")  # not searched
    async with page.expect_download() as info:
        await page.click("#export")
    text = (await (await info.value).path()).read_bytes().decode("utf-8-sig")
    exported = [r["id"] for r in csv.DictReader(io.StringIO(text))]
    assert exported == missed
    await expect(rows).to_have_count(len(missed))
    assert [await r.get_attribute("data-call") for r in await rows.all()] == exported


async def test_english_dates_are_written_as_the_browsers_english_writes_them(
        live_desk: Desk) -> None:
    """The date inputs follow the browser's language; the desk's own dates do too, so an
    American browser reads month/day/year in both and a British one day/month/year."""
    desk = live_desk
    ids = await seed_day(desk.db, desk.settings, day_start(time.time()))
    # The 25th (a day no month number can be mistaken for) of a month or two ahead, at noon.
    due = datetime.fromtimestamp(time.time() + 40 * 86400, UTC).replace(
        day=25, hour=12, minute=0, second=0, microsecond=0)
    response = await desk.client.post(f"/api/v1/calls/{ids[0]}/followups", headers=SUP,
                                      json={"due": [due.isoformat()]})
    assert response.status == 201
    for locale, written in (("en-US", f"{due:%m}/25/{due:%Y}"),
                            ("en-GB", f"25/{due:%m}/{due:%Y}")):
        async with launch_chromium(locale) as browser:
            page = await browser.new_page()
            await sign_in(page, desk, "supervisor")
            await page.goto(desk.url + f"#/call/{ids[0]}")
            row = page.locator("#call-followups tbody tr")
            await row.first.wait_for()
            assert written in await row.first.inner_text(), locale


async def test_only_the_latest_search_fills_the_calls_table(
        live_desk: Desk, chromium: Any) -> None:
    """The view's first search (every direction) and the supervisor's own (inbound) are
    both on their way; the first answers first: the table shows the inbound calls only,
    not both answers' rows."""
    desk = live_desk
    day = day_start(time.time())
    await seed_day(desk.db, desk.settings, day)
    page = await chromium.new_page()
    await sign_in(page, desk, "supervisor")
    held: asyncio.Queue[Any] = asyncio.Queue()
    await page.route("**/api/v1/calls?*", held.put_nowait)
    async with asyncio.timeout(10):
        await page.click("#nav-calls")
        first = await held.get()
        await page.select_option("#f-direction", "inbound")
        await page.click("#search-button")
        second = await held.get()
    assert "direction=inbound" in second.request.url
    assert "direction=" not in first.request.url

    async with page.expect_response(first.request.url) as answer:
        await first.continue_()
    await (await answer.value).finished()
    await second.continue_()
    inbound = await desk.client.get("/api/v1/calls", headers=SUP, params={
        "from": day.date().isoformat(), "to": (day + timedelta(days=1)).date().isoformat(),
        "direction": "inbound", "limit": 50})
    ids = [str(c["id"]) for c in (await inbound.json())["items"]]
    rows = page.locator("#calls tbody tr")
    await expect(rows).to_have_count(len(ids))
    assert [await r.get_attribute("data-call") for r in await rows.all()] == ids


async def test_signing_in_draws_the_first_view_once(live_desk: Desk, chromium: Any) -> None:
    """Signing in draws the worklist once: drawn again by the hash's change as well, a view
    the supervisor opened meanwhile was drawn anew over a filter just chosen in it."""
    page = await chromium.new_page()
    await page.add_init_script("""
        window.drawn = 0;
        window.hashchanges = 0;
        new MutationObserver((records) => {
          for (const r of records) for (const n of r.addedNodes)
            if (n.querySelector && n.querySelector("#worklist")) window.drawn += 1;
        }).observe(document, { childList: true, subtree: true });
        // Added after the desk's own listener, so it runs once the desk has routed.
        addEventListener("DOMContentLoaded", () => addEventListener("hashchange", () => {
          window.hashchanges += 1;
        }));
    """)
    await sign_in(page, live_desk, "supervisor")
    await page.wait_for_function("() => window.hashchanges >= 1")
    assert await page.evaluate("() => window.drawn") == 1


async def test_a_call_answered_after_the_supervisor_left_it_is_not_drawn(
        live_desk: Desk, chromium: Any) -> None:
    """A call opened, then the calls table before the call's answer came back: the table
    stays, not the call drawn over it (the supervisor would act on a page they left)."""
    desk = live_desk
    day = day_start(time.time())
    ids = await seed_day(desk.db, desk.settings, day)
    page = await chromium.new_page()
    await sign_in(page, desk, "supervisor")
    held: asyncio.Queue[Any] = asyncio.Queue()
    await page.route("**/api/v1/calls/*", held.put_nowait)  # the one call
    await page.route("**/api/v1/calls?*", held.put_nowait)  # the table's search
    async with asyncio.timeout(10):
        await page.evaluate(f"location.hash = '#/call/{ids[0]}'")
        call = await held.get()
        await page.click("#nav-calls")
        table = await held.get()
    assert f"/api/v1/calls/{ids[0]}" in call.request.url and "?" in table.request.url

    async with page.expect_response(call.request.url) as answer:
        await call.continue_()
    await (await answer.value).finished()
    await table.continue_()
    listed = await desk.client.get("/api/v1/calls", headers=SUP, params={
        "from": day.date().isoformat(), "to": (day + timedelta(days=1)).date().isoformat(),
        "limit": 50})
    await expect(page.locator("#calls tbody tr")).to_have_count(
        len((await listed.json())["items"]))
    assert await page.locator("#timeline").count() == 0


async def test_a_desk_opened_while_callhub_waits_for_its_database_says_so_in_chinese(
        tmp_path: Path, desk_settings: Settings) -> None:
    """While callhub waits for its database at start the desk is served, and its data
    answer 503 `starting`: the Chinese desk said so in the server's English sentence.
    Once the database is ready, the same view loads."""
    db = Database.connect(f"sqlite+aiosqlite:///{tmp_path / 'desk.db'}")
    await migrate.upgrade(db)
    ready = asyncio.Event()
    app = make_app(desk_settings, db, extra_operations=followups_api.OPERATIONS,
                   database_ready=ready)
    keeper = setup_desk(app)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    desk = Desk(client, db, desk_settings, Clock(0.0, real=True), keeper, CollectorRegistry())
    try:
        async with launch_chromium(LOCALES["zh"]) as browser:
            page = await browser.new_page()
            await sign_in_as(page, desk, "supervisor")  # the token needs no database
            # The worklist, live, says why it retries; a view loaded once, why it failed.
            await page.wait_for_selector("#live.lost:has-text('正在启动')")
            await page.click("#nav-calls")  # a search: its failure in words of the desk's
            await page.wait_for_selector("#toast.error:has-text('callhub 正在启动')")
            await page.click("#nav-today")
            await page.wait_for_selector("#live.lost:has-text('正在启动')")
            ready.set()  # the database is ready: the live view's next refresh loads
            await page.wait_for_selector("#live.ok")
            await page.wait_for_selector("#fig-inbound .value")
    finally:
        await client.close()
        await db.close()


async def test_an_entry_closed_by_another_meanwhile_says_so_in_chinese_and_keeps_the_note(
        live_desk: Desk) -> None:
    """Two supervisors on one entry: the second's click gets the desk's words (not the
    server's English), the row goes at once, and the note typed is shown, not lost."""
    desk = live_desk
    await store(desk.db, desk.settings, make_call(
        "twice", at=time.time() - 60, outcome="missed", caller_number="+8613900139004"))
    async with launch_chromium(LOCALES["zh"]) as browser:
        page = await browser.new_page()
        # The page's timers wait for the test once the row shows: its 0.5 s refresh would
        # otherwise take the row away once the other supervisor closed it, before this
        # one's click (CI, twice).
        await page.clock.install()
        await sign_in_as(page, desk, "supervisor")
        rows = page.locator("#worklist tbody tr")
        await expect(rows).to_have_count(1)
        await hold_page_timers(page)
        # The boxes take no more than the API keeps (a longer text was a 400 on every try).
        assert await rows.nth(0).locator("input.note").get_attribute("maxlength") == str(
            MAX_NOTE)
        await rows.nth(0).locator("input.note").fill("回电两次未接，明早再打")
        [entry] = (await (await desk.client.get("/api/v1/worklist", headers=SUP)).json())[
            "items"]
        first = await desk.client.post(f"/api/v1/worklist/{entry['id']}/handled", headers=SUP,
                                       json={"who": "王芳"})
        assert first.status == 200
        await rows.nth(0).locator("[data-action=handled]").click()
        toast = page.locator("#toast.error")
        await expect(toast).to_contain_text("已由其他人处理")
        await expect(toast).to_contain_text("您的备注未保存：回电两次未接，明早再打")
        await expect(rows).to_have_count(0)


async def test_a_follow_up_closed_by_another_meanwhile_goes_and_keeps_what_was_typed(
        live_desk: Desk) -> None:
    """As a worklist entry: "Done" on a follow-up another supervisor (or a callback)
    closed meanwhile says so in the desk's words, the row goes at once, and the note and
    answer typed are shown, not lost when the next poll takes the row away."""
    desk = live_desk
    (call_id,) = await store(desk.db, desk.settings, make_call(
        "fu-twice", at=time.time() - 3600, outcome="missed", caller_number="+8613900139005"))
    made = await desk.client.post(f"/api/v1/calls/{call_id}/followups", headers=SUP, json={
        "due": [datetime.fromtimestamp(time.time() - 60, UTC).isoformat()]})
    assert made.status == 201
    async with launch_chromium(LOCALES["zh"]) as browser:
        page = await browser.new_page()
        await page.clock.install()  # no refresh takes the row before the click (as above)
        await sign_in_as(page, desk, "supervisor")
        rows = page.locator("#followups tbody tr")
        await expect(rows).to_have_count(1)
        await hold_page_timers(page)
        await rows.nth(0).locator("input.note").fill("热水器已修好")
        await rows.nth(0).locator("select[data-field=satisfaction]").select_option("satisfied")
        [followup] = (await made.json())["items"]
        other = await desk.client.post(f"/api/v1/followups/{followup['id']}/cancel",
                                       headers=SUP, json={"who": "王芳"})
        assert other.status == 200
        await rows.nth(0).locator("[data-action=followup-done]").click()
        toast = page.locator("#toast.error")
        await expect(toast).to_contain_text("已由其他人处理")
        await expect(toast).to_contain_text("您的备注未保存：热水器已修好 · 满意")
        await expect(rows).to_have_count(0)
