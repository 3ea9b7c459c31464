"""The sender loop with a real local webhook: one SMS per eligible call, retries with the
same idempotency key, no retry of permanent failures, an outage loses none and sends none
twice."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
import structlog
from prometheus_client import CollectorRegistry
from sms_fixtures import Clock, WebhookServer, call, keys

from callhub.sms.decide import AgentContact, SmsPlan, decide, plan_sms
from callhub.sms.metrics import SmsMetrics
from callhub.sms.outbox import MemoryOutbox, OutboxMessage
from callhub.sms.settings import SmsSettings, sms_settings_from_table
from callhub.sms.webhook import WebhookGateway
from callhub.sms.worker import RetryPolicy, SmsWorker

AGENTS = {"PJSIP/1001": AgentContact(name="王芳", mobile="13900001111")}


def sms_settings(url: str, **overrides: Any) -> SmsSettings:
    table: dict[str, Any] = {
        "gateway": "webhook", "url": url, "token": "bearer-token-1", "quiet_seconds": 86400,
        "org": "阳光物业", "retry_base_seconds": 2, "retry_max_seconds": 60,
        "max_attempts": 4,
        "rules": [{"line": "front-desk", "after": "answered"}],
    }
    table.update(overrides)
    return sms_settings_from_table(table)


class WatchedOutbox(MemoryOutbox):
    """A MemoryOutbox a test can wait on until its messages reach a state."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = asyncio.Condition()

    async def mark_sent(self, message_id: int, at: float, provider_id: str | None) -> None:
        await super().mark_sent(message_id, at, provider_id)
        async with self.changed:
            self.changed.notify_all()

    async def wait_sent(self, ids: list[int]) -> None:
        async with self.changed:
            await self.changed.wait_for(lambda: all(self.status(i) == "sent" for i in ids))


