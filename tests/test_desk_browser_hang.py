"""The desk in headless Chromium when a change meets a PostgreSQL that hangs.

The API answers a change the database gave no answer to with 503
`database_unavailable` at its limit (tests/test_api_change_hang.py), and such a change
may or may not have been saved. The desk said "The database cannot be reached; try
again shortly" for it, as for a list that did not load: trying again could add a
follow-up twice. It now says the change was not confirmed and may not have been
saved, in its own language, and what the supervisor typed stays where it was.
"""

from __future__ import annotations

import time
from pathlib import Path

from desk_fixtures import (
    LOCALES,
    Clock,
    expect,
    hold_page_timers,
    launch_chromium,
    serve_desk,
    sign_in_as,
)
from store_fixtures import DbFactory, TcpProxy, auth, make_call, pg_url, store, via_proxy

from callhub.config import Settings
from callhub.store import migrate

LIMIT = 0.5  # the API's limit here; 5 s in production
NOTE = "回电两次未接，明早再打"


async def test_a_note_sent_as_the_database_hangs_is_kept_and_said_to_be_unconfirmed(
        tmp_path: Path, pg_proxy: TcpProxy, desk_settings: Settings) -> None:
    factory = DbFactory("postgresql", tmp_path)
    try:
        db = await factory.create(url=via_proxy(pg_url(), pg_proxy))
        await migrate.upgrade(db)
        db.read_timeout = LIMIT
        await store(db, desk_settings, make_call(
            "hung", at=time.time() - 60, outcome="missed", caller_number="+8613900139006"))
        desk = await serve_desk(db, desk_settings, Clock(0.0, real=True))
        try:
            async with launch_chromium(LOCALES["zh"]) as browser:
                page = await browser.new_page()
                await page.clock.install()
                await sign_in_as(page, desk, "supervisor")
                rows = page.locator("#worklist tbody tr")
                await expect(rows).to_have_count(1)
                await hold_page_timers(page)  # the worklist refreshes when the test says
                note = rows.nth(0).locator("input.note")
                await note.fill(NOTE)

                pg_proxy.freeze()
                await rows.nth(0).locator("[data-action=handled]").click()
                toast = page.locator("#toast.error")
                await expect(toast).to_contain_text("数据库未确认您的更改，可能没有保存")
                await expect(note).to_have_value(NOTE)

                pg_proxy.thaw()  # cut before its COMMIT: not saved, and the row says so
                await page.clock.run_for(2000)  # the worklist's next refreshes
                await expect(page.locator("#live.ok")).to_have_count(1)
                await expect(rows).to_have_count(1)
                await expect(note).to_have_value(NOTE)
                await rows.nth(0).locator("[data-action=handled]").click()
                await expect(rows).to_have_count(0)
            handled = await desk.client.get("/api/v1/worklist?status=handled",
                                            headers=auth("supervisor"))
            assert [e["note"] for e in (await handled.json())["items"]] == [NOTE]
        finally:
            pg_proxy.thaw()
            await desk.keeper.stop()
            await desk.client.close()
    finally:
        await factory.cleanup()
