"""The gateway `[sms] gateway = "..."` names, built from the settings."""

from __future__ import annotations

import aiohttp

from callhub.sms.aliyun import AliyunGateway
from callhub.sms.message import SmsGateway
from callhub.sms.settings import SmsSettings
from callhub.sms.webhook import WebhookGateway


def gateway_from_settings(settings: SmsSettings,
                          session: aiohttp.ClientSession | None = None) -> SmsGateway:
    if settings.gateway == "aliyun":
        aliyun = settings.aliyun
        assert aliyun is not None  # the settings' own check
        return AliyunGateway(
            access_key_id=aliyun.access_key_id,
            access_key_secret=aliyun.access_key_secret.get_secret_value(),
            sign_name=aliyun.sign_name, region_id=aliyun.region_id,
            endpoint=aliyun.endpoint, timeout_seconds=settings.timeout_seconds,
            session=session)
    assert settings.url is not None
    return WebhookGateway(
        settings.url,
        token=settings.token.get_secret_value() if settings.token else None,
        hmac_secret=settings.hmac_secret.get_secret_value() if settings.hmac_secret else None,
        timeout_seconds=settings.timeout_seconds, session=session)
