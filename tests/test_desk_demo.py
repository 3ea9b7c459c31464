"""End to end: the desk in headless Chromium against a running `callhub run --demo`.

The daemon runs as a subprocess on free ports with a temporary SQLite file;
its AMI simulator produces a steady mix of calls. Through the page only: sign
in, watch a missed call arrive on the worklist without a reload, mark it called
back, find that caller's call by number and open its timeline, look at
today's figures, switch the language. Screenshots of every page go to
test-artifacts/screenshots/ (demo-*.png) for review.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from desk_fixtures import ROOT, chromium_path, expect, screenshot_path

STARTUP_TIMEOUT = 30.0


@dataclass
class Demo:
    url: str
    supervisor: str
    admin: str

    async def get(self, path: str, **params: str) -> Any:
        async with aiohttp.ClientSession() as session, session.get(
                self.url + path, params=params,
                headers={"Authorization": f"Bearer {self.admin}"}) as response:
            assert response.status == 200, await response.text()
            return await response.json()


@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[Demo]:
    """`callhub run --demo` on free ports over a temp SQLite file; stopped with SIGTERM."""
    chromium_path()  # skip before starting anything when there is no browser
    supervisor, admin = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
    config = tmp_path / "callhub.toml"
    config.write_text('timezone = "Asia/Shanghai"\n[desk]\npoll_seconds = 1.0\n'
                      '[followups]\nrepair = ["24h", "48h"]\n', encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLHUB_")}
    env.update(CALLHUB_API_LISTEN="127.0.0.1:0", CALLHUB_FASTAGI_LISTEN="127.0.0.1:0",
               CALLHUB_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'demo.db'}",
               CALLHUB_SPOOL_DIR=str(tmp_path / "spool"),
               CALLHUB_API_TOKENS=f"supervisor:{supervisor},admin:{admin}",
               CALLHUB_LOG_LEVEL="warning", PYTHONPATH=str(ROOT))
    stderr = (tmp_path / "daemon.log").open("wb")
    # About two calls a second (a third lost), so a missed call shows up within seconds.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "callhub", "--config", str(config), "run", "--demo",
        "--demo-rate", "30", "--demo-speed", "5",
        cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=stderr)
    assert proc.stdout is not None
    url = None
    try:
        async with asyncio.timeout(STARTUP_TIMEOUT):
            while url is None:
                line = (await proc.stdout.readline()).decode()
                if not line:
                    log = (tmp_path / "daemon.log").read_text(errors="replace")[-2000:]
                    pytest.fail(f"callhub run --demo exited early: {log}")
                match = re.match(r"callhub API: (http://[\d.]+:\d+)/", line)
                url = match.group(1) if match else None
        drain = asyncio.create_task(proc.stdout.read())
        yield Demo(url, supervisor, admin)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(15):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        with contextlib.suppress(Exception):
            drain.cancel()
        stderr.close()
    assert proc.returncode == 0, (tmp_path / "daemon.log").read_text(errors="replace")[-2000:]


async def test_sign_in_see_a_missed_call_arrive_call_it_back_find_it_and_switch_language(
        demo: Demo, chromium: Any) -> None:
    page = await chromium.new_page()
    loads: list[str] = []
    page.on("load", lambda: loads.append(page.url))
    await page.goto(demo.url + "/desk/")
    await expect(page.locator("#signin h2")).to_have_text("Sign in")
    await page.screenshot(path=screenshot_path("demo-signin"))

    # Sign in: the token goes into the tab's sessionStorage, never into a URL.
    await page.fill("#token", demo.supervisor)
    await page.fill("#who-name", "Supervisor Wu")
    await page.click("#signin-button")
    await expect(page.locator("#live")).to_have_class(re.compile(r"\bok\b"))
    assert demo.supervisor not in page.url
    loads_before = len(loads)

    # A missed call arrives while we look: a new row, with no reload.
    await page.locator("#worklist tbody tr.new").first.wait_for(timeout=45_000)
    await page.locator("#worklist tbody tr").nth(2).wait_for(timeout=45_000)  # a fuller picture
    assert len(loads) == loads_before, "the worklist reloaded the page"
    # The newest arrival: the demo's own agent calls back the oldest callers now and then.
    new_row = page.locator("#worklist tbody tr.new").last
    entry_id = await new_row.get_attribute("data-entry")
    number = (await new_row.locator(".number").inner_text()).strip()
    assert re.fullmatch(r"\+?\d{6,}", number), number
    await page.screenshot(path=screenshot_path("demo-worklist"))

    # Mark it called back, with a note: the row goes, the API has it handled by hand.
    row = page.locator(f'#worklist tbody tr[data-entry="{entry_id}"]')
    await row.locator("input.note").fill("called back, all fine")
    await row.locator("[data-action=handled]").click()
    await expect(row).to_have_count(0)
    entries = await demo.get("/api/v1/worklist", number=number)
    entry = next(e for e in entries["items"] if str(e["id"]) == entry_id)
    assert (entry["status"], entry["how"], entry["handled_by"], entry["note"]) == (
        "handled", "manual", "Supervisor Wu", "called back, all fine")

    # Find the call by number and open its timeline.
    await page.click("#nav-calls")
    await page.fill("#f-from", "")
    await page.fill("#f-to", "")
    await page.fill("#f-number", number)
    await page.click("#search-button")
    first = page.locator("#calls tbody tr").first
    await first.wait_for()
    assert number in await first.inner_text()
    await page.screenshot(path=screenshot_path("demo-calls"))
    await first.click()
    timeline = page.locator("#timeline li")
    await timeline.first.wait_for()
    assert await page.inner_text("#call-number") == number
    steps = await timeline.all_inner_texts()
    assert f"Call from {number} arrived" in steps[0]
    assert any("Ended:" in s or "Hung up" in s for s in steps[-1:])
    assert "called back" in await page.inner_text("dl.facts")
    await page.screenshot(path=screenshot_path("demo-call"), full_page=True)

    # Today's figures and the hourly chart.
    await page.click("#nav-today")
    await page.locator("#hour-chart rect.bar").first.wait_for()
    assert int(await page.inner_text("#fig-inbound .value")) > 0
    await page.screenshot(path=screenshot_path("demo-today"), full_page=True)

    # Switch to Chinese: the page reloads in Chinese and we stay signed in.
    await page.click("#lang-zh")
    await expect(page.locator("#nav-worklist")).to_have_text("待回电")
    await expect(page.locator("#who")).to_contain_text("主管")
    await page.locator("#hour-chart rect.bar").first.wait_for()
    assert await page.inner_text("#fig-within .label") == "3 声内接听率"
    await page.screenshot(path=screenshot_path("demo-today-zh"), full_page=True)
    await page.click("#nav-worklist")
    await expect(page.locator("#worklist thead th").first).to_have_text("号码")
    await page.locator("#worklist tbody tr").first.wait_for()
    await page.screenshot(path=screenshot_path("demo-worklist-zh"))
    await page.click("#lang-en")
    await expect(page.locator("#nav-worklist")).to_have_text("Worklist")
