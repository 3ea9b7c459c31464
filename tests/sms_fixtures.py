"""Real local HTTP servers standing in for SMS gateways, and call records to send after.

`WebhookServer` checks the bearer token or the HMAC signature the way the
webhook contract documents it, and drops a repeated idempotency key the way
a receiver must. `AliyunServer` checks the RPC signature (version 1.0,
HMAC-SHA1) the way Aliyun's SMS documentation describes it, recomputed
here from the received form independently of callhub.sms.aliyun, refuses a
reused SignatureNonce and answers like Dysmsapi SendSms. Both record what
they received and can be told what to answer next, or be stopped and
started again on the same port (an outage).
"""

from __future__ import annotations

import asyncio
import base64
import calendar
import hashlib
import hmac
import itertools
import json
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote_plus

import pytest
from aiohttp import web

from callhub.records import CallRecord


def call(linkedid: str = "1700000000.1", *, caller: str | None = "13800138000",
         outcome: str = "answered", line: str | None = "front-desk",
         direction: str = "inbound", ended_at: float | None = None,
         agent_name: str | None = "王芳", short_abandon: bool = False,
         pbx: str = "pbx1") -> CallRecord:
    """A finished call as the correlator emits it."""
    end = time.time() if ended_at is None else ended_at
    answered = outcome == "answered"
    return CallRecord(
        pbx=pbx, linkedid=linkedid, direction=direction, line=line,  # type: ignore[arg-type]
        called_number="4008001000", caller_number=caller, caller_name=None,
        arrived_at=end - 60, ring_started_at=end - 55,
        answered_at=end - 40 if answered else None, ended_at=end,
        ring_seconds=15.0 if answered else 55.0, rings=3, wait_seconds=20.0,
        talk_seconds=40.0 if answered else 0.0, hold_seconds=0.0,
        outcome=outcome, reason=None if answered else "not_answered",  # type: ignore[arg-type]
        voicemail=False, short_abandon=short_abandon,
        agent="PJSIP/1001" if answered else None,
        agent_name=agent_name if answered else None,
        hangup_by="external", hangup_cause=16, queue=None,
    )


class _Server:
    """An aiohttp app on a loopback port that can go away and come back on that port."""

    def __init__(self) -> None:
        self.port = 0
        self.runner: web.AppRunner | None = None
        self.requests = 0
        self.arrived = asyncio.Condition()
        self.replies: list[Any] = []

    def app(self) -> web.Application:
        raise NotImplementedError

    async def start(self) -> None:
        self.runner = web.AppRunner(self.app())
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def answer_next(self, *replies: Any) -> None:
        """Scripted answers for the next requests, in order; then the normal one."""
        self.replies.extend(replies)

    async def _note_request(self) -> None:
        async with self.arrived:
            self.requests += 1
            self.arrived.notify_all()

    async def wait_for_requests(self, count: int) -> None:
        """Until `count` requests have arrived (callers bound it with asyncio.timeout)."""
        async with self.arrived:
            await self.arrived.wait_for(lambda: self.requests >= count)


@dataclass
class WebhookRequest:
    body: dict[str, Any]
    headers: dict[str, str]
    status: int


class WebhookServer(_Server):
    """The site's SMS webhook: POST /send with JSON, bearer token and/or HMAC."""

    def __init__(self, token: str | None = None, hmac_secret: str | None = None) -> None:
        super().__init__()
        self.token = token
        self.hmac_secret = hmac_secret
        self.received: list[WebhookRequest] = []
        self.delivered: dict[str, dict[str, Any]] = {}
        self.ids = itertools.count(1)
        self.retry_after = "1"  # the Retry-After header of a 503
        self.id_format = "wh-{}"  # the ids it answers with

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/send"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/send", self.handle)
        return app

    def _authorised(self, request: web.Request, raw: bytes) -> bool:
        if self.token is not None and request.headers.get("Authorization") != (
                f"Bearer {self.token}"):
            return False
        if self.hmac_secret is not None:
            stamp = request.headers.get("X-Callhub-Timestamp", "")
            given = request.headers.get("X-Callhub-Signature", "")
            expected = "v1=" + hmac.new(self.hmac_secret.encode(),
                                        f"{stamp}.".encode() + raw, hashlib.sha256).hexdigest()
            if not stamp.isdigit() or abs(time.time() - int(stamp)) > 300:
                return False
            if not hmac.compare_digest(given, expected):
                return False
        return True

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        body = json.loads(raw)
        status, reply = 200, {}
        if not self._authorised(request, raw):
            status = 401
        elif self.replies:
            status = self.replies.pop(0)
        elif body["idempotency_key"] in self.delivered:
            reply = {"id": self.delivered[body["idempotency_key"]]["id"], "duplicate": True}
        else:
            reply = {"id": self.id_format.format(next(self.ids))}
            self.delivered[body["idempotency_key"]] = {**body, "id": reply["id"]}
        self.received.append(WebhookRequest(body, dict(request.headers), status))
        await self._note_request()
        headers = {"Retry-After": self.retry_after} if status == 503 else {}
        return web.json_response(reply if status == 200 else {"error": status},
                                 status=status, headers=headers)


