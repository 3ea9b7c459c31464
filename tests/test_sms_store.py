"""The outbox in the database: queued with the call, the quiet time (across batches and
within one), opt-outs, replays, and the table-backed Outbox the worker drains."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace

import pytest
import sqlalchemy as sa
from sms_fixtures import WebhookServer, call

from callhub.config import Settings
from callhub.sms import SmsSettings, SmsWorker, gateway_from_settings
from callhub.store.db import Database
from callhub.store.save import save_calls
from callhub.store.sms_outbox import TableOutbox, add_optout, list_outbox
from callhub.store.tables import calls, sms_outbox, utc

SMS = {"gateway": "webhook", "url": "http://127.0.0.1:9/send", "quiet_seconds": 3600,
       "rules": [{"line": "front-desk", "after": "both",
                  "template": "我是{agent_name}，手机{agent_mobile}"}]}
CONTACTS = {"PJSIP/1001": ("王芳", "13900139000")}


def with_sms(settings: Settings, **overrides: object) -> Settings:
    return replace(settings, sms=SmsSettings.model_validate({**SMS, **overrides}))


async def outbox_rows(db: Database) -> list[dict[str, object]]:
    async with db.connection() as conn:
        return [dict(r) for r in (await conn.execute(
            sa.select(sms_outbox).order_by(sms_outbox.c.id))).mappings()]


async def save(db: Database, settings: Settings, *records: object) -> None:
    async with db.begin() as conn:
        await save_calls(conn, list(records), settings,  # type: ignore[arg-type]
                         contacts=CONTACTS.get)


@dataclass
class Sender:
    """One queued message's way out, as the daemon wires it: the table outbox, the
    gateway of the settings, the worker; and the webhook at the other end."""

    settings: SmsSettings
    outbox: TableOutbox
    worker: SmsWorker
    server: WebhookServer


@asynccontextmanager
async def one_queued(db: Database, store_settings: Settings, server: WebhookServer,
                     linkedid: str, caller: str, **sms: object) -> AsyncIterator[Sender]:
    """A call stored with its message queued, and the sender to drain it."""
    await server.start()
    try:
        settings = with_sms(store_settings, url=server.url, **sms)
        assert settings.sms is not None
        await save(db, settings, call(linkedid, caller=caller))
        gateway = gateway_from_settings(settings.sms)
        outbox = TableOutbox(db)
        try:
            yield Sender(settings.sms, outbox,
                         SmsWorker.from_settings(outbox, gateway, settings.sms), server)
        finally:
            await gateway.close()
    finally:
        await server.stop()


async def test_a_call_queues_its_sms_in_its_transaction(any_db: Database,
                                                        store_settings: Settings) -> None:
    settings = with_sms(store_settings)
    await save(any_db, settings, call("a.1", caller="+8613912345678"))
    rows = await outbox_rows(any_db)
    assert len(rows) == 1
    row = rows[0]
    assert row["status"] == "queued" and row["to_number"] == "+8613912345678"
    assert row["text"] == "我是王芳，手机13900139000" and row["kind"] == "answered"
    async with any_db.connection() as conn:
        call_id = await conn.scalar(sa.select(calls.c.id).where(calls.c.linkedid == "a.1"))
    assert row["call_id"] == call_id

    # A transaction that fails leaves neither the call nor its SMS.
    try:
        async with any_db.begin() as conn:
            await save_calls(conn, [call("a.2", caller="+8613700000000")], settings,
                             contacts=CONTACTS.get)
            raise RuntimeError("crash before commit")
    except RuntimeError:
        pass
    assert len(await outbox_rows(any_db)) == 1


async def test_quiet_time_opt_outs_and_replays(any_db: Database,
                                               store_settings: Settings) -> None:
    settings = with_sms(store_settings)
    x, y, z = "+8613900000001", "+8613900000002", "+8613900000003"
    # Two calls of one number in one batch: one SMS; replaying the batch queues nothing.
    batch = [call("q.1", caller=x), call("q.2", caller=x), call("q.3", caller=y)]
    await save(any_db, settings, *batch)
    await save(any_db, settings, *batch)
    assert sorted(r["linkedid"] for r in await outbox_rows(any_db)) == ["q.1", "q.3"]
    # A later batch within the quiet time: none to x; a missed call to z is sent.
    await save(any_db, settings, call("q.4", caller=x),
               call("q.5", caller=z, outcome="missed"))
    rows = await outbox_rows(any_db)
    assert [(r["linkedid"], r["kind"]) for r in rows] == [
        ("q.1", "answered"), ("q.3", "answered"), ("q.5", "missed")]
    # Opted out: nothing, whatever the quiet time.
    async with any_db.begin() as conn:
        assert await add_optout(conn, "+8613900000009", "admin", utc(time.time()))
        assert not await add_optout(conn, "+8613900000009", "admin", utc(time.time()))
    await save(any_db, settings, call("q.6", caller="+8613900000009"))
    # A quiet time of 0: a second SMS to x goes.
    await save(any_db, with_sms(store_settings, quiet_seconds=0), call("q.7", caller=x))
    assert [r["linkedid"] for r in await outbox_rows(any_db)] == ["q.1", "q.3", "q.5", "q.7"]
    # Internal, withheld and outbound calls and lines without a rule get nothing.
    await save(any_db, settings, call("n.1", caller="1001"), call("n.2", caller=None),
               call("n.3", caller="+8613900000004", direction="outbound"),
               call("n.4", caller="+8613900000005", line="sales"))
    assert len(await outbox_rows(any_db)) == 4


@pytest.mark.parametrize("retry_after", ["inf", "1e300", "99999999999", "nan", "-5", "soon"])
async def test_a_gateways_retry_after_past_the_expiry_is_held_to_it(
        any_db: Database, store_settings: Settings, retry_after: str) -> None:
    """A gateway's Retry-After is honoured, up to the message's expiry: one of years (or
    infinity, or not a number) neither crashes the sender nor parks the message past
    the time it would expire."""
    server = WebhookServer()
    server.retry_after = retry_after
    server.answer_next(503)
    async with one_queued(any_db, store_settings, server, "r.1", "+8613900000012",
                          retry_base_seconds=1, retry_max_seconds=2) as s:
        before = time.time()
        assert await s.worker.run_once() == 1
        [row] = await outbox_rows(any_db)
        assert row["status"] == "queued" and row["last_error"] == "http_503"
        due = row["next_attempt_at"].timestamp()
        assert before + 1 <= due <= time.time() + s.settings.expire_seconds


async def test_a_gateways_id_longer_than_its_column_is_kept_cut(
        any_db: Database, store_settings: Settings) -> None:
    """A gateway may answer with any id (a site's webhook: a URL, a token): one longer
    than the column's 128 characters is kept cut, the message sent, not refused by the
    database at every try (and sent again after every lease)."""
    server = WebhookServer()
    server.id_format = "https://sms.example.com/messages/" + "x" * 300 + "/{}"
    async with one_queued(any_db, store_settings, server, "i.1", "+8613900000013") as s:
        assert await s.worker.run_once() == 1
    [row] = await outbox_rows(any_db)
    assert row["status"] == "sent"
    assert row["provider_id"] == server.id_format.format(1)[:128]
    assert len(server.received) == 1


async def test_table_outbox_sends_retries_and_leases(any_db: Database,
                                                     store_settings: Settings) -> None:
    server = WebhookServer()
    server.answer_next(503)  # an outage: retried with the same key
    async with one_queued(any_db, store_settings, server, "w.1", "+8613900000011",
                          retry_base_seconds=0.01, retry_max_seconds=0.01) as s:
        outbox, worker = s.outbox, s.worker
        assert await worker.run_once() == 1
        [row] = await outbox_rows(any_db)
        assert row["status"] == "queued" and row["attempts"] == 1 and row["last_error"]
        # A claim leases the message: a second claim within the lease gets nothing.
        later = time.time() + 1
        claimed = await outbox.claim(later, 10, lease_seconds=60)
        assert [m.attempts for m in claimed] == [2]
        assert await outbox.claim(later, 10, lease_seconds=60) == []
        # The lease runs out (the sender died): due again, same key.
        again = await outbox.claim(later + 61, 10, lease_seconds=60)
        assert [m.idempotency_key for m in again] == [claimed[0].idempotency_key]
        await outbox.mark_retry(again[0].id, time.time(), "test")
        assert await worker.run_once() == 1
        [row] = await outbox_rows(any_db)
        assert row["status"] == "sent" and row["provider_id"] and row["sent_at"]
        assert [r.status for r in server.received] == [503, 200]
        assert len({r.body["idempotency_key"] for r in server.received}) == 1
        async with any_db.connection() as conn:
            assert [r["status"] for r in await list_outbox(conn, status="sent")] == ["sent"]
            assert await list_outbox(conn, status="queued") == []


async def test_a_claim_says_the_number_was_opted_out_since_it_was_queued(
        any_db: Database, store_settings: Settings) -> None:
    """The table's claim reads the opt-out list: a message retried after its number was
    opted out fails unsent, and a held try gives its attempt back."""
    server = WebhookServer()
    server.answer_next(503)
    async with one_queued(any_db, store_settings, server, "o.1", "+8613900000041",
                          retry_base_seconds=0.01, retry_max_seconds=0.01) as s:
        assert await s.worker.run_once() == 1
        [row] = await outbox_rows(any_db)
        assert row["status"] == "queued" and row["attempts"] == 1
        claimed = await s.outbox.claim(time.time() + 1, 10, lease_seconds=60)
        assert [(m.attempts, m.opted_out) for m in claimed] == [(2, False)]
        await s.outbox.mark_retry(claimed[0].id, time.time(), "http_401", counted=False)
        [row] = await outbox_rows(any_db)
        assert row["attempts"] == 1
        async with any_db.begin() as conn:
            await add_optout(conn, "+8613900000041", "test", utc(time.time()))
        assert await s.worker.run_once() == 1
        [row] = await outbox_rows(any_db)
        assert row["status"] == "failed" and row["last_error"] == "opted_out"
        assert len(server.received) == 1


async def test_retry_now_makes_only_the_messages_held_for_the_site_due(
        any_db: Database, store_settings: Settings) -> None:
    """The table's `retry_now`: a queued message last refused with one of the errors and
    due later is due now; one refused for another reason, or already due, is left."""
    server = WebhookServer()
    async with one_queued(any_db, store_settings, server, "h.1", "+8613900000021") as s:
        await save(any_db, with_sms(store_settings, url=server.url),
                   call("h.2", caller="+8613900000022"))
        now = time.time()
        first, second = await s.outbox.claim(now, 10, lease_seconds=60)
        await s.outbox.mark_retry(first.id, now + 300, "http_401")
        await s.outbox.mark_retry(second.id, now + 300, "http_503")
        assert await s.outbox.retry_now({"http_401"}, now + 1) == 1
        assert [m.id for m in await s.outbox.claim(now + 1, 10, lease_seconds=60)] == [
            first.id]
        assert await s.outbox.retry_now({"http_401"}, now + 2) == 0  # sending: not queued


async def test_retry_now_with_a_limit_makes_the_held_message_due_soonest_due(
        any_db: Database, store_settings: Settings) -> None:
    """A probe of the site: of the messages held for it, only the one due soonest."""
    server = WebhookServer()
    async with one_queued(any_db, store_settings, server, "p.1", "+8613900000031") as s:
        for n in (2, 3):
            await save(any_db, with_sms(store_settings, url=server.url),
                       call(f"p.{n}", caller=f"+861390000003{n}"))
        now = time.time()
        held = await s.outbox.claim(now, 10, lease_seconds=60)
        for message, later in zip(held, (300, 100, 200), strict=True):
            await s.outbox.mark_retry(message.id, now + later, "http_401")
        assert await s.outbox.retry_now({"http_401"}, now + 1, limit=1) == 1
        assert [m.id for m in await s.outbox.claim(now + 1, 10, lease_seconds=60)] == [
            held[1].id]
        assert await s.outbox.retry_now({"http_401"}, now + 2, limit=1) == 1
        assert [m.id for m in await s.outbox.claim(now + 2, 10, lease_seconds=60)] == [
            held[2].id]
