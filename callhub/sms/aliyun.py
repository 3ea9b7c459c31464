"""Aliyun SMS (Dysmsapi, API version 2017-05-25) `SendSms` over its HTTP RPC API.

Signed as the SMS documentation's "signature method" describes (RPC
signature version 1.0, HMAC-SHA1):

1. Take every request parameter except `Signature` (the common ones:
   AccessKeyId, Action, Format, RegionId, SignatureMethod, SignatureNonce,
   SignatureVersion, Timestamp, Version; and SendSms's own: PhoneNumbers,
   SignName, TemplateCode, TemplateParam, OutId), sort them by name.
2. Percent-encode each name and value as UTF-8 (RFC 3986: A-Z a-z 0-9 - _ . ~
   stay, everything else is %XY in upper case, a space is %20, never '+'),
   join as `name=value` with '&': the canonicalized query string.
3. StringToSign = HTTPMethod + "&" + percentEncode("/") + "&" +
   percentEncode(canonicalized query string).
4. Signature = Base64(HMAC-SHA1(key = AccessKeySecret + "&", StringToSign)).

We POST the parameters as an `application/x-www-form-urlencoded` body (so
numbers and texts stay out of proxies' URL logs), which makes HTTPMethod
"POST". Each attempt gets a fresh SignatureNonce (Aliyun refuses a nonce it
has seen) and Timestamp; the idempotency key rides in `OutId`.

No official SDK: `alibabacloud-dysmsapi20170525` is generated code on top of
the Tea runtime and its OpenAPI, utility and credentials packages, with its
own HTTP stack beside our aiohttp, for one signed form POST that takes
forty lines here.

Aliyun has no server-side deduplication for SendSms: a crash between the
provider accepting a message and the outbox recording it can send it twice;
`OutId` (the idempotency key) lets QuerySendDetails reconcile such a case.

The approved template (`TemplateCode`) is rendered by Aliyun from
`TemplateParam`, the JSON object {"agent_name", "agent_mobile", "line",
"org"}: write the template with ${agent_name}, ${agent_mobile}, ${line},
${org}.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import aiohttp

from callhub.sms.http import SessionHolder, refuses_site
from callhub.sms.message import OutgoingSms, SendResult, retry_after_seconds

API_VERSION = "2017-05-25"
# Codes worth another attempt later: throttling and Aliyun's own failures.
RETRYABLE_CODES = frozenset({
    "Throttling", "Throttling.User", "Throttling.Api", "isv.BUSINESS_LIMIT_CONTROL",
    "isp.SYSTEM_ERROR", "isp.GATEWAY_ERROR", "ServiceUnavailable", "InternalError",
    "SignatureNonceUsed",
})
# Codes of the account, its key or its configured signature, not of the message: every
# message would get them, so each is held (retried until it expires) until the site
# tops up, renews the key or fixes `sign_name`. A bad number or template stays permanent.
UNAVAILABLE_CODES = frozenset({
    "isv.AMOUNT_NOT_ENOUGH", "isv.OUT_OF_SERVICE", "isv.BILLING_DEDUCTION_ERROR",
    "isv.ACCOUNT_NOT_EXISTS", "isv.ACCOUNT_ABNORMAL", "isv.PRODUCT_UN_SUBSCRIPT",
    "isv.PRODUCT_UNSUBSCRIBE", "isp.RAM_PERMISSION_DENY", "isv.SMS_SIGN_NAME_ILLEGAL",
    "isv.SMS_SIGNATURE_ILLEGAL", "InvalidAccessKeyId.NotFound", "InvalidAccessKeyId.Inactive",
    "SignatureDoesNotMatch", "Forbidden.RAM",
})


def percent_encode(value: str) -> str:
    """RFC 3986 percent-encoding of UTF-8, as the signature method requires."""
    return quote(value, safe="~")


def canonicalized_query(params: Mapping[str, str]) -> str:
    return "&".join(f"{percent_encode(k)}={percent_encode(params[k])}" for k in sorted(params))


def string_to_sign(method: str, params: Mapping[str, str]) -> str:
    return f"{method}&{percent_encode('/')}&{percent_encode(canonicalized_query(params))}"


def sign(access_key_secret: str, method: str, params: Mapping[str, str]) -> str:
    """Base64(HMAC-SHA1(secret + '&', StringToSign))."""
    mac = hmac.new((access_key_secret + "&").encode(),
                   string_to_sign(method, params).encode(), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode()


def aliyun_phone(number: str) -> str:
    """Aliyun's PhoneNumbers form: mainland numbers without +86, others as country code
    and number without '+'."""
    if number.startswith("+86"):
        return number[3:]
    return number.removeprefix("+")


class AliyunGateway:
    """Sends through Dysmsapi SendSms; see the module docstring."""

    name = "aliyun"

    def __init__(self, *, access_key_id: str, access_key_secret: str, sign_name: str,
                 region_id: str = "cn-hangzhou",
                 endpoint: str = "https://dysmsapi.aliyuncs.com/",
                 timeout_seconds: float = 10.0, session: aiohttp.ClientSession | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.access_key_id = access_key_id
        self.access_key_secret = access_key_secret
        self.sign_name = sign_name
        self.region_id = region_id
        self.endpoint = endpoint
        self.clock = clock
        self.http = SessionHolder(session, timeout_seconds)

    def params(self, sms: OutgoingSms) -> dict[str, str]:
        """Every request parameter of one attempt, `Signature` included."""
        if sms.template_code is None:
            raise ValueError("an Aliyun SMS needs a template_code")
        params = {
            "AccessKeyId": self.access_key_id,
            "Action": "SendSms",
            "Format": "JSON",
            "RegionId": self.region_id,
            "SignatureMethod": "HMAC-SHA1",
            "SignatureNonce": uuid.uuid4().hex,
            "SignatureVersion": "1.0",
            "Timestamp": datetime.fromtimestamp(self.clock(), UTC).strftime(
                "%Y-%m-%dT%H:%M:%SZ"),
            "Version": API_VERSION,
            "PhoneNumbers": aliyun_phone(sms.to),
            "SignName": self.sign_name,
            "TemplateCode": sms.template_code,
            "TemplateParam": json.dumps(dict(sms.params), ensure_ascii=False,
                                        separators=(",", ":")),
            "OutId": sms.idempotency_key,
        }
        params["Signature"] = sign(self.access_key_secret, "POST", params)
        return params

    async def send(self, sms: OutgoingSms) -> SendResult:
        if sms.template_code is None:
            return SendResult("permanent", error="no_template_code")
        body = "&".join(f"{percent_encode(k)}={percent_encode(v)}"
                        for k, v in self.params(sms).items())
        headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
                   "Accept": "application/json"}
        try:
            async with self.http.session().post(self.endpoint, data=body.encode(),
                                                headers=headers,
                                                timeout=self.http.timeout,
                                                allow_redirects=False) as response:
                text = await response.text(errors="replace")
                return classify(response.status, text,
                                retry_after_seconds(response.headers.get("Retry-After")))
        except TimeoutError:
            return SendResult("retryable", error="timeout")
        except aiohttp.ClientError as exc:
            return SendResult("retryable", error=type(exc).__name__)

    async def close(self) -> None:
        await self.http.close()


def classify(status: int, text: str, retry_after: float | None = None) -> SendResult:
    """SendSms's answer: Code "OK" with a BizId is sent; throttling, Aliyun's own
    errors and 5xx are retryable; the account's, its key's or its signature's codes
    (and a 401, 403, 404, 407 or 3xx without a code: a proxy, a moved endpoint) are
    unavailable; any other Code (a bad number or template) is permanent."""
    try:
        data: Any = json.loads(text)
    except ValueError:
        data = None
    code = str(data.get("Code")) if isinstance(data, dict) and data.get("Code") else None
    if status == 200 and code == "OK":
        biz_id = data.get("BizId")
        return SendResult("sent", provider_id=str(biz_id) if biz_id else None)
    if status >= 500 or code in RETRYABLE_CODES or (code is None and status in (408, 429)):
        return SendResult("retryable", error=code or f"http_{status}", retry_after=retry_after)
    if code in UNAVAILABLE_CODES or (code is None and refuses_site(status)):
        return SendResult("unavailable", error=code or f"http_{status}",
                          retry_after=retry_after)
    return SendResult("permanent", error=code or f"http_{status}")
