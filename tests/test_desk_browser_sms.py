"""The SMS after the call on the desk, in headless Chromium, in Chinese and English: its status
on the call page, and the SMS page (the outbox and the opt-out list) (issue 13).

Messages are really sent: the SMS worker claims the outbox rows the store
queued with their calls and posts them to a local webhook, so the pages show
what the outbox recorded. Opting a number out on the page is checked through
the API, and a call from that number afterwards queues nothing.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from desk_fixtures import (
    LOCALES,
    Desk,
    close_desk,
    expect,
    launch_chromium,
    screenshot_path,
    serve_file_desk,
    sign_in_as,
)
from sms_fixtures import WebhookServer
from store_fixtures import auth, make_call, store

from callhub.config import Settings
from callhub.desk.i18n import CATALOGUES
from callhub.sms.settings import SmsSettings, sms_settings_from_table
from callhub.sms.webhook import WebhookGateway
from callhub.sms.worker import SmsWorker
from callhub.store.sms_outbox import TableOutbox

SUP = auth("supervisor")


@pytest.fixture
async def sms_desk(tmp_path: Path, desk_settings: Settings, webhook: WebhookServer
                   ) -> AsyncIterator[Desk]:
    """The desk with the issue's [sms] rule on front-desk (quiet time 0: every call sends)."""
    sms = sms_settings_from_table({
        "gateway": "webhook", "url": webhook.url, "token": "bearer-token-1",
        "quiet_seconds": 0,
        "rules": [{"line": "front-desk", "after": "answered",
                   "template": "您好！我是{agent_name}，感谢您的来电。"}]})
    desk = await serve_file_desk(tmp_path, replace(desk_settings, sms=sms))
    try:
        yield desk
    finally:
        await close_desk(desk)


async def send_queued(desk: Desk, webhook: WebhookServer) -> int:
    """One round of the SMS worker against the local webhook: how many it claimed."""
    sms = desk.settings.sms
    assert isinstance(sms, SmsSettings)
    gateway = WebhookGateway(webhook.url, token="bearer-token-1")
    try:
        return await SmsWorker.from_settings(TableOutbox(desk.db), gateway, sms).run_once()
    finally:
        await gateway.close()


async def sent_and_queued(desk: Desk, webhook: WebhookServer) -> tuple[int, int, int]:
    """Calls whose SMS was sent, is queued, and that have none (repairs has no rule)."""
    now = time.time()
    sent, _, none = await store(
        desk.db, desk.settings,
        make_call("sms.1", at=now - 300, line="front-desk", caller_number="+8613900001111"),
        make_call("sms.2", at=now - 200, line="front-desk", caller_number="+8613900002222"),
        make_call("sms.3", at=now - 100, line="repairs", caller_number="+8613900003333"))
    assert await send_queued(desk, webhook) == 2
    assert sorted(r.body["to"] for r in webhook.received) == [
        "+8613900001111", "+8613900002222"]
    queued, = await store(desk.db, desk.settings, make_call(
        "sms.4", at=now - 50, line="front-desk", caller_number="+8613900004444"))
    return sent, queued, none


@pytest.mark.parametrize("lang", ["zh", "en"])
async def test_the_call_page_shows_the_sms_status_the_outbox_recorded(
        sms_desk: Desk, webhook: WebhookServer, lang: str) -> None:
    desk = sms_desk
    sent, queued, none = await sent_and_queued(desk, webhook)
    statuses: dict[int, tuple[str, str | None]] = {}
    for call_id in (sent, queued, none):
        call = await (await desk.client.get(f"/api/v1/calls/{call_id}", headers=SUP)).json()
        statuses[call_id] = (call["external_number"], call["sms_status"])
    assert [status for _, status in statuses.values()] == ["sent", "queued", None]

    text = CATALOGUES[lang]
    async with launch_chromium(LOCALES[lang]) as browser:
        page = await browser.new_page()
        await sign_in_as(page, desk, "supervisor")
        for call_id, (number, status) in statuses.items():
            await page.goto(desk.url + f"#/call/{call_id}")
            await expect(page.locator("#call-number")).to_have_text(number)
            assert await page.locator("dl.facts dt", has_text=text["calls.sms"]).count() == 1
            await expect(page.locator("#call-sms")).to_have_text(
                text[f"sms.{status}"] if status else "—")
            if status == "sent":
                await page.screenshot(path=screenshot_path(f"inproc-call-sms-{lang}"),
                                      full_page=True)


def row_texts(rows: list[str]) -> list[list[str]]:
    return [r.split("\t") for r in rows]


