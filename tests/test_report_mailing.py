"""The scheduled report mail: a real SMTP server (aiosmtpd) receives the weekly HTML once."""

from __future__ import annotations

import asyncio
import email
import email.policy
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from desk_fixtures import SHANGHAI, desk_settings  # noqa: F401  (fixture)
from store_fixtures import store
from test_report import around_the_day

from callhub.config import Settings
from callhub.config.report import ReportSettings, SmtpSettings
from callhub.daemon import Daemon, database, report_mailer, running
from callhub.report.figures import build_report
from callhub.report.mailer import ReportMailer
from callhub.store import mailings, migrate
from callhub.store.db import Database

# Monday 09:00 in Shanghai: the week of 2026-11-23 to 29 (the seeded calls) ended last night.
MONDAY = datetime(2026, 11, 30, 9, 0, tzinfo=SHANGHAI)


@dataclass
class Inbox:
    """What the local SMTP server accepted; `refuse` makes it answer 554 instead."""

    messages: list[EmailMessage] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    refuse: bool = False
    port: int = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.refuse:
            return "554 5.7.1 refused by the test"
        assert isinstance(envelope.content, bytes)
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        self.envelopes.append((str(envelope.mail_from), list(envelope.rcpt_tos)))
        self.arrived.set()
        return "250 OK"


@pytest.fixture
async def inbox() -> AsyncIterator[Inbox]:
    """aiosmtpd's SMTP protocol on a loopback port of this event loop (the mailer's smtplib
    runs in a thread, so the two talk over a real socket)."""
    box = Inbox()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(box), "127.0.0.1", 0)
    box.port = server.sockets[0].getsockname()[1]
    yield box
    server.close()
    await server.wait_closed()


def mail_settings(base: Settings, inbox: Inbox, **report: Any) -> Settings:
    smtp = SmtpSettings(host="127.0.0.1", port=inbox.port, from_address="callhub@example.com")
    cfg = ReportSettings(schedule="weekly", send_at="08:00",
                         recipients=("leader@example.com", "deputy@example.com"),
                         format="html", lang="en", smtp=smtp)
    return replace(base, timezone="Asia/Shanghai", report=replace(cfg, **report))


def html_of(message: EmailMessage) -> str:
    part = message.get_body(("html",))
    assert part is not None, "the mail has an HTML part"
    return str(part.get_content())


async def started(db: Database, settings: Settings) -> AsyncIterator[Daemon]:
    d = Daemon(settings, db=db, report_clock=lambda: MONDAY)
    async with running(d, parts=[database, report_mailer]):
        yield d


async def test_the_weekly_html_report_arrives_once_even_across_a_restart(
        any_db: Database, desk_settings: Settings, inbox: Inbox) -> None:  # noqa: F811
    settings = mail_settings(desk_settings, inbox)
    await store(any_db, settings, *around_the_day())
    expected = await build_report(any_db, settings, MONDAY.date().replace(day=23),
                                  period="week")
    assert expected["totals"]["inbound"] > 0, "the seeded calls fall in the week mailed"

    async for d in started(any_db, settings):
        assert d.mailer is not None
        await asyncio.wait_for(inbox.arrived.wait(), 20)
        while d.mailer.passes < 1:  # the pass that mailed is over
            d.mailer.passed.clear()
            await asyncio.wait_for(d.mailer.passed.wait(), 20)
    assert len(inbox.messages) == 1
    message = inbox.messages[0]
    assert inbox.envelopes[0] == ("callhub@example.com",
                                  ["leader@example.com", "deputy@example.com"])
    assert "2026-11-23" in message["Subject"] and "2026-11-29" in message["Subject"]
    html = html_of(message)
    totals = expected["totals"]
    assert f">{totals['inbound']}<" in html and f"{totals['answer_rate'] * 100:.1f} %" in html
    assert f"{totals['within_rings_rate'] * 100:.1f} %" in html
    assert "李娜 (PJSIP/1001)" in html and "repairs" in html
    plain = message.get_body(("plain",))
    assert plain is not None and "callhub weekly report 2026-11-23" in plain.get_content()
    async with any_db.connection() as conn:
        sent = await mailings.listing(conn)
    assert [(r["period_kind"], r["period_start"].isoformat()) for r in sent] == [
        ("week", "2026-11-23")]
    assert sent[0]["sent_at"] is not None

    # A new daemon over the same database, at the same moment: it looks and sends nothing.
    async for d in started(any_db, settings):
        assert d.mailer is not None
        await asyncio.wait_for(d.mailer.passed.wait(), 20)
        assert d.mailer.passes == 1
    assert len(inbox.messages) == 1


