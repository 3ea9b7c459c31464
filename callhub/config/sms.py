"""The `[sms]` section: which gateway, its credentials, the quiet time and the per-line rules.

Here in callhub.config (the bottom layer) because `Settings.sms` embeds it;
callhub.sms.settings re-exports it for the SMS code.

Validated once at start with pydantic; `sms_settings_from_table` turns a
validation error into `ConfigError` naming the dotted key (`sms.rules[0].after`).
Secrets are `SecretStr` and show as '***' in `SmsSettings.masked()`.

    [sms]
    gateway = "webhook"                 # or "aliyun"
    url = "http://127.0.0.1:9000/send"  # webhook: where to POST
    token = "..."                       # webhook: Authorization: Bearer <token>, and/or
    hmac_secret = "..."                 # webhook: X-Callhub-Signature over the body
    org = "某某物业服务中心"             # {org} in templates
    quiet_seconds = 86400               # no second SMS to one number within this time

    [sms.aliyun]                        # gateway = "aliyun" (Dysmsapi SendSms)
    access_key_id = "..."
    access_key_secret = "..."
    sign_name = "某某物业"
    template_code = "SMS_123"           # approved template for answered calls
    missed_template_code = "SMS_456"    # and for missed ones

    [[sms.rules]]
    line = "front-desk"                 # a line name as [pbx.lines] maps DIDs; "*": any other
    after = "answered"                  # answered | missed | both | off
    template = "您好！我是{agent_name}，感谢您的来电。"
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from callhub.config.problems import ConfigError

After = Literal["answered", "missed", "both", "off"]
Kind = Literal["answered", "missed"]
ANY_LINE = "*"
PLACEHOLDERS = ("agent_name", "agent_mobile", "line", "org")
DEFAULT_ANSWERED_TEMPLATE = ("您好！我是{agent_name}，感谢您的来电。"
                             "如有需要请拨打{agent_mobile}。{org}")
DEFAULT_MISSED_TEMPLATE = "您好！很抱歉未能及时接听您的来电，我们会尽快给您回电。{org}"
DEFAULT_TEMPLATES: Mapping[Kind, str] = {
    "answered": DEFAULT_ANSWERED_TEMPLATE, "missed": DEFAULT_MISSED_TEMPLATE,
}
# Environment variables that carry the secrets, so they need not sit in the file.
ENV_SECRETS: Mapping[str, tuple[str, ...]] = {
    "CALLHUB_SMS_TOKEN": ("token",),
    "CALLHUB_SMS_HMAC_SECRET": ("hmac_secret",),
    "CALLHUB_SMS_ALIYUN_ACCESS_KEY_ID": ("aliyun", "access_key_id"),
    "CALLHUB_SMS_ALIYUN_ACCESS_KEY_SECRET": ("aliyun", "access_key_secret"),
}


def template_fields(template: str) -> set[str]:
    """The `{name}` placeholders of a template; raises ValueError on a bad one."""
    names = set()
    for _, name, spec, conversion in string.Formatter().parse(template):
        if name is None:
            continue
        if name not in PLACEHOLDERS or spec or conversion:
            known = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
            raise ValueError(f"unknown placeholder {{{name}}} (use {known})")
        names.add(name)
    return names


# The outbox's template_code column: a longer code made every message of it fail to queue.
TEMPLATE_CODE_LENGTH = 64
TemplateCode = Annotated[str | None, Field(min_length=1, max_length=TEMPLATE_CODE_LENGTH)]

class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True,
                              allow_inf_nan=False)


class SmsRule(_Model):
    """What one line sends: after which calls, with which text.

    `template` is the text for the kind `after` names; with `after = "both"`
    it is the answered text and `missed_template` the missed one. Unset texts
    are the Chinese defaults. `template_code`/`missed_template_code` override
    the Aliyun template codes of `[sms.aliyun]` for this line.
    """

    line: str = Field(min_length=1)
    after: After
    template: str | None = Field(default=None, min_length=1)
    missed_template: str | None = Field(default=None, min_length=1)
    template_code: TemplateCode = None
    missed_template_code: TemplateCode = None

    @field_validator("template", "missed_template")
    @classmethod
    def _known_placeholders(cls, value: str | None) -> str | None:
        if value is not None:
            template_fields(value)
        return value

    @property
    def kinds(self) -> tuple[Kind, ...]:
        """The call kinds this rule sends after."""
        kinds: dict[After, tuple[Kind, ...]] = {
            "answered": ("answered",), "missed": ("missed",),
            "both": ("answered", "missed"), "off": ()}
        return kinds[self.after]

    def template_for(self, kind: Kind) -> str:
        if kind == "missed" and self.after == "both":
            return self.missed_template or DEFAULT_MISSED_TEMPLATE
        return self.template or DEFAULT_TEMPLATES[kind]

    def template_code_for(self, kind: Kind) -> str | None:
        if kind == "missed" and self.after == "both":
            return self.missed_template_code
        return self.template_code if kind == "answered" or self.after == "missed" else None


class AliyunSettings(_Model):
    """Aliyun SMS (Dysmsapi 2017-05-25 SendSms) credentials and approved template codes."""

    access_key_id: str = Field(min_length=1)
    access_key_secret: SecretStr
    sign_name: str = Field(min_length=1)
    template_code: TemplateCode = None
    missed_template_code: TemplateCode = None
    region_id: str = "cn-hangzhou"
    endpoint: str = "https://dysmsapi.aliyuncs.com/"

    @field_validator("endpoint")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return _check_http_url(value)

    @field_validator("access_key_secret")
    @classmethod
    def _non_empty_secret(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value():
            raise ValueError("must not be empty")
        return value


class SmsSettings(_Model):
    """Everything the SMS decision, the gateways and the worker read."""

    gateway: Literal["webhook", "aliyun"]
    url: str | None = None
    token: SecretStr | None = None
    hmac_secret: SecretStr | None = None
    aliyun: AliyunSettings | None = None
    org: str = ""
    quiet_seconds: float = Field(default=86400.0, ge=0)
    deadline_seconds: float = Field(default=300.0, gt=0)
    # An SMS about a call older than this is not sent at all (a replay, a long outage).
    expire_seconds: float = Field(default=86400.0, gt=0)
    timeout_seconds: float = Field(default=10.0, gt=0)
    # How long one sender holds a message it is sending: after a crash mid-send the
    # message is sent again (same key) once this has passed. None: max(60, 3 x timeout).
    lease_seconds: float | None = Field(default=None, gt=0)
    retry_base_seconds: float = Field(default=5.0, gt=0)
    retry_max_seconds: float = Field(default=300.0, gt=0)
    max_attempts: int = Field(default=10, ge=1)
    # External numbers have at least this many digits; shorter ones are extensions.
    min_digits: int = Field(default=7, ge=1, le=15)
    include_short_abandons: bool = False
    rules: tuple[SmsRule, ...] = ()

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else _check_http_url(value)

    @field_validator("org")
    @classmethod
    def _org_braces(cls, value: str) -> str:
        if "{" in value or "}" in value:
            raise ValueError("must not contain { or }")
        return value

    @field_validator("rules")
    @classmethod
    def _unique_lines(cls, rules: tuple[SmsRule, ...]) -> tuple[SmsRule, ...]:
        seen: set[str] = set()
        for rule in rules:
            if rule.line in seen:
                raise ValueError(f"line {rule.line!r} has more than one rule")
            seen.add(rule.line)
        return rules

    @model_validator(mode="after")
    def _gateway_keys(self) -> SmsSettings:
        if self.gateway == "webhook" and self.url is None:
            raise ValueError("url: required when gateway = \"webhook\"")
        if self.gateway == "aliyun":
            if self.aliyun is None:
                raise ValueError("aliyun: a [sms.aliyun] table is required when "
                                 "gateway = \"aliyun\"")
            for i, rule in enumerate(self.rules):
                for kind in rule.kinds:
                    if self.aliyun_template_code(rule, kind) is None:
                        key = "missed_template_code" if kind == "missed" else "template_code"
                        raise ValueError(f"rules[{i}].{key}: required for gateway = "
                                         f"\"aliyun\" (or [sms.aliyun] {key})")
        if self.retry_max_seconds < self.retry_base_seconds:
            raise ValueError("retry_max_seconds: must be >= retry_base_seconds")
        if self.lease_seconds is not None and self.lease_seconds <= self.timeout_seconds:
            # A shorter lease would let another sender take a message still being sent.
            raise ValueError("lease_seconds: must be longer than timeout_seconds")
        return self

    @property
    def lease(self) -> float:
        """The sender's lease on a message: `lease_seconds`, else one that outlives a
        whole attempt (the gateway's timeout) with room to spare."""
        if self.lease_seconds is not None:
            return self.lease_seconds
        return max(60.0, 3 * self.timeout_seconds)

    def rule_for(self, line: str | None) -> SmsRule | None:
        """The line's own rule, else the `*` rule, else none."""
        by_line = {rule.line: rule for rule in self.rules}
        if line is not None and line in by_line:
            return by_line[line]
        return by_line.get(ANY_LINE)

    def aliyun_template_code(self, rule: SmsRule, kind: Kind) -> str | None:
        """The approved Aliyun template for this rule and kind (rule first, then defaults)."""
        code = rule.template_code_for(kind)
        if code is None and self.aliyun is not None:
            code = (self.aliyun.missed_template_code if kind == "missed"
                    else self.aliyun.template_code)
        return code

    def masked(self) -> dict[str, Any]:
        """The effective settings as plain data with every secret replaced by '***'."""
        data = self.model_dump(mode="json")
        for key in ("token", "hmac_secret"):
            data[key] = "***" if getattr(self, key) is not None else None
        if data.get("aliyun") is not None:
            data["aliyun"]["access_key_secret"] = "***"
        return data


def _check_http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")) or len(value.split("://", 1)[1]) == 0:
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return value


def apply_sms_env(table: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """The raw `[sms]` table with secrets from CALLHUB_SMS_* variables laid over it."""
    out: dict[str, Any] = {k: (dict(v) if isinstance(v, Mapping) else v)
                           for k, v in table.items()}
    for var, path in ENV_SECRETS.items():
        if var not in env:
            continue
        target = out
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = env[var]
    return out


def error_key(loc: tuple[int | str, ...], prefix: str = "sms") -> str:
    """('rules', 0, 'after') -> 'sms.rules[0].after'."""
    key = prefix
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else f".{part}"
    return key


def sms_settings_from_table(table: Mapping[str, Any],
                            env: Mapping[str, str] | None = None) -> SmsSettings:
    """Validate the `[sms]` table (plus CALLHUB_SMS_* secrets); ConfigError names the key."""
    data = apply_sms_env(table, env or {})
    try:
        return SmsSettings.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        loc = tuple(first["loc"])
        # A model-level check names its own key at the start of the message.
        head, sep, rest = message.partition(": ")
        if not loc and sep and " " not in head:
            loc, message = tuple(_split_key(head)), rest
        raise ConfigError(f"{error_key(loc)}: {message}") from None


def _split_key(key: str) -> list[int | str]:
    """'rules[0].template_code' -> ['rules', 0, 'template_code']."""
    parts: list[int | str] = []
    for piece in key.split("."):
        name, _, index = piece.partition("[")
        parts.append(name)
        if index:
            parts.append(int(index.rstrip("]")))
    return parts