class Setup:
    """Settings, outbox, gateway, metrics and worker on one clock, as the daemon wires them."""

    def __init__(self, server: WebhookServer, clock: Callable[[], float] | None = None,
                 **overrides: Any) -> None:
        self.clock = clock or Clock()
        self.settings = sms_settings(server.url, **overrides)
        self.outbox = WatchedOutbox()
        self.opted_out: set[str] = set()
        self.registry = CollectorRegistry()
        self.metrics = SmsMetrics(self.registry, lines=["front-desk"])
        self.gateway = WebhookGateway(server.url, token="bearer-token-1")
        self.worker = SmsWorker.from_settings(self.outbox, self.gateway, self.settings,
                                              metrics=self.metrics, clock=self.clock)

    def call_ended(self, record: Any) -> int | None:
        """What the store does in the call's transaction: decide, and queue."""
        agent = AGENTS.get(record.agent or "")
        number = plan_sms(record, self.settings, agent, now=self.clock())
        to = number.to if isinstance(number, SmsPlan) else None
        decision = decide(record, self.settings, agent, now=self.clock(),
                          opted_out=to in self.opted_out,
                          last_sms_at=self.outbox.last_sms_at(to) if to else None)
        if not decision.send:
            self.metrics.skipped(decision.line, decision.reason or "")
            return None
        assert decision.plan is not None
        message_id = self.outbox.add(decision.plan, self.clock())
        self.worker.notify()
        return message_id

    def sample(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


async def test_a_running_worker_sends_one_sms_per_eligible_call_within_seconds(
        webhook: WebhookServer) -> None:
    s = Setup(webhook, clock=time.time)   # the real clock: this is the running daemon
    s.opted_out.add("13700000000")
    task = asyncio.create_task(s.worker.run())
    try:
        queued = [s.call_ended(r) for r in (
            call("1.1", caller="13800138000"),               # eligible
            call("1.2", caller="13800138000"),               # same number: quiet time
            call("1.3", caller="1001"),                      # an extension
            call("1.4", caller="anonymous"),                 # withheld
            call("1.5", caller="13700000000"),               # opted out
            call("1.6", caller="13600000000", outcome="missed"),  # rule is answered only
            call("1.7", caller="+86 135 0000 0000"),         # eligible
        )]
        assert [q is not None for q in queued] == [True, False, False, False, False, False,
                                                   True]
        async with asyncio.timeout(5):
            await s.outbox.wait_sent([m for m in queued if m is not None])
    finally:
        s.worker.stop()
        await task
        await s.gateway.close()
    assert sorted(b["to"] for b in webhook.delivered.values()) == ["+8613500000000",
                                                                   "13800138000"]
    assert len(webhook.received) == 2
    for row in s.outbox.rows.values():
        assert row.sent_at is not None and row.sent_at - row.message.call_ended_at < 5
    for body in webhook.delivered.values():
        assert "王芳" in body["text"] and "13900001111" in body["text"]
    assert s.sample("callhub_sms_sent_total", line="front-desk", result="sent") == 2
    assert s.sample("callhub_sms_skipped_total", line="front-desk", reason="quiet_time") == 1
    assert s.sample("callhub_sms_skipped_total", line="front-desk", reason="internal") == 1
    assert s.sample("callhub_sms_skipped_total", line="front-desk", reason="withheld") == 1
    assert s.sample("callhub_sms_skipped_total", line="front-desk", reason="opted_out") == 1
    assert s.sample("callhub_sms_within_deadline_ratio") == 1.0


async def test_5xx_is_retried_with_backoff_and_the_same_key_until_sent(
        webhook: WebhookServer) -> None:
    clock = Clock()
    s = Setup(webhook, clock)
    webhook.answer_next(503, 500)
    message_id = s.call_ended(call("2.1"))
    assert message_id is not None
    assert await s.worker.run_once() == 1
    row = s.outbox.rows[message_id]
    assert row.status == "pending" and row.last_error == "http_503"
    assert row.next_attempt_at == s.clock() + 2          # base 2 s (Retry-After 1 is shorter)
    assert await s.worker.run_once() == 0                # not due yet
    clock.advance(2)
    assert await s.worker.run_once() == 1
    assert row.status == "pending" and row.next_attempt_at == s.clock() + 4   # doubled
    clock.advance(4)
    assert await s.worker.run_once() == 1
    assert s.outbox.status(message_id) == "sent" and row.provider_id == "wh-1"
    assert len(set(keys(webhook.received))) == 1 and len(webhook.received) == 3
    assert [r.status for r in webhook.received] == [503, 500, 200]
    assert len(webhook.delivered) == 1
    assert s.sample("callhub_sms_sent_total", line="front-desk", result="retry") == 2
    assert s.sample("callhub_sms_sent_total", line="front-desk", result="sent") == 1
    assert s.sample("callhub_sms_delay_seconds_count", line="front-desk") == 1


async def test_a_permanent_failure_is_not_retried(webhook: WebhookServer) -> None:
    clock = Clock()
    s = Setup(webhook, clock)
    webhook.answer_next(400)
    message_id = s.call_ended(call("3.1"))
    assert message_id is not None
    assert await s.worker.run_once() == 1
    assert s.outbox.status(message_id) == "failed"
    clock.advance(86400)
    assert await s.worker.run_once() == 0
    assert len(webhook.received) == 1 and webhook.delivered == {}
    assert s.sample("callhub_sms_sent_total", line="front-desk", result="failed") == 1
    assert s.sample("callhub_sms_within_deadline_ratio") == 0.0
    # a failed message does not hold the quiet time: the next call may get one
    assert s.call_ended(call("3.2")) is not None


async def test_retries_stop_after_max_attempts(webhook: WebhookServer) -> None:
    clock = Clock()
    s = Setup(webhook, clock)
    webhook.answer_next(*[503] * 10)
    message_id = s.call_ended(call("4.1"))
    assert message_id is not None
    for _ in range(4):
        clock.advance(60)
        assert await s.worker.run_once() == 1
    assert s.outbox.status(message_id) == "failed"
    assert len(webhook.received) == 4
    clock.advance(3600)
    assert await s.worker.run_once() == 0


async def test_a_gateway_refusing_the_site_holds_messages_past_max_attempts_until_it_takes_them(
        webhook: WebhookServer) -> None:
    """A token the gateway refuses (rotated at the provider, a used-up balance) refuses
    every message alike: each is held, past max_attempts, and sent once the site is taken
    again; meanwhile the part's check says why and the gauge is 0. A gateway that refuses
    only a message (a bad number) still fails it at once."""
    clock = Clock()
    s = Setup(webhook, clock, expire_seconds=7200)
    webhook.token = "the-token-after-rotation"  # callhub still sends bearer-token-1
    ids = [s.call_ended(call(f"6.{i}", caller=f"1380013801{i}")) for i in range(3)]
    attempts = s.settings.max_attempts + 3
    with structlog.testing.capture_logs() as logs:
        for _ in range(attempts):
            assert await s.worker.run_once() == 3
            clock.advance(s.settings.retry_max_seconds)
        assert all(s.outbox.status(i) == "pending" for i in ids if i is not None)
        assert len(webhook.received) == 3 * attempts and webhook.delivered == {}
        reason = await s.worker.readiness()
        assert reason is not None and "http_401" in reason and "held" in reason
        assert s.sample("callhub_sms_gateway_available") == 0

        webhook.token = "bearer-token-1"  # the site's token is right again
        assert await s.worker.run_once() == 3
        assert all(s.outbox.status(i) == "sent" for i in ids if i is not None)
        assert await s.worker.readiness() is None
        assert s.sample("callhub_sms_gateway_available") == 1
        assert len(webhook.delivered) == 3

        webhook.answer_next(400)  # refused for the message itself: failed, not held
        refused = s.call_ended(call("6.9", caller="13800138099"))
        assert await s.worker.run_once() == 1 and s.outbox.status(refused) == "failed"
    said = [e["event"] for e in logs if e["event"].startswith("sms.gateway_")]
    assert said == ["sms.gateway_unavailable", "sms.gateway_available"]
    await s.gateway.close()


async def test_a_message_held_through_an_outage_keeps_its_retries_for_after_it(
        webhook: WebhookServer) -> None:
    """Tries the site was refused are not the message's: held past max_attempts, the
    first transient error once the site is taken again (a 503) is retried, not final."""
    clock = Clock()
    s = Setup(webhook, clock, expire_seconds=7200)
    webhook.token = "the-token-after-rotation"  # refused for the site
    held = s.call_ended(call("9.1", caller="13800138091"))
    assert held is not None
    for _ in range(s.settings.max_attempts + 2):
        assert await s.worker.run_once() == 1
        clock.now = s.outbox.rows[held].next_attempt_at
    assert s.outbox.status(held) == "pending"

    webhook.token = "bearer-token-1"
    webhook.answer_next(503)  # the gateway's first answer after the outage
    assert await s.worker.run_once() == 1
    assert s.outbox.status(held) == "pending"
    clock.now = s.outbox.rows[held].next_attempt_at
    assert await s.worker.run_once() == 1
    assert s.outbox.status(held) == "sent" and len(webhook.delivered) == 1
    await s.gateway.close()


async def test_a_number_opted_out_while_its_message_waits_gets_no_sms(
        webhook: WebhookServer) -> None:
    """The opt-out is checked again at every claim, not only when the message is
    queued: a caller who opts out while the message is retried gets nothing."""
    clock = Clock()
    s = Setup(webhook, clock)
    message_id = s.call_ended(call("9.2", caller="13800138092"))
    assert message_id is not None
    webhook.answer_next(503)
    assert await s.worker.run_once() == 1 and s.outbox.status(message_id) == "pending"
    s.outbox.optouts.add("13800138092")
    clock.now = s.outbox.rows[message_id].next_attempt_at
    assert await s.worker.run_once() == 1
    assert s.outbox.status(message_id) == "failed"
    assert s.outbox.rows[message_id].last_error == "opted_out"
    assert len(webhook.received) == 1 and webhook.delivered == {}
    assert s.sample("callhub_sms_sent_total", line="front-desk", result="failed") == 1
    await s.gateway.close()


async def test_messages_held_for_the_site_go_at_once_when_it_is_taken_again(
        webhook: WebhookServer) -> None:
    """A message held while the gateway refused the site waits its backoff (up to
    retry_max_seconds), so once the site is taken again it went that much later, past
    the 5-minute text. The first message the gateway takes makes every held one due."""
    clock = Clock()
    s = Setup(webhook, clock, expire_seconds=7200)
    webhook.token = "the-token-after-rotation"  # refused for the site
    held = s.call_ended(call("7.1", caller="13800138071"))
    assert held is not None
    for _ in range(4):
        assert await s.worker.run_once() == 1
        clock.now = s.outbox.rows[held].next_attempt_at  # due again after its backoff
    assert await s.worker.run_once() == 1  # a fifth refusal: next try 32 s away
    assert s.outbox.rows[held].next_attempt_at - clock() >= 30

    webhook.token = "bearer-token-1"  # the site is taken again
    new = s.call_ended(call("7.2", caller="13800138072"))
    with structlog.testing.capture_logs() as logs:
        assert await s.worker.run_once() == 1  # only the new one is due
        assert s.outbox.status(new) == "sent"
        assert await s.worker.run_once() == 1  # the held one, without waiting out 32 s
    assert s.outbox.status(held) == "sent"
    available = [e for e in logs if e["event"] == "sms.gateway_available"]
    assert [e["released"] for e in available] == [1]
    await s.gateway.close()


async def test_a_refusal_lifted_is_found_by_a_probe_of_one_held_message(
        webhook: WebhookServer) -> None:
    """With no new message, the messages held for the site waited out their own backoff
    (minutes) after the gateway took the site again. Every `probe_seconds` while it
    refuses, the held message due soonest is tried at once: one request, not one per
    message; when the gateway takes it, the others are due at once."""
    clock = Clock()
    s = Setup(webhook, clock, expire_seconds=7200, retry_max_seconds=300)
    webhook.token = "the-token-after-rotation"  # refused for the site
    held = [s.call_ended(call(f"8.{i}", caller=f"1380013808{i}")) for i in range(3)]
    assert all(h is not None for h in held)
    rows = [s.outbox.rows[h] for h in held if h is not None]
    for _ in range(6):
        assert await s.worker.run_once() == 3
        clock.now = min(r.next_attempt_at for r in rows)
    assert await s.worker.run_once() == 3  # a seventh refusal: backed off for minutes
    due_by_backoff = min(r.next_attempt_at for r in rows)
    assert due_by_backoff - clock() > 3 * s.worker.probe_seconds

    clock.advance(s.worker.probe_seconds - 1)
    assert await s.worker.run_once() == 0  # no probe before its time
    sent = len(webhook.received)
    clock.advance(1)
    with structlog.testing.capture_logs() as logs:
        assert await s.worker.run_once() == 1  # still refused: one message asked
    assert len(webhook.received) == sent + 1
    assert [(e["event"], e["log_level"]) for e in logs if e["event"].startswith("sms.gateway")
            ] == [("sms.gateway_probe", "debug")]  # the outage was warned of once already

    webhook.token = "bearer-token-1"  # the site is taken again
    clock.advance(s.worker.probe_seconds)
    assert await s.worker.run_once() == 1  # the probe, taken
    assert await s.worker.run_once() == 2  # the others, without waiting out their backoff
    assert [r.status for r in rows] == ["sent"] * 3 and clock() < due_by_backoff
    assert len(webhook.delivered) == 3
    await s.gateway.close()


async def test_a_site_refused_until_its_messages_expire_fails_them_as_expired(
        webhook: WebhookServer) -> None:
    """Held is not forever: a message the gateway never took expires with its call."""
    clock = Clock()
    s = Setup(webhook, clock, expire_seconds=600)
    webhook.token = "the-token-after-rotation"
    message_id = s.call_ended(call("7.2", ended_at=clock.now))
    assert message_id is not None
    tries = 0
    while s.outbox.status(message_id) == "pending":
        tries += await s.worker.run_once()
        clock.advance(s.settings.retry_max_seconds)
    assert s.outbox.status(message_id) == "failed"
    assert s.outbox.rows[message_id].last_error == "expired"
    assert tries > s.settings.max_attempts and webhook.delivered == {}
    assert s.sample("callhub_sms_sent_total", line="front-desk", result="expired") == 1
    await s.gateway.close()


async def test_a_gateway_outage_then_recovery_delivers_every_message_exactly_once(
        webhook: WebhookServer) -> None:
    clock = Clock()
    s = Setup(webhook, clock)
    ids = [s.call_ended(call(f"5.{i}", caller=f"1380013800{i}")) for i in range(5)]
    await webhook.stop()                                  # the gateway is down
    assert await s.worker.run_once() == 5
    assert all(s.outbox.rows[i].status == "pending" for i in ids if i is not None)
    assert webhook.received == []
    clock.advance(2)
    assert await s.worker.run_once() == 5                 # still down: retried again
    await webhook.start()                                 # back, on the same port
    clock.advance(4)
    assert await s.worker.run_once() == 5
    assert all(s.outbox.rows[i].status == "sent" for i in ids if i is not None)
    clock.advance(3600)
    assert await s.worker.run_once() == 0
    assert len(webhook.received) == 5 and len(webhook.delivered) == 5
    assert sorted(keys(webhook.received)) == sorted(
        s.outbox.rows[i].message.idempotency_key for i in ids if i is not None)
    await s.gateway.close()


class CrashAfterSend(MemoryOutbox):
    """An outbox whose process dies right after the gateway accepted a message."""

    async def mark_sent(self, message_id: int, at: float, provider_id: str | None) -> None:
        raise ConnectionError("the process died before recording the send")


async def test_a_crash_between_send_and_record_resends_with_the_same_key_once_delivered(
        webhook: WebhookServer) -> None:
    clock = Clock()
    s = Setup(webhook, clock)
    message_id = s.call_ended(call("6.1"))
    assert message_id is not None
    crashed = CrashAfterSend()
    crashed.rows, crashed._ids = s.outbox.rows, s.outbox._ids
    first = SmsWorker.from_settings(crashed, s.gateway, s.settings, clock=s.clock)
    with pytest.raises(ConnectionError):
        await first.run_once()
    assert s.outbox.status(message_id) == "pending"      # claimed, never marked
    assert await s.worker.run_once() == 0                 # the lease still holds
    clock.advance(s.worker.lease_seconds)
    assert await s.worker.run_once() == 1                 # the next worker resends
    assert s.outbox.status(message_id) == "sent"
    assert keys(webhook.received) == [s.outbox.rows[message_id].message.idempotency_key] * 2
    assert len(webhook.delivered) == 1                   # the gateway dropped the repeat
    await s.gateway.close()


async def test_a_message_for_a_call_older_than_expire_seconds_fails_unsent(
        webhook: WebhookServer) -> None:
    clock = Clock()
    s = Setup(webhook, clock, expire_seconds=600)
    message_id = s.call_ended(call("7.1", ended_at=clock.now))
    assert message_id is not None
    await webhook.stop()
    assert await s.worker.run_once() == 1
    await webhook.start()
    clock.advance(601)
    assert await s.worker.run_once() == 1
    assert s.outbox.status(message_id) == "failed"
    assert s.outbox.rows[message_id].last_error == "expired"
    assert webhook.received == []
    assert s.sample("callhub_sms_sent_total", line="front-desk", result="expired") == 1
    await s.gateway.close()


def test_backoff_doubles_to_its_cap_and_honours_a_longer_retry_after() -> None:
    policy = RetryPolicy(base_seconds=5, max_seconds=60, max_attempts=10)
    assert [policy.delay(n) for n in range(1, 7)] == [5, 10, 20, 40, 60, 60]
    assert policy.delay(1, retry_after=30) == 30
    assert policy.delay(4, retry_after=30) == 40
    # A message held for a day at a short cap has tried thousands of times: still the cap.
    assert policy.delay(2000) == policy.delay(10**9) == 60


async def test_the_memory_outbox_queues_one_message_per_idempotency_key() -> None:
    outbox = MemoryOutbox()
    settings = sms_settings("http://127.0.0.1:9/send")
    record = call("8.1")
    plan = plan_sms(record, settings, AGENTS["PJSIP/1001"], now=record.ended_at)
    assert isinstance(plan, SmsPlan)
    assert outbox.add(plan, record.ended_at) == 1
    assert outbox.add(plan, record.ended_at) is None
    claimed: list[OutboxMessage] = await outbox.claim(record.ended_at, 10, 60)
    assert [m.attempts for m in claimed] == [1]
    assert await outbox.claim(record.ended_at, 10, 60) == []


class FlakyClaims(WatchedOutbox):
    """An outbox whose first claims fail, each with its error (the database is away)."""

    def __init__(self, *failures: Exception) -> None:
        super().__init__()
        self.failures = list(failures) or [ConnectionError("database away")]
        self.claims = 0

    async def claim(self, now: float, limit: int, lease_seconds: float) -> list[OutboxMessage]:
        self.claims += 1
        if self.claims <= len(self.failures):
            raise self.failures[self.claims - 1]
        return await super().claim(now, limit, lease_seconds)


async def send_through(webhook: WebhookServer, flaky: FlakyClaims, linkedid: str,
                       poll_seconds: float) -> Setup:
    """Run a worker on `flaky` until one call's message is sent (within 5 s)."""
    s = Setup(webhook, clock=time.time)
    s.outbox = flaky
    s.worker = SmsWorker(flaky, s.gateway, clock=time.time, poll_seconds=poll_seconds)
    message_id = s.call_ended(call(linkedid))
    assert message_id is not None
    task = asyncio.create_task(s.worker.run())
    try:
        async with asyncio.timeout(5):
            await flaky.wait_sent([message_id])
    finally:
        s.worker.stop()
        await task
        await s.gateway.close()
    return s


async def test_a_running_worker_outlives_an_outbox_error(webhook: WebhookServer) -> None:
    flaky = FlakyClaims()
    await send_through(webhook, flaky, "9.1", poll_seconds=0.05)
    assert flaky.claims >= 2 and len(webhook.delivered) == 1


async def test_an_outbox_failing_poll_after_poll_is_logged_once_per_error(
        webhook: WebhookServer) -> None:
    """The worker polls every second: an outbox error at each poll of an outage was an
    error with a traceback a second. Now one per error, then debug; its end said."""
    flaky = FlakyClaims(*[ConnectionRefusedError("refused")] * 5, TimeoutError("slow"))
    with structlog.testing.capture_logs() as logs:
        s = await send_through(webhook, flaky, "9.2", poll_seconds=0.01)
    failed = [e for e in logs if e["event"] == "sms.outbox_failed"]
    said = [e for e in failed if e["log_level"] == "error"]
    assert len(said) == 2 and len(failed) in (2, 6)  # the repeats at debug, where captured
    back, = [e for e in logs if e["event"] == "sms.outbox_back"]
    assert back["log_level"] == "info" and back["tries"] == 6
    assert s.worker.outbox_retries.tries == 0 and len(webhook.delivered) == 1
