"""What the worker hands a gateway, and what a gateway answers."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

SendStatus = Literal["sent", "retryable", "unavailable", "permanent"]


@dataclass(frozen=True, slots=True)
class OutgoingSms:
    """One SMS as a gateway sends it; `idempotency_key` is the same on every attempt."""

    to: str
    text: str
    call_id: str
    idempotency_key: str
    kind: str = "answered"
    params: Mapping[str, str] = field(default_factory=dict)
    template_code: str | None = None


@dataclass(frozen=True, slots=True)
class SendResult:
    """sent (with the provider's message id), retryable (5xx, timeouts, throttling),
    unavailable (the gateway refuses this site, not the message: credentials refused, a
    balance used up, the service suspended; every message would fail alike, so it is held
    until it expires) or permanent (an invalid number, a bad template). `error` is a short
    code, never personal data."""

    status: SendStatus
    provider_id: str | None = None
    error: str | None = None
    retry_after: float | None = None

    @property
    def sent(self) -> bool:
        return self.status == "sent"


class SmsGateway(Protocol):
    """Something that sends one SMS and classifies the outcome; it never raises for
    network or provider errors (they become `retryable`, `unavailable` or `permanent`)."""

    name: str

    async def send(self, sms: OutgoingSms) -> SendResult: ...

    async def close(self) -> None: ...


def retry_after_seconds(value: str | None) -> float | None:
    """An HTTP Retry-After given in seconds (the date form is ignored, and so is one that
    is negative, not a number or infinite)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None
