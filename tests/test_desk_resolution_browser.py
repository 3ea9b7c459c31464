"""Resolution and satisfaction in the desk, in headless Chromium, in Chinese and English.

A supervisor sets a call's resolution (referred to a department) on its page, closes a
due follow-up with the caller's satisfaction on the worklist, records the satisfaction
of a follow-up a callback closed, and reads the rates on Today; every value is checked
against what the API stored and what GET /api/v1/stats gives.
"""

from __future__ import annotations

import csv
import io
import time
from datetime import UTC, datetime, timedelta

import pytest
from desk_fixtures import Desk, day_start, expect, launch_chromium, screenshot_path, seed_day
from store_fixtures import TOKENS, auth

from callhub.desk.i18n import CATALOGUES

SUP = auth("supervisor")


def pct(rate: float) -> str:
    return f"{rate * 100:.1f}%"


@pytest.mark.parametrize(("lang", "locale", "name"), [("zh", "zh-CN", "王主管"),
                                                      ("en", "en-GB", "Supervisor Wu")])
async def test_resolution_and_satisfaction_are_set_in_the_desk_and_their_rates_shown(
        live_desk: Desk, lang: str, locale: str, name: str) -> None:
    desk = live_desk
    text = CATALOGUES[lang]
    ids = await seed_day(desk.db, desk.settings, day_start(time.time()))
    due_at = datetime.fromtimestamp(time.time() - 600, UTC).isoformat()
    followups = []
    for call_id in (ids[0], ids[3]):
        response = await desk.client.post(f"/api/v1/calls/{call_id}/followups", headers=SUP,
                                          json={"due": [due_at]})
        assert response.status == 201
        followups.append((await response.json())["items"][0]["id"])
    # One follow-up was closed without an answer (as a callback closes it).
    response = await desk.client.post(f"/api/v1/followups/{followups[1]}/done", headers=SUP,
                                      json={})
    assert response.status == 200
    # Two more resolutions set through the API, so the rate is neither 0 nor 100 %.
    for call_id, resolution in ((ids[2], "resolved"), (ids[3], "unresolved")):
        response = await desk.client.patch(f"/api/v1/calls/{call_id}", headers=SUP,
                                           json={"resolution": resolution})
        assert response.status == 200

    async with launch_chromium(locale) as browser:
        page = await browser.new_page()
        await page.goto(desk.url)
        await page.fill("#token", TOKENS["supervisor"])
        await page.fill("#who-name", name)
        await page.click("#signin-button")
        await page.wait_for_selector("#nav:not([hidden])")

        # The call page: referred to a department.
        await page.goto(desk.url + f"#/call/{ids[1]}")
        await page.wait_for_selector("#timeline li")
        assert await page.inner_text("#call-resolution") == text["resolution.none"]
        assert not await page.is_visible("#department")
        await page.select_option("#resolution", "referred")
        await expect(page.locator("#department")).to_be_visible()
        await page.fill("#department", "物业维修部")
        await page.click("#save-resolution")
        shown = page.locator("#call-resolution")
        await expect(shown).to_contain_text("物业维修部")
        assert text["res.referred"] in await shown.inner_text()
        assert f"{name} (supervisor)" in await shown.inner_text()
        call = await (await desk.client.get(f"/api/v1/calls/{ids[1]}", headers=SUP)).json()
        assert (call["resolution"], call["resolution_department"], call["resolution_by"]) == (
            "referred", "物业维修部", f"{name} (supervisor)")
        await page.screenshot(path=screenshot_path(f"resolution-call-{lang}"), full_page=True)

        # The worklist: the due follow-up is done with the caller's satisfaction.
        await page.goto(desk.url + "#/worklist")
        row = page.locator(f"#followups tbody tr[data-followup='{followups[0]}']")
        await row.wait_for()
        await row.locator("select[data-field=satisfaction]").select_option("satisfied")
        await row.locator("[data-action=followup-done]").click()
        await expect(row).to_have_count(0)
        done = await (await desk.client.get(f"/api/v1/calls/{ids[0]}/followups",
                                            headers=SUP)).json()
        assert [(f["status"], f["satisfaction"], f["rated_by"]) for f in done["items"]] == [
            ("done", "satisfied", f"{name} (supervisor)")]

        # The call page of the follow-up closed without an answer: record it there.
        await page.goto(desk.url + f"#/call/{ids[3]}")
        answer = page.locator(f"#call-followup-list tr[data-followup='{followups[1]}']")
        await answer.locator("select[data-field=satisfaction]").select_option("dissatisfied")
        await answer.locator("[data-action=rate]").click()
        await expect(answer.locator(".satisfaction")).to_have_text(text["sat.dissatisfied"])

        # Today: the rates as /stats gives them, in the page's language.
        stats = await (await desk.client.get("/api/v1/stats", headers=SUP)).json()
        totals = stats["totals"]
        assert totals["resolutions_set"] == 3 and totals["resolved"] == 1
        assert (totals["satisfied"], totals["dissatisfied"]) == (1, 1)
        await page.goto(desk.url + "#/today")
        figure = page.locator("#fig-resolution .value")
        await expect(figure).to_have_text(pct(totals["resolution_rate"]))
        await expect(page.locator("#fig-satisfaction .value")).to_have_text(
            pct(totals["satisfaction_rate"]))
        assert await page.inner_text("#fig-resolution .label") == text["resolution.rate"]
        assert await page.inner_text("#fig-satisfaction .label") == text["satisfaction.rate"]
        lines = await (await desk.client.get("/api/v1/stats", params={"group_by": "line"},
                                             headers=SUP)).json()
        rows = await page.locator("#resolution-lines tbody tr").all_inner_texts()
        for group in lines["groups"]:
            if group["resolutions_set"]:
                assert any(r.startswith(group["key"]) and pct(group["resolution_rate"]) in r
                           for r in rows), (group["key"], rows)
        agents = await page.locator("#resolution-agents tbody tr").count()
        assert agents >= 1
        await page.screenshot(path=screenshot_path(f"resolution-today-{lang}"), full_page=True)


