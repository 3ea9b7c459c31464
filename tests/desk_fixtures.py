"""The desk served in-process (make_app + follow-up operations + setup_desk) and a browser.

`desk` serves the whole app on a loopback port over the test database with an
injected clock; `seed_day` stores a plausible day of calls through the store's
own `save_calls`. `chromium` launches Debian's Chromium headless through
Playwright, or skips the test with the reason when either is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time as pytime
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from store_fixtures import TOKENS, make_call, store

from callhub.api import followups as followups_api
from callhub.api.app import make_app
from callhub.config import PbxConfig, Settings
from callhub.desk import FollowupKeeper, setup_desk
from callhub.metrics.collectors import CallhubMetrics
from callhub.records import Attempt, CallRecord, Transfer
from callhub.store import migrate
from callhub.store.db import Database

SHANGHAI = ZoneInfo("Asia/Shanghai")
AGENTS = {"PJSIP/1001": "李娜", "PJSIP/1002": "Wang Fang", "PJSIP/1003": "张伟"}
LINES = {"4008001000": "front-desk", "4008002000": "repairs"}
REPAIR_RULE = (24 * 3600.0, 48 * 3600.0)
ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
# Playwright adds --headless itself (headless=True) and --user-data-dir (the profile).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage"]


class Clock:
    """A settable clock (POSIX seconds) for the keeper and the follow-up routes.

    `real=True` follows the wall clock (browser tests, where the page's own clock runs).
    """

    def __init__(self, now: float, real: bool = False) -> None:
        self.now = now
        self.real = real

    def __call__(self) -> float:
        return pytime.time() if self.real else self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Desk:
    client: TestClient[Any, Any]
    db: Database
    settings: Settings
    clock: Clock
    keeper: FollowupKeeper
    registry: CollectorRegistry

    @property
    def url(self) -> str:
        return str(self.client.make_url("/desk/"))


@pytest.fixture
def desk_settings(api_settings: Settings) -> Settings:
    pbx = PbxConfig("main", agents=AGENTS, lines=LINES)
    return replace(api_settings, pbxs=(pbx,), followup_rules={"repair": REPAIR_RULE},
                   followup_overdue_seconds=3600.0, desk_poll_seconds=0.5)


def local_ts(day: datetime, hour: int, minute: int = 0) -> float:
    """POSIX seconds of `hour:minute` on `day` in Shanghai."""
    return datetime.combine(day.date(), time(hour, minute), tzinfo=SHANGHAI).timestamp()


async def serve_desk(db: Database, settings: Settings, clock: Clock,
                     keeper_interval: float = 3600.0) -> Desk:
    registry = CollectorRegistry()
    metrics = CallhubMetrics.from_settings(settings, registry=registry)
    app = make_app(settings, db, metrics=metrics, extra_operations=followups_api.OPERATIONS)
    keeper = setup_desk(app, clock=clock, keeper_interval=keeper_interval)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    await keeper.start()
    async with asyncio.timeout(10):
        await keeper.wait_ticks(1)  # the keeper's first tick is done: tests tick by hand
    return Desk(client, db, settings, clock, keeper, registry)


@pytest.fixture
async def desk(any_db: Database, desk_settings: Settings) -> AsyncIterator[Desk]:
    """The desk over the test database; the clock starts at 2026-11-29 12:00 Shanghai."""
    clock = Clock(datetime(2026, 11, 29, 12, 0, tzinfo=SHANGHAI).timestamp())
    served = await serve_desk(any_db, desk_settings, clock)
    yield served
    await served.keeper.stop()
    await served.client.close()


@pytest.fixture
async def live_desk(tmp_path: Path, desk_settings: Settings) -> AsyncIterator[Desk]:
    """The desk on a SQLite file with a real-time clock and a running keeper (browser tests)."""
    db = Database.connect(f"sqlite+aiosqlite:///{tmp_path / 'desk.db'}")
    await migrate.upgrade(db)
    served = await serve_desk(db, desk_settings, Clock(0.0, real=True), keeper_interval=0.5)
    try:
        yield served
    finally:
        await served.keeper.stop()
        await served.client.close()
        await db.close()


def day_of_calls(day: datetime) -> list[CallRecord]:
    """Calls across a working day on two lines: answered, slow, missed, abandoned, callbacks."""
    records: list[CallRecord] = []
    n = 0

    def add(hour: int, minute: int, **fields: Any) -> CallRecord:
        nonlocal n
        n += 1
        record = make_call(f"d{day:%m%d}-{n:03d}", at=local_ts(day, hour, minute), **fields)
        records.append(record)
        return record

    for hour, agent, ring in ((8, "PJSIP/1001", 4.0), (8, "PJSIP/1002", 12.0),
                              (9, "PJSIP/1001", 3.0), (9, "PJSIP/1003", 17.0),
                              (10, "PJSIP/1002", 6.0), (10, "PJSIP/1001", 2.0),
                              (11, "PJSIP/1003", 9.0), (14, "PJSIP/1001", 21.0),
                              (15, "PJSIP/1002", 5.0), (16, "PJSIP/1003", 8.0)):
        add(hour, 5 + len(records) % 50, agent=agent, agent_name=AGENTS[agent],
            ring_seconds=ring, rings=int(ring // 5) + 1,
            caller_number=f"+86139000{len(records):05d}",
            hangup_by="agent" if len(records) % 3 == 0 else "external",
            line="repairs" if len(records) % 2 else "front-desk")
    add(9, 40, outcome="missed", caller_number="+8613912345678", caller_name="王小明",
        line="repairs")
    add(10, 20, outcome="missed", caller_number="+8613912345678", caller_name="王小明",
        line="repairs")
    add(11, 15, outcome="abandoned", reason="while_ringing", caller_number="+8613700001111",
        caller_name=None, line="front-desk", ring_seconds=11.0, rings=3)
    add(13, 30, outcome="missed", reason="no_agent_on_duty", caller_number="+8613600002222",
        caller_name="Zhao Lei", line="front-desk", ring_seconds=0.0, rings=0, attempts=[])
    # A missed call called back by Li Na twenty minutes later (handled automatically).
    add(14, 0, outcome="missed", caller_number="+8613500003333", caller_name="陈静",
        line="front-desk")
    add(14, 20, direction="outbound", called_number="+8613500003333", agent="PJSIP/1001",
        agent_name=AGENTS["PJSIP/1001"])
    # A transferred call with two attempts, the first ringing out.
    at = local_ts(day, 15, 30)
    add(15, 30, caller_number="+8613800138000", caller_name="刘洋", line="repairs",
        ring_seconds=19.0, rings=4, agent="PJSIP/1002", agent_name=AGENTS["PJSIP/1002"],
        answered_at=at + 20.0, ended_at=at + 200.0, wait_seconds=20.0, talk_seconds=180.0,
        hangup_by="external",
        attempts=[Attempt("PJSIP/1001", AGENTS["PJSIP/1001"], at + 1.0, at + 1.0, at + 16.0,
                          "no_answer", 15.0),
                  Attempt("PJSIP/1002", AGENTS["PJSIP/1002"], at + 16.0, at + 16.0, at + 20.0,
                          "answered", 4.0)],
        transfers=[Transfer("blind", "PJSIP/1003", at + 120.0)])
    return records


async def seed_day(db: Database, settings: Settings, day: datetime) -> list[int]:
    return await store(db, settings, *day_of_calls(day))


def chromium_path() -> str:
    """Debian's Chromium, or skip: the browser tests need it (CI installs it)."""
    path = os.environ.get("CALLHUB_CHROMIUM") or shutil.which("chromium")
    if not path:
        pytest.skip("chromium is not installed (apt-get install chromium, or run "
                    ".ci/install-browser): browser tests skipped")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        pytest.skip("the playwright Python package is not installed (pip install -e '.[test]'):"
                    " browser tests skipped")
    return path


async def hold_page_timers(page: Any) -> None:
    """Stop the page's timers (its 0.5 s refreshes) where they are, until the test moves
    them (`page.clock.run_for`). `page.clock.install()`, made before the page loads,
    fakes them but lets time flow at its real pace; `pause_at` the page's own now stops
    it, skipping no timer."""
    await page.clock.pause_at(await page.evaluate("Date.now()") + 1)


@contextlib.asynccontextmanager
async def launch_chromium(locale: str = "en-GB") -> AsyncIterator[Any]:
    """A headless Chromium browser context on a fresh profile directory (Playwright's),
    its languages `locale` (what `navigator.languages` tells the page)."""
    path = chromium_path()
    from playwright.async_api import async_playwright

    profile = tempfile.mkdtemp(prefix="callhub-chromium-")
    try:
        async with async_playwright() as pw:
            context = await pw.chromium.launch_persistent_context(
                profile, executable_path=path, headless=True, args=CHROMIUM_ARGS,
                viewport={"width": 1280, "height": 900}, locale=locale)
            context.set_default_timeout(10_000)
            try:
                yield context
            finally:
                await context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
async def chromium() -> AsyncIterator[Any]:
    """A headless Chromium browser context in British English."""
    async with launch_chromium("en-GB") as context:
        yield context


def expect(target: Any) -> Any:
    """Playwright's `expect` (waits without eval, which the desk's CSP forbids)."""
    from playwright.async_api import expect as pw_expect

    return pw_expect(target)


def screenshot_path(name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS / f"{name}.png"


def day_start(ts: float) -> datetime:
    local = datetime.fromtimestamp(ts, SHANGHAI)
    return datetime.combine(local.date(), time(), tzinfo=SHANGHAI)


ONE_DAY = timedelta(days=1)


async def serve_file_desk(tmp_path: Path, settings: Settings) -> Desk:
    """The desk on a fresh SQLite file with a real-time clock (browser tests with their own
    settings; close it with `close_desk`)."""
    db = Database.connect(f"sqlite+aiosqlite:///{tmp_path / 'desk.db'}")
    await migrate.upgrade(db)
    return await serve_desk(db, settings, Clock(0.0, real=True), keeper_interval=0.5)


async def close_desk(desk: Desk) -> None:
    await desk.keeper.stop()
    await desk.client.close()
    await desk.db.close()


async def sign_in_as(page: Any, desk: Desk, role: str, name: str = "值班长") -> None:
    """Sign in on the desk's page with the role's test token."""
    await page.goto(desk.url)
    await page.fill("#token", TOKENS[role])
    await page.fill("#who-name", name)
    await page.click("#signin-button")
    await page.wait_for_selector("#nav:not([hidden])")


# The browser locale that makes the desk pick each language.
LOCALES = {"zh": "zh-CN", "en": "en-GB"}
