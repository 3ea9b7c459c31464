"""The generic HTTP webhook gateway: POST JSON to a URL the site runs.

Request: `POST <url>` with `Content-Type: application/json` and the body
`{"to", "text", "call_id", "idempotency_key"}` (UTF-8), plus the header
`Idempotency-Key: <idempotency_key>`. The same key comes on every attempt for
one message, so the receiver drops a repeat (answering 2xx again).

Authentication, either or both:
- `token`: `Authorization: Bearer <token>`;
- `hmac_secret`: `X-Callhub-Timestamp: <unix seconds>` and
  `X-Callhub-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>." + body)>`
  over the exact body bytes. The receiver recomputes it, compares in constant
  time and refuses timestamps more than 5 minutes off (replays).

Response: 2xx is sent; a JSON body's `id` or `message_id` is kept as the
provider's id. 408, 425, 429 and 5xx (and timeouts, refused connections) are
retried, honouring `Retry-After` in seconds; 401, 403, 404, 407 and a redirect
(3xx, not followed) refuse the site (its credentials or URL), not the message:
held until it expires; any other status is permanent.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from callhub.sms.http import SessionHolder, status_class
from callhub.sms.message import OutgoingSms, SendResult, retry_after_seconds

SIGNATURE_HEADER = "X-Callhub-Signature"
TIMESTAMP_HEADER = "X-Callhub-Timestamp"
SIGNATURE_TOLERANCE_SECONDS = 300.0


def webhook_signature(secret: str, timestamp: str, body: bytes) -> str:
    """The X-Callhub-Signature value for a body sent at `timestamp`."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def verify_webhook_signature(secret: str, timestamp: str | None, signature: str | None,
                             body: bytes, now: float,
                             tolerance: float = SIGNATURE_TOLERANCE_SECONDS) -> bool:
    """For receivers written in Python: the signature matches and the timestamp is fresh."""
    if timestamp is None or signature is None:
        return False
    try:
        sent_at = float(timestamp)
    except ValueError:
        return False
    if not math.isfinite(sent_at) or abs(now - sent_at) > tolerance:
        return False  # "nan" is no time: never fresh
    return hmac.compare_digest(webhook_signature(secret, timestamp, body), signature)


class WebhookGateway:
    """POSTs each SMS as JSON to `url`; see the module docstring for the contract."""

    name = "webhook"

    def __init__(self, url: str, *, token: str | None = None, hmac_secret: str | None = None,
                 timeout_seconds: float = 10.0, session: aiohttp.ClientSession | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.url = url
        self.token = token
        self.hmac_secret = hmac_secret
        self.clock = clock
        self.http = SessionHolder(session, timeout_seconds)

    def request(self, sms: OutgoingSms) -> tuple[bytes, dict[str, str]]:
        """The body and headers of the POST for one SMS."""
        body = json.dumps({"to": sms.to, "text": sms.text, "call_id": sms.call_id,
                           "idempotency_key": sms.idempotency_key},
                          ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json; charset=utf-8",
                   "Idempotency-Key": sms.idempotency_key}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if self.hmac_secret:
            timestamp = str(int(self.clock()))
            headers[TIMESTAMP_HEADER] = timestamp
            headers[SIGNATURE_HEADER] = webhook_signature(self.hmac_secret, timestamp, body)
        return body, headers

    async def send(self, sms: OutgoingSms) -> SendResult:
        body, headers = self.request(sms)
        try:
            async with self.http.session().post(self.url, data=body, headers=headers,
                                                timeout=self.http.timeout,
                                                allow_redirects=False) as response:
                text = await response.text(errors="replace")
                status = status_class(response.status)
                if status == "sent":
                    return SendResult("sent", provider_id=_message_id(text))
                return SendResult(status, error=f"http_{response.status}",
                                  retry_after=retry_after_seconds(
                                      response.headers.get("Retry-After")))
        except TimeoutError:
            return SendResult("retryable", error="timeout")
        except aiohttp.ClientError as exc:
            return SendResult("retryable", error=type(exc).__name__)

    async def close(self) -> None:
        await self.http.close()


def _message_id(text: str) -> str | None:
    try:
        data: Any = json.loads(text)
    except ValueError:
        return None
    if isinstance(data, dict):
        for key in ("id", "message_id"):
            if data.get(key) is not None:
                return str(data[key])
    return None
