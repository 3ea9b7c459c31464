"""The sender loop: claim due messages from an Outbox, send them, record the outcome.

Storage-agnostic: the daemon gives it the table-backed Outbox and calls
`notify()` after a call's transaction queued a message, so it is sent at
once instead of at the next poll. Retryable failures come back after an
exponential backoff (`retry_base_seconds` doubling up to
`retry_max_seconds`, or the gateway's Retry-After when longer); after
`max_attempts`, or once the call is older than `expire_seconds`, the message
fails. A gateway that refuses the site rather than the message (credentials,
balance, account: `unavailable`) holds every message, its tries not counted,
until it takes them or they expire; a message to a number opted out while it
waited fails unsent; the part `sms` of /readyz says so
meanwhile, and every `probe_seconds` the held message due soonest is tried at
once (a probe: the first message the gateway takes again makes every held one
due). Every attempt carries the message's idempotency key.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from callhub.lifecycle import Retries, wait_set
from callhub.logs import mask_number
from callhub.sms.message import SendResult, SmsGateway
from callhub.sms.metrics import SmsMetrics
from callhub.sms.outbox import Outbox, OutboxMessage
from callhub.sms.settings import SmsSettings

log = structlog.get_logger(__name__)


SITE_PROBE_SECONDS = 30.0
"""While the gateway refuses the site, how often a held message is tried at once."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base_seconds: float = 5.0
    max_seconds: float = 300.0
    max_attempts: int = 10
    expire_seconds: float = 86400.0

    @classmethod
    def from_settings(cls, settings: SmsSettings) -> RetryPolicy:
        return cls(settings.retry_base_seconds, settings.retry_max_seconds,
                   settings.max_attempts, settings.expire_seconds)

    def delay(self, attempts: int, retry_after: float | None = None) -> float:
        """Seconds before the next attempt after `attempts` failed ones."""
        # Capped: 2.0 ** 1024 overflows, and a held message may try thousands of times.
        doublings = min(max(attempts - 1, 0), 62)
        backoff = min(self.max_seconds, self.base_seconds * 2.0 ** doublings)
        return max(backoff, retry_after or 0.0)


