"""The webhook and Aliyun gateways against real local servers that check the
signatures the way each contract documents them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from sms_fixtures import AliyunServer, WebhookServer

from callhub.sms.aliyun import AliyunGateway, classify
from callhub.sms.gateways import gateway_from_settings
from callhub.sms.message import OutgoingSms
from callhub.sms.settings import sms_settings_from_table
from callhub.sms.webhook import WebhookGateway, verify_webhook_signature, webhook_signature

SMS = OutgoingSms(to="+8613800138000",
                  text="您好！我是王芳，感谢您的来电。如有需要请拨打13900001111。",
                  call_id="pbx1:1700000000.1", idempotency_key="callhub-abc",
                  params={"agent_name": "王芳", "agent_mobile": "13900001111",
                          "line": "front-desk", "org": "阳光 & 物业*~"},
                  template_code="SMS_1")


@pytest.fixture
async def webhook() -> AsyncIterator[WebhookServer]:
    server = WebhookServer(token="bearer-token-1", hmac_secret="hmac-secret-1")
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def aliyun() -> AsyncIterator[AliyunServer]:
    server = AliyunServer()
    await server.start()
    yield server
    await server.stop()


async def test_webhook_posts_the_json_with_bearer_and_hmac(webhook: WebhookServer) -> None:
    gateway = WebhookGateway(webhook.url, token="bearer-token-1", hmac_secret="hmac-secret-1")
    try:
        result = await gateway.send(SMS)
    finally:
        await gateway.close()
    assert result.status == "sent" and result.provider_id == "wh-1"
    (request,) = webhook.received
    assert request.status == 200
    assert request.body == {"to": SMS.to, "text": SMS.text, "call_id": SMS.call_id,
                            "idempotency_key": SMS.idempotency_key}
    assert request.headers["Idempotency-Key"] == SMS.idempotency_key


@pytest.mark.parametrize(("token", "secret"), [
    ("wrong-token", "hmac-secret-1"), ("bearer-token-1", "wrong-secret"),
    ("bearer-token-1", None), (None, "hmac-secret-1"),
])
async def test_webhook_with_wrong_credentials_is_refused_and_the_site_unavailable(
        webhook: WebhookServer, token: str | None, secret: str | None) -> None:
    gateway = WebhookGateway(webhook.url, token=token, hmac_secret=secret)
    try:
        result = await gateway.send(SMS)
    finally:
        await gateway.close()
    assert result.status == "unavailable" and result.error == "http_401"
    assert webhook.delivered == {}


async def test_webhook_status_classes(webhook: WebhookServer) -> None:
    webhook.answer_next(503, 429, 500, 400, 422, 403, 404)
    gateway = WebhookGateway(webhook.url, token="bearer-token-1", hmac_secret="hmac-secret-1")
    try:
        results = [await gateway.send(SMS) for _ in range(7)]
    finally:
        await gateway.close()
    assert [r.status for r in results] == (["retryable"] * 3 + ["permanent"] * 2
                                           + ["unavailable"] * 2)
    assert results[0].retry_after == 1.0
    assert [r.error for r in results] == ["http_503", "http_429", "http_500", "http_400",
                                          "http_422", "http_403", "http_404"]


async def test_webhook_unreachable_or_slow_is_retryable() -> None:
    stalled = asyncio.Event()

    async def never(request: web.Request) -> web.Response:
        await stalled.wait()
        return web.Response()

    app = web.Application()
    app.router.add_post("/send", never)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    slow = WebhookGateway(f"http://127.0.0.1:{port}/send", timeout_seconds=0.2)
    try:
        assert (await slow.send(SMS)).error == "timeout"
    finally:
        stalled.set()
        await slow.close()
        await runner.cleanup()
    # the port is closed now: nothing listens there
    gone = WebhookGateway(f"http://127.0.0.1:{port}/send")
    try:
        result = await gone.send(SMS)
    finally:
        await gone.close()
    assert result.status == "retryable" and result.error is not None


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_webhook_url_that_redirects_holds_the_message_and_follows_nothing(
        status: int) -> None:
    """A moved URL (a proxy sending http to https, a path renamed) answers 3xx. Followed,
    a 301, 302 or 303 turned the POST into a GET of the new page, whose 200 marked the
    message sent though no SMS went; a 307 or 308 re-sent the credentials wherever it
    pointed. It is the site's URL, wrong for every message: held, named, as a 404 is."""
    seen: list[str] = []

    async def moved(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.path}")
        return web.Response(status=status, headers={"Location": "/new"})

    async def page(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.path}")
        return web.json_response({"id": "a web page, not a gateway"})

    app = web.Application()
    app.router.add_post("/send", moved)
    app.router.add_route("*", "/new", page)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    gateway = WebhookGateway(f"http://127.0.0.1:{port}/send", token="bearer-token-1")
    try:
        result = await gateway.send(SMS)
    finally:
        await gateway.close()
        await runner.cleanup()
    assert (result.status, result.error) == ("unavailable", f"http_{status}")
    assert seen == ["POST /send"]