def aliyun_percent_encode(value: str) -> str:
    """As the documentation words it: URL-encode as a form (UTF-8), then '+' -> %20,
    '*' -> %2A and %7E -> '~'."""
    return quote_plus(value, encoding="utf-8").replace("+", "%20").replace(
        "*", "%2A").replace("%7E", "~")


def aliyun_expected_signature(secret: str, method: str, params: dict[str, str]) -> str:
    canonical = "&".join(f"{aliyun_percent_encode(k)}={aliyun_percent_encode(v)}"
                         for k, v in sorted(params.items()))
    to_sign = (method + "&" + aliyun_percent_encode("/") + "&"
               + aliyun_percent_encode(canonical))
    digest = hmac.new((secret + "&").encode(), to_sign.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


class AliyunServer(_Server):
    """Dysmsapi SendSms at POST /: checks the request and its signature, records it."""

    def __init__(self, access_key_id: str = "LTAItestkeyid",
                 access_key_secret: str = "test-secret-不要外传") -> None:
        super().__init__()
        self.access_key_id = access_key_id
        self.access_key_secret = access_key_secret
        self.received: list[dict[str, str]] = []
        self.refused: list[str] = []
        self.nonces: set[str] = set()
        self.ids = itertools.count(1)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/", self.handle)
        return app

    def _check(self, method: str, params: dict[str, str]) -> str | None:
        """The Aliyun error code for a bad request, else None."""
        for name in ("AccessKeyId", "Action", "Format", "SignatureMethod", "SignatureNonce",
                     "SignatureVersion", "Timestamp", "Version", "Signature",
                     "PhoneNumbers", "SignName", "TemplateCode"):
            if not params.get(name):
                return "MissingParameter"
        if params["AccessKeyId"] != self.access_key_id:
            return "InvalidAccessKeyId.NotFound"
        if (params["Action"], params["Version"], params["SignatureMethod"],
                params["SignatureVersion"]) != ("SendSms", "2017-05-25", "HMAC-SHA1", "1.0"):
            return "InvalidParameter"
        signature = params.pop("Signature")
        expected = aliyun_expected_signature(self.access_key_secret, method, params)
        if not hmac.compare_digest(signature, expected):
            return "SignatureDoesNotMatch"
        stamp = calendar.timegm(time.strptime(params["Timestamp"], "%Y-%m-%dT%H:%M:%SZ"))
        if abs(stamp - time.time()) > 900:
            return "InvalidTimeStamp.Expired"
        if params["SignatureNonce"] in self.nonces:
            return "SignatureNonceUsed"
        self.nonces.add(params["SignatureNonce"])
        return None

    async def handle(self, request: web.Request) -> web.Response:
        params = dict(parse_qsl(request.query_string, keep_blank_values=True))
        if request.method == "POST":
            params.update(parse_qsl((await request.read()).decode(), keep_blank_values=True))
        error = self._check(request.method, params)
        await self._note_request()
        if error is not None:
            self.refused.append(error)
            return web.json_response({"Code": error, "Message": error, "RequestId": "r"},
                                     status=400)
        self.received.append(params)
        if self.replies:
            status, code = self.replies.pop(0)
            return web.json_response({"Code": code, "Message": code, "RequestId": "r"},
                                     status=status)
        return web.json_response({"Code": "OK", "Message": "OK", "RequestId": "r",
                                  "BizId": f"biz-{next(self.ids)}"})


class Clock:
    """A clock the test moves."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def keys(requests: Iterable[WebhookRequest]) -> list[str]:
    return [r.body["idempotency_key"] for r in requests]


@pytest.fixture
async def webhook() -> AsyncIterator[WebhookServer]:
    """A webhook gateway taking a bearer token (tests of signatures bring their own)."""
    server = WebhookServer(token="bearer-token-1")
    await server.start()
    yield server
    await server.stop()