@pytest.mark.parametrize(("lang", "locale"), [("zh", "zh-CN"), ("en", "en-GB")])
async def test_the_calls_table_shows_and_filters_by_resolution(
        live_desk: Desk, lang: str, locale: str) -> None:
    desk = live_desk
    text = CATALOGUES[lang]
    day = day_start(time.time())
    ids = await seed_day(desk.db, desk.settings, day)
    chosen = {ids[0]: ("resolved", None), ids[1]: ("pending", None),
              ids[2]: ("referred", "物业维修部"), ids[3]: ("pending", None)}
    for call_id, (resolution, department) in chosen.items():
        body = {"resolution": resolution, **({"department": department} if department else {})}
        response = await desk.client.patch(f"/api/v1/calls/{call_id}", headers=SUP, json=body)
        assert response.status == 200
    period = {"from": day.date().isoformat(),
              "to": (day + timedelta(days=1)).date().isoformat(), "limit": "500"}

    async def api_ids(resolution: str) -> list[str]:
        response = await desk.client.get("/api/v1/calls", headers=SUP,
                                         params={**period, "resolution": resolution})
        assert response.status == 200
        return [str(c["id"]) for c in (await response.json())["items"]]

    async with launch_chromium(locale) as browser:
        page = await browser.new_page()
        await page.goto(desk.url)
        await page.fill("#token", TOKENS["supervisor"])
        await page.click("#signin-button")
        await page.wait_for_selector("#nav:not([hidden])")
        await page.goto(desk.url + "#/calls")
        rows = page.locator("#calls tbody tr")
        await expect(rows).to_have_count(len(await api_ids("none")) + len(chosen))
        headers = await page.locator("#calls thead th").all_inner_texts()
        assert headers[-1] == text["calls.resolution"]
        referred = page.locator(f"#calls tbody tr[data-call='{ids[2]}'] td.resolution")
        await expect(referred).to_have_text(f"{text['res.referred']} → 物业维修部")
        assert await page.inner_text(f"#calls tbody tr[data-call='{ids[4]}'] td.resolution") == ""

        for value in ("pending", "none", "resolved"):
            wanted = await api_ids(value)
            assert wanted, value
            await page.select_option("#f-resolution", value)
            await page.click("#search-button")
            await expect(rows).to_have_count(len(wanted))
            assert [await r.get_attribute("data-call") for r in await rows.all()] == wanted
            shown = "" if value == "none" else text[f"res.{value}"]
            assert set(await page.locator("#calls tbody td.resolution").all_inner_texts()) == {
                shown}
        labels = await page.locator("#f-resolution option").all_inner_texts()
        assert labels == [text["calls.any"], *(text[f"res.{k}"] for k in (
            "resolved", "referred", "pending", "unresolved", "none"))]

        # The export carries the same filter.
        await page.select_option("#f-resolution", "pending")
        await page.click("#search-button")
        await expect(rows).to_have_count(len(await api_ids("pending")))
        async with page.expect_download() as info:
            await page.click("#export")
        download = await info.value
        exported = (await download.path()).read_bytes().decode("utf-8-sig")
        rows_csv = list(csv.DictReader(io.StringIO(exported)))
        assert [r["id"] for r in rows_csv] == await api_ids("pending")
        assert {r["resolution"] for r in rows_csv} == {"pending"}
        await page.screenshot(path=screenshot_path(f"resolution-calls-{lang}"), full_page=True)
