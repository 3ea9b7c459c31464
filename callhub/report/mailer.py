"""The scheduled report mail: the running daemon mails the period that just ended, once.

`[report] schedule` picks the period (daily: yesterday, weekly: last Monday to
Sunday, monthly: last month); the mail goes at `send_at` local time on the
first day after the period. If the daemon was down then, it mails that
period when it next runs (only the latest period, never a backlog). Each
period is claimed in `report_mailings` before the send (insert-if-absent),
so two daemons over one database, or a restart, never mail it twice; a send
that fails releases the claim and is retried with backoff.

The SMTP exchange is smtplib's, run in a thread (`asyncio.to_thread`): one
mail a day at most does not justify an async SMTP dependency.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, time
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

import structlog

from callhub.config import Settings
from callhub.config.report import ReportSettings
from callhub.lifecycle import describe
from callhub.report.figures import build_report, render
from callhub.report.html import title
from callhub.report.periods import Period, last_ended, period_containing
from callhub.store import mailings
from callhub.store.db import Database

log = structlog.get_logger(__name__)

RETRY_FIRST = 30.0  # seconds after a failed send; doubled each time up to RETRY_MAX
RETRY_MAX = 3600.0
WAKE_MAX = 3600.0  # look at the clock at least hourly (clock changes, DST)

Clock = Callable[[], datetime]
Sleep = Callable[[float], Awaitable[None]]


def due_at(period: Period, report: ReportSettings, settings: Settings) -> datetime:
    """When the period's mail is due: send_at local time on the day after the period."""
    hour, minute = report.send_time
    return datetime.combine(period.end, time(hour, minute), tzinfo=settings.tz)


def due_period(settings: Settings, now: datetime) -> Period | None:
    """The latest period whose mail is due at `now` (None when the schedule is off)."""
    kind = settings.report.period
    if kind is None:
        return None
    period = last_ended(kind, now, settings.tz)
    if now < due_at(period, settings.report, settings):
        period = period.previous()
    return period


def next_due(settings: Settings, now: datetime) -> datetime:
    """When the next period's mail falls due after `now`."""
    kind = settings.report.period
    assert kind is not None
    ended = last_ended(kind, now, settings.tz)
    at = due_at(ended, settings.report, settings)
    if at > now:
        return at
    return due_at(period_containing(kind, now.astimezone(settings.tz).date()),
                  settings.report, settings)


def message(settings: Settings, report: dict[str, Any], lang: str) -> EmailMessage:
    """The mail: the text report, and the HTML page as its alternative when format is html."""
    cfg = settings.report
    msg = EmailMessage()
    msg["Subject"] = title(report, lang)
    msg["From"] = cfg.smtp.from_address
    msg["To"] = ", ".join(cfg.recipients)
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain=(cfg.smtp.from_address or "callhub").split("@")[-1])
    msg.set_content(render(report, "text"))
    if cfg.format == "html":
        msg.add_alternative(render(report, "html", lang), subtype="html")
    return msg


def send_blocking(settings: Settings, msg: EmailMessage) -> None:
    """One SMTP session (run in a thread)."""
    smtp = settings.report.smtp
    assert smtp.host is not None
    context = ssl.create_default_context()
    client: smtplib.SMTP
    if smtp.ssl:
        client = smtplib.SMTP_SSL(smtp.host, smtp.port, timeout=smtp.timeout_seconds,
                                  context=context)
    else:
        client = smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout_seconds)
    with client:
        if smtp.starttls:
            client.starttls(context=context)
        if smtp.username is not None:
            client.login(smtp.username, smtp.password or "")
        client.send_message(msg)


class ReportMailer:
    """Mails each due period once; `passed` is set after every look at the clock."""

    def __init__(self, db: Database, settings: Settings, *, clock: Clock | None = None,
                 sleep: Sleep = asyncio.sleep) -> None:
        self.db = db
        self.settings = settings
        self.clock = clock or (lambda: datetime.now(UTC))
        self.sleep = sleep
        self.passes = 0
        self.passed = asyncio.Event()

    async def run_once(self) -> Period | None:
        """Mail the due period unless it was (or is being) mailed; the period mailed."""
        now = self.clock()
        period = due_period(self.settings, now)
        if period is None:
            return None
        cfg = self.settings.report
        async with self.db.begin() as conn:
            if not await mailings.claim(conn, period.kind, period.first, cfg.recipients,
                                        now=now):
                return None
        try:
            report = await build_report(self.db, self.settings, period.first, period=period.kind)
            msg = message(self.settings, report, cfg.lang)
            await asyncio.to_thread(send_blocking, self.settings, msg)
        except Exception:  # not on cancellation: the thread may still be sending (lease)
            async with self.db.begin() as conn:
                await mailings.release(conn, period.kind, period.first)
            raise
        await self._record_sent(period)
        log.info("report.mailed", period=period.kind, start=period.first.isoformat(),
                 recipients=len(cfg.recipients))
        return period

    async def _record_sent(self, period: Period) -> None:
        """Record the mail sent, however long the database takes to come back: a failure
        raised from here would leave the claim open, and the period would be mailed again
        once its lease ran out."""
        retry = RETRY_FIRST
        while True:
            try:
                async with self.db.begin() as conn:
                    await mailings.mark_sent(conn, period.kind, period.first, self.clock())
                return
            except Exception as exc:
                log.warning("report.record_failed", period=period.kind,
                            start=period.first.isoformat(), error=describe(exc),
                            retry_in=retry)
                await self.sleep(retry)
                retry = min(retry * 2, RETRY_MAX)

    async def run(self) -> None:
        """Forever: mail what is due, then sleep until the next period falls due."""
        retry = RETRY_FIRST
        while True:
            try:
                await self.run_once()
                retry = RETRY_FIRST
                wait = (next_due(self.settings, self.clock()) - self.clock()).total_seconds()
            except Exception as exc:
                log.warning("report.mail_failed", error=describe(exc), retry_in=retry)
                wait, retry = retry, min(retry * 2, RETRY_MAX)
            self.passes += 1
            self.passed.set()
            await self.sleep(max(1.0, min(wait, WAKE_MAX)))
