"""The outbox the worker drains: a protocol the store implements, and an in-memory one.

A message moves pending -> sent | failed. `claim` hands out due pending
messages under a lease: a worker that dies mid-send leaves them claimed
until the lease runs out, then they are due again and are resent with the
same idempotency key (the gateway drops the repeat). The table-backed outbox
should keep `idempotency_key` UNIQUE, so saving one call twice queues one SMS.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

from callhub.sms.decide import SmsPlan
from callhub.sms.message import OutgoingSms

OutboxStatus = Literal["pending", "sent", "failed"]


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """One queued SMS. `attempts` counts this claim's attempt too."""

    id: int
    to: str
    text: str
    call_id: str
    idempotency_key: str
    kind: str
    line: str | None
    call_ended_at: float
    created_at: float
    params: Mapping[str, str] = field(default_factory=dict)
    template_code: str | None = None
    attempts: int = 0
    opted_out: bool = False  # the number was opted out since the message was queued

    def outgoing(self) -> OutgoingSms:
        return OutgoingSms(to=self.to, text=self.text, call_id=self.call_id,
                           idempotency_key=self.idempotency_key, kind=self.kind,
                           params=self.params, template_code=self.template_code)


class Outbox(Protocol):
    """Durable storage of messages to send; every method is one short transaction."""

    async def claim(self, now: float, limit: int, lease_seconds: float) -> list[OutboxMessage]:
        """Up to `limit` pending messages due at `now` (next attempt reached, no live
        lease), oldest first; leases them until now + lease_seconds and counts an attempt.
        A message to a number opted out since it was queued comes `opted_out`."""
        ...

    async def mark_sent(self, message_id: int, at: float, provider_id: str | None) -> None: ...

    async def mark_retry(self, message_id: int, at: float, error: str, *,
                         counted: bool = True) -> None:
        """Back to pending, due again at `at`; the lease ends. Not `counted`: the claim's
        attempt is taken back (the gateway refused the site, not this message)."""
        ...

    async def mark_failed(self, message_id: int, at: float, error: str) -> None: ...

    async def retry_now(self, errors: Collection[str], now: float,
                        limit: int | None = None) -> int:
        """Pending messages last refused with one of `errors` (the site refused, not the
        message) are due at `now`, not at their backoff's time; how many. `limit`: only
        that many, those due soonest (a probe of the site)."""
        ...


@dataclass(slots=True)
class OutboxRow:
    """What the in-memory outbox keeps per message (the table's columns, roughly)."""

    message: OutboxMessage
    status: OutboxStatus = "pending"
    next_attempt_at: float = 0.0
    claimed_until: float | None = None
    sent_at: float | None = None
    provider_id: str | None = None
    last_error: str | None = None


class MemoryOutbox:
    """An Outbox in a dict, for tests and for running without a database."""

    def __init__(self) -> None:
        self.rows: dict[int, OutboxRow] = {}
        self.optouts: set[str] = set()  # numbers opted out (the table's sms_optouts)
        self._ids = itertools.count(1)

    def add(self, plan: SmsPlan, now: float) -> int | None:
        """Queue a plan; None when its idempotency key is already queued."""
        if any(r.message.idempotency_key == plan.idempotency_key for r in self.rows.values()):
            return None
        message_id = next(self._ids)
        self.rows[message_id] = OutboxRow(
            OutboxMessage(id=message_id, to=plan.to, text=plan.text, call_id=plan.call_id,
                          idempotency_key=plan.idempotency_key, kind=plan.kind,
                          line=plan.line, call_ended_at=plan.call_ended_at, created_at=now,
                          params=dict(plan.params), template_code=plan.template_code),
            next_attempt_at=now)
        return message_id

    def last_sms_at(self, number: str) -> float | None:
        """When the last non-failed message to `number` was queued."""
        times = [r.message.created_at for r in self.rows.values()
                 if r.message.to == number and r.status != "failed"]
        return max(times, default=None)

    def status(self, message_id: int) -> OutboxStatus:
        return self.rows[message_id].status

    async def claim(self, now: float, limit: int, lease_seconds: float) -> list[OutboxMessage]:
        due = sorted(
            (r for r in self.rows.values()
             if r.status == "pending" and r.next_attempt_at <= now
             and (r.claimed_until is None or r.claimed_until <= now)),
            key=lambda r: (r.next_attempt_at, r.message.id))[:limit]
        claimed = []
        for row in due:
            row.claimed_until = now + lease_seconds
            row.message = replace(row.message, attempts=row.message.attempts + 1)
            claimed.append(replace(row.message, opted_out=row.message.to in self.optouts))
        return claimed

    async def mark_sent(self, message_id: int, at: float, provider_id: str | None) -> None:
        row = self.rows[message_id]
        row.status, row.sent_at, row.provider_id, row.claimed_until = "sent", at, provider_id, None

    async def mark_retry(self, message_id: int, at: float, error: str, *,
                         counted: bool = True) -> None:
        row = self.rows[message_id]
        row.next_attempt_at, row.last_error, row.claimed_until = at, error, None
        if not counted:
            row.message = replace(row.message, attempts=row.message.attempts - 1)

    async def mark_failed(self, message_id: int, at: float, error: str) -> None:
        row = self.rows[message_id]
        row.status, row.last_error, row.claimed_until = "failed", error, None

    async def retry_now(self, errors: Collection[str], now: float,
                        limit: int | None = None) -> int:
        due = sorted((r for r in self.rows.values() if r.status == "pending"
                      and r.last_error in errors and r.next_attempt_at > now),
                     key=lambda r: (r.next_attempt_at, r.message.id))[:limit]
        for row in due:
            row.next_attempt_at = now
        return len(due)