async def test_two_mailers_at_once_send_one_mail(
        any_db: Database, desk_settings: Settings, inbox: Inbox) -> None:  # noqa: F811
    settings = mail_settings(desk_settings, inbox, schedule="monthly")
    mailers = [ReportMailer(any_db, settings, clock=lambda: MONDAY.replace(day=1, month=12))
               for _ in range(2)]
    done = await asyncio.gather(*(m.run_once() for m in mailers))
    assert sorted(p is not None for p in done) == [False, True]
    assert len(inbox.messages) == 1 and "2026-11" in inbox.messages[0]["Subject"]


async def test_a_refused_send_releases_the_claim_and_the_retry_sends(
        any_db: Database, desk_settings: Settings, inbox: Inbox) -> None:  # noqa: F811
    settings = mail_settings(desk_settings, inbox, schedule="daily", format="text")
    mailer = ReportMailer(any_db, settings, clock=lambda: MONDAY)
    inbox.refuse = True
    with pytest.raises(Exception, match="refused by the test"):
        await mailer.run_once()
    async with any_db.connection() as conn:
        assert await mailings.listing(conn) == []
    inbox.refuse = False
    period = await mailer.run_once()
    assert period is not None and period.first.isoformat() == "2026-11-29"
    assert len(inbox.messages) == 1 and inbox.messages[0].get_body(("html",)) is None
    assert await mailer.run_once() is None and len(inbox.messages) == 1


async def test_the_daemon_part_retries_a_failed_send(
        any_db: Database, desk_settings: Settings, inbox: Inbox) -> None:  # noqa: F811
    settings = mail_settings(desk_settings, inbox)
    inbox.refuse = True
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        inbox.refuse = False  # the server is back for the retry
        await asyncio.sleep(0)

    mailer = ReportMailer(any_db, settings, clock=lambda: MONDAY, sleep=sleep)
    task = asyncio.create_task(mailer.run())
    try:
        await asyncio.wait_for(inbox.arrived.wait(), 20)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert waits[0] == 30.0, "the first retry comes after the backoff's first step"
    assert len(inbox.messages) == 1


async def test_a_database_away_when_the_mail_is_sent_does_not_mail_it_twice(
        tmp_path: Path, desk_settings: Settings, inbox: Inbox) -> None:  # noqa: F811
    """The SMTP server took the mail, and the database is locked by another process when
    the mailer records it: it keeps trying to record it (the claim left open would be
    taken again after its lease, and the period mailed a second time)."""
    path = tmp_path / "callhub.db"
    db = Database.connect(f"sqlite+aiosqlite:///{path}", busy_timeout=0.05)
    await migrate.upgrade(db)
    settings = mail_settings(desk_settings, inbox, schedule="daily", format="text")
    other = sqlite3.connect(path, isolation_level=None)
    deliver = inbox.handle_DATA

    async def locked_after_delivery(server: SMTP, session: Session,
                                    envelope: Envelope) -> str:
        answer = await deliver(server, session, envelope)
        other.execute("BEGIN EXCLUSIVE")  # another process holds the database
        return answer

    inbox.handle_DATA = locked_after_delivery  # type: ignore[method-assign]
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 2:
            other.execute("ROLLBACK")  # the database is back for the third try

    now = MONDAY
    mailer = ReportMailer(db, settings, clock=lambda: now, sleep=sleep)
    try:
        period = await mailer.run_once()
        assert period is not None and waits == [30.0, 60.0]
        now = MONDAY + timedelta(minutes=20)  # past the claim's lease
        assert await mailer.run_once() is None
        assert len(inbox.messages) == 1
        async with db.connection() as conn:
            assert [m["sent_at"] is not None for m in await mailings.listing(conn)] == [True]
    finally:
        other.close()
        await db.close()