@pytest.mark.parametrize("lang", ["zh", "en"])
async def test_the_sms_page_lists_the_outbox_and_keeps_the_opt_out_list(
        sms_desk: Desk, webhook: WebhookServer, lang: str) -> None:
    desk = sms_desk
    sent, queued, _ = await sent_and_queued(desk, webhook)
    outbox = await (await desk.client.get("/api/v1/sms", headers=SUP)).json()
    by_call = {m["call_id"]: m for m in outbox["items"]}
    assert (by_call[sent]["status"], by_call[queued]["status"]) == ("sent", "queued")
    text = CATALOGUES[lang]

    async with launch_chromium(LOCALES[lang]) as browser:
        page = await browser.new_page()
        await sign_in_as(page, desk, "supervisor")
        await page.click("#nav-sms")
        rows = page.locator("#outbox tbody tr")
        await expect(rows).to_have_count(len(outbox["items"]))
        # Newest first, as the API gives them, each with its number, text and status.
        for row, message in zip(await rows.all(), outbox["items"], strict=True):
            assert await row.get_attribute("data-sms") == str(message["id"])
            cells = await row.locator("td").all_inner_texts()
            assert message["to_number"] in cells and message["text"] in cells
            assert text[f"sms.{message['status']}"] in cells
            assert text["outbox.kindAnswered"] in cells
        # The status filter asks the API for that status only.
        await page.select_option("#sms-status", "sent")
        await expect(rows).to_have_count(2)
        assert {await r.get_attribute("data-status") for r in await rows.all()} == {"sent"}
        await page.screenshot(path=screenshot_path(f"inproc-sms-outbox-{lang}"), full_page=True)
        # A row leads to its call.
        await page.locator(f"#outbox tr[data-sms='{by_call[sent]['id']}']").click()
        await page.wait_for_url(f"**#/call/{sent}")
        await expect(page.locator("#call-sms")).to_have_text(text["sms.sent"])

        # Opt a number out on the page, in the form callers' numbers are typed.
        await page.click("#nav-sms")
        await expect(page.locator("#optouts-empty")).to_have_text(text["optouts.none"])
        await page.fill("#optout-number", "+86 139-0000-5555")
        await page.click("#optout-add")
        listed = page.locator("#optout-list tr[data-number='+8613900005555']")
        await expect(listed).to_have_count(1)
        assert text["role.supervisor"] in await listed.inner_text()
        optouts = await (await desk.client.get("/api/v1/sms/optouts", headers=SUP)).json()
        assert [o["number"] for o in optouts["items"]] == ["+8613900005555"]
        # Its next call queues no SMS, while another number's does.
        before = len(outbox["items"])
        now = time.time()
        await store(desk.db, desk.settings,
                    make_call("sms.5", at=now - 20, line="front-desk",
                              caller_number="+8613900005555"),
                    make_call("sms.6", at=now - 10, line="front-desk",
                              caller_number="+8613900006666"))
        after = await (await desk.client.get("/api/v1/sms", headers=SUP)).json()
        assert len(after["items"]) == before + 1
        assert after["items"][0]["to_number"] == "+8613900006666"
        await page.screenshot(path=screenshot_path(f"inproc-sms-optouts-{lang}"),
                              full_page=True)
        # And taking it off the list on the page.
        await listed.locator("[data-action=optout-remove]").click()
        await expect(page.locator("#optouts-empty")).to_be_visible()
        optouts = await (await desk.client.get("/api/v1/sms/optouts", headers=SUP)).json()
        assert optouts["items"] == []


async def test_a_viewer_cannot_open_the_sms_page(sms_desk: Desk, chromium: Any) -> None:
    page = await chromium.new_page()
    await sign_in_as(page, sms_desk, "viewer")
    await page.click("#nav-sms")
    await page.wait_for_selector("text=needs a supervisor or admin token")
    assert await page.locator("#outbox").count() == 0


async def test_an_opt_out_removed_by_another_meanwhile_leaves_the_list(
        sms_desk: Desk, chromium: Any) -> None:
    """"Remove" on a number another supervisor removed meanwhile says it is not there, and
    the list is read again: the row went (it stayed, and every click said the same)."""
    desk = sms_desk
    added = await desk.client.post("/api/v1/sms/optouts", headers=SUP,
                                   json={"number": "+8613900006666"})
    assert added.status == 201
    page = await chromium.new_page()
    await sign_in_as(page, desk, "supervisor")
    await page.click("#nav-sms")
    listed = page.locator("#optout-list tr[data-number='+8613900006666']")
    await expect(listed).to_have_count(1)
    gone = await desk.client.delete("/api/v1/sms/optouts", headers=SUP,
                                    params={"number": "+8613900006666"})
    assert gone.status == 204
    await listed.locator("[data-action=optout-remove]").click()
    await expect(page.locator("#toast.error")).to_contain_text("Not found")
    await expect(page.locator("#optouts-empty")).to_be_visible()