class SmsWorker:
    """Drains an Outbox through a gateway; `run()` until `stop()`, or `run_once()`."""

    def __init__(self, outbox: Outbox, gateway: SmsGateway, *,
                 retry: RetryPolicy | None = None, metrics: SmsMetrics | None = None,
                 clock: Callable[[], float] = time.time, batch_size: int = 20,
                 poll_seconds: float = 1.0, lease_seconds: float = 60.0,
                 probe_seconds: float = SITE_PROBE_SECONDS) -> None:
        self.outbox = outbox
        self.gateway = gateway
        self.retry = retry or RetryPolicy()
        self.metrics = metrics
        self.clock = clock
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds
        self.lease_seconds = lease_seconds
        self.probe_seconds = probe_seconds
        self._wake = asyncio.Event()
        self._stopping = False
        self.finished = 0  # messages sent, failed or expired by this worker
        self._finished_changed = asyncio.Condition()
        # The gateway refuses this site: its error code and since when (time.time()).
        self.unavailable: tuple[str, float] | None = None
        self._held_for: set[str] = set()  # the errors messages were held for meanwhile
        self._probe_at = 0.0  # while the site is refused: when to try a held message
        self.outbox_retries = Retries()  # the outbox failing poll after poll

    @classmethod
    def from_settings(cls, outbox: Outbox, gateway: SmsGateway, settings: SmsSettings, *,
                      metrics: SmsMetrics | None = None,
                      clock: Callable[[], float] = time.time) -> SmsWorker:
        return cls(outbox, gateway, retry=RetryPolicy.from_settings(settings), metrics=metrics,
                   clock=clock, lease_seconds=settings.lease)

    def notify(self) -> None:
        """Something was queued: look now rather than at the next poll."""
        self._wake.set()

    async def wait_finished(self, count: int) -> None:
        """Until this worker has finished `count` messages (bound it with a timeout)."""
        async with self._finished_changed:
            await self._finished_changed.wait_for(lambda: self.finished >= count)

    async def _finish(self) -> None:
        async with self._finished_changed:
            self.finished += 1
            self._finished_changed.notify_all()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def readiness(self) -> str | None:
        """The part's check: why messages are held, while the gateway refuses the site."""
        if self.unavailable is None:
            return None
        error, since = self.unavailable
        return (f"the SMS gateway refuses this site ({error}) for "
                f"{max(self.clock() - since, 0.0):.0f} s; messages are held until it takes "
                f"them or they expire")

    async def _gateway_state(self, result: SendResult) -> None:
        """Note when the gateway starts or stops refusing the site (a message it judged,
        sent or refused for itself, shows that it takes the site again). When it takes it
        again, the messages held meanwhile are due at once: their backoff (up to
        retry_max_seconds) would send them minutes late, past the 5-minute text."""
        if result.status == "unavailable":
            error = result.error or "unavailable"
            self._held_for.add(error)
            self._probe_at = self.clock() + self.probe_seconds  # this try was one
            if self.unavailable is None or self.unavailable[0] != error:
                log.warning("sms.gateway_unavailable", gateway=self.gateway.name, error=error,
                            hint="the gateway refuses this site (credentials, balance, "
                                 "account): messages are held until it takes them or they "
                                 "expire")
                self.unavailable = (error, self.clock()
                                    if self.unavailable is None else self.unavailable[1])
            if self.metrics:
                self.metrics.gateway_available.set(0)
        elif result.status in ("sent", "permanent") and self.unavailable is not None:
            since = self.unavailable[1]
            # Raises when the outbox is away: the state stays, the next send tries again.
            released = await self.outbox.retry_now(self._held_for, self.clock())
            self.unavailable, self._held_for = None, set()
            if self.metrics:
                self.metrics.gateway_available.set(1)
            log.info("sms.gateway_available", gateway=self.gateway.name,
                     unavailable_seconds=round(self.clock() - since, 1), released=released)
            if released:
                self._wake.set()

    async def run(self) -> None:
        """Send until `stop()`; an outbox error is logged and retried at the next poll."""
        self._stopping = False
        while not self._stopping:
            self._wake.clear()
            try:
                done = await self.run_once()
            except Exception as exc:  # the database is away, as a rule: the next poll
                done = 0
                if self.outbox_retries.failed(type(exc).__name__):
                    log.exception("sms.outbox_failed")  # once per error, not every poll
                else:
                    log.debug("sms.outbox_failed", error=type(exc).__name__,
                              tries=self.outbox_retries.tries)
            else:
                if tries := self.outbox_retries.succeeded():
                    log.info("sms.outbox_back", tries=tries)
            if done >= self.batch_size or self._stopping:
                continue
            await wait_set(self._wake, self.poll_seconds)

    async def run_once(self) -> int:
        """Claim one batch of due messages and attempt each once; how many were claimed."""
        await self._probe()
        messages = await self.outbox.claim(self.clock(), self.batch_size, self.lease_seconds)
        outcomes = await asyncio.gather(*(self._attempt(m) for m in messages),
                                        return_exceptions=True)
        # An outbox that failed to record an outcome leaves that message leased: it is
        # resent with the same key once the lease ends. Every attempt ran to its end first.
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return len(messages)

    async def _probe(self) -> None:
        """While the gateway refuses the site, the held message due soonest is due now
        every `probe_seconds`: held messages back off to retry_max_seconds (300 s by
        default), so a refusal lifted (a balance topped up) went unnoticed that long,
        past the 5-minute text. One message, not all: a refused site is asked once."""
        now = self.clock()
        if self.unavailable is None or now < self._probe_at:
            return
        self._probe_at = now + self.probe_seconds
        if await self.outbox.retry_now(self._held_for, now, limit=1):
            # At debug: an outage is warned of once and its end said once (a weekend
            # without balance was ~2,900 info lines a day of this).
            log.debug("sms.gateway_probe", gateway=self.gateway.name,
                      unavailable_seconds=round(now - self.unavailable[1], 1))

    async def _attempt(self, message: OutboxMessage) -> None:
        now = self.clock()
        if message.opted_out:  # opted out while the message waited (retries, a hold)
            await self.outbox.mark_failed(message.id, now, "opted_out")
            log.info("sms.opted_out", **self._fields(message))
            if self.metrics:
                self.metrics.failed(message.line)
            await self._finish()
            return
        if now - message.call_ended_at > self.retry.expire_seconds:
            await self.outbox.mark_failed(message.id, now, "expired")
            log.info("sms.expired", **self._fields(message))
            if self.metrics:
                self.metrics.failed(message.line, expired=True)
            await self._finish()
            return
        try:
            result = await self.gateway.send(message.outgoing())
        except Exception as exc:  # a gateway bug must not stop the queue
            log.exception("sms.gateway_error", id=message.id)
            result = SendResult("retryable", error=type(exc).__name__)
        await self._record(message, result)

    async def _record(self, message: OutboxMessage, result: SendResult) -> None:
        now = self.clock()
        error = result.error or result.status
        await self._gateway_state(result)
        held = result.status == "unavailable"
        if result.status == "sent":
            await self.outbox.mark_sent(message.id, now, result.provider_id)
            log.info("sms.sent", **self._fields(message), provider_id=result.provider_id)
            if self.metrics:
                self.metrics.sent(message.line, now - message.call_ended_at)
            await self._finish()
        elif held or (result.status == "retryable"
                      and message.attempts < self.retry.max_attempts):
            # A try refused for the site is no try of the message: not counted against
            # max_attempts (a message held through an outage would fail at its first 503
            # after it), and tried again after the longest backoff (the probe finds the
            # site taken again sooner). No later than the message expires (a gateway's
            # Retry-After may say years): claimed then, it is expired, not parked for good.
            wait = (max(self.retry.max_seconds, result.retry_after or 0.0) if held
                    else self.retry.delay(message.attempts, result.retry_after))
            at = min(now + wait, message.call_ended_at + self.retry.expire_seconds)
            await self.outbox.mark_retry(message.id, at, error, counted=not held)
            log.info("sms.retry", **self._fields(message), error=error, retry_in=round(at - now, 3))
            if self.metrics:
                self.metrics.retried(message.line)
        else:
            await self.outbox.mark_failed(message.id, now, error)
            log.warning("sms.failed", **self._fields(message), error=error)
            if self.metrics:
                self.metrics.failed(message.line)
            await self._finish()

    def _fields(self, message: OutboxMessage) -> dict[str, object]:
        """What every sms.* line says about a message; the number masked."""
        return {"id": message.id, "to": mask_number(message.to), "line": message.line,
                "attempt": message.attempts, "gateway": self.gateway.name}