def test_webhook_signature_helper_matches_its_documentation() -> None:
    body = json.dumps({"to": "1"}).encode()
    signature = webhook_signature("k", "1700000000", body)
    assert signature.startswith("v1=") and len(signature) == 3 + 64
    assert verify_webhook_signature("k", "1700000000", signature, body, now=1700000100)
    assert not verify_webhook_signature("k", "1700000000", signature, body + b" ",
                                        now=1700000100)
    assert not verify_webhook_signature("k", "1700000000", signature, body, now=1700000400)
    assert not verify_webhook_signature("other", "1700000000", signature, body, now=1700000000)
    # A timestamp that is no time is never fresh, even signed with the secret.
    for stamp in ("nan", "inf", "-inf", "soon", ""):
        signed = webhook_signature("k", stamp, body)
        assert not verify_webhook_signature("k", stamp, signed, body, now=1700000000), stamp


def aliyun_gateway(server: AliyunServer, secret: str | None = None) -> AliyunGateway:
    return AliyunGateway(access_key_id=server.access_key_id,
                         access_key_secret=secret or server.access_key_secret,
                         sign_name="阳光物业", endpoint=server.endpoint)


async def test_aliyun_sendsms_is_signed_as_documented_and_carries_the_template(
        aliyun: AliyunServer) -> None:
    gateway = aliyun_gateway(aliyun)
    try:
        first = await gateway.send(SMS)
        second = await gateway.send(SMS)
    finally:
        await gateway.close()
    assert aliyun.refused == []
    assert (first.status, first.provider_id) == ("sent", "biz-1")
    assert second.provider_id == "biz-2"
    a, b = aliyun.received
    assert a["PhoneNumbers"] == "13800138000"          # +86 dropped for mainland numbers
    assert a["SignName"] == "阳光物业" and a["TemplateCode"] == "SMS_1"
    assert json.loads(a["TemplateParam"]) == dict(SMS.params)
    assert a["OutId"] == b["OutId"] == SMS.idempotency_key
    assert a["SignatureNonce"] != b["SignatureNonce"]   # a fresh nonce per attempt


async def test_aliyun_with_a_wrong_secret_fails_the_providers_check(
        aliyun: AliyunServer) -> None:
    gateway = aliyun_gateway(aliyun, secret="not-the-secret")
    try:
        result = await gateway.send(SMS)
    finally:
        await gateway.close()
    assert aliyun.refused == ["SignatureDoesNotMatch"]
    assert result.status == "unavailable" and result.error == "SignatureDoesNotMatch"


async def test_aliyun_result_classes(aliyun: AliyunServer) -> None:
    aliyun.answer_next((200, "isv.BUSINESS_LIMIT_CONTROL"), (200, "isv.MOBILE_NUMBER_ILLEGAL"),
                       (500, "isp.SYSTEM_ERROR"), (400, "Throttling.User"),
                       (200, "isv.TEMPLATE_MISSING_PARAMETERS"), (200, "isv.AMOUNT_NOT_ENOUGH"),
                       (200, "isv.OUT_OF_SERVICE"), (404, "InvalidAccessKeyId.NotFound"))
    gateway = aliyun_gateway(aliyun)
    try:
        results = [await gateway.send(SMS) for _ in range(8)]
    finally:
        await gateway.close()
    assert [(r.status, r.error) for r in results] == [
        ("retryable", "isv.BUSINESS_LIMIT_CONTROL"), ("permanent", "isv.MOBILE_NUMBER_ILLEGAL"),
        ("retryable", "isp.SYSTEM_ERROR"), ("retryable", "Throttling.User"),
        ("permanent", "isv.TEMPLATE_MISSING_PARAMETERS"),
        ("unavailable", "isv.AMOUNT_NOT_ENOUGH"), ("unavailable", "isv.OUT_OF_SERVICE"),
        ("unavailable", "InvalidAccessKeyId.NotFound")]


def test_aliyun_answers_that_are_not_json() -> None:
    assert classify(502, "<html>bad gateway</html>").status == "retryable"
    assert classify(403, "<html>forbidden</html>").status == "unavailable"  # a proxy's
    assert classify(301, "<html>moved</html>").status == "unavailable"  # a moved endpoint
    assert classify(400, "<html>bad request</html>").status == "permanent"
    assert classify(200, '{"Code": "OK"}').provider_id is None


async def test_gateway_from_settings_builds_the_named_gateway(
        webhook: WebhookServer, aliyun: AliyunServer) -> None:
    hook = gateway_from_settings(sms_settings_from_table(
        {"gateway": "webhook", "url": webhook.url, "token": "bearer-token-1",
         "hmac_secret": "hmac-secret-1"}))
    ali = gateway_from_settings(sms_settings_from_table(
        {"gateway": "aliyun", "aliyun": {
            "access_key_id": aliyun.access_key_id,
            "access_key_secret": aliyun.access_key_secret, "sign_name": "阳光物业",
            "template_code": "SMS_1", "endpoint": aliyun.endpoint}}))
    try:
        assert (hook.name, (await hook.send(SMS)).status) == ("webhook", "sent")
        assert (ali.name, (await ali.send(SMS)).status) == ("aliyun", "sent")
    finally:
        await hook.close()
        await ali.close()
