"""The [sms] section: the acceptance keys parse, defaults hold, errors name the key,
secrets never show."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from callhub.config import ConfigError, load_settings
from callhub.sms.settings import (
    DEFAULT_ANSWERED_TEMPLATE,
    DEFAULT_MISSED_TEMPLATE,
    sms_settings_from_table,
)

ACCEPTANCE = """
[sms]
gateway = "webhook"                      # or "aliyun", ...
url = "http://127.0.0.1:9000/send"       # the webhook's address
quiet_seconds = 86400                    # no second SMS to one number within this time

[[sms.rules]]
line = "front-desk"                      # a line name, as [pbx.lines] maps DIDs to lines
after = "answered"                       # answered | missed | both | off
template = "您好！我是{agent_name}，感谢您的来电。"   # {agent_name} {agent_mobile} {line} {org}

[pbx.lines]
"4008001000" = "front-desk"
"""

ALIYUN: dict[str, Any] = {
    "gateway": "aliyun",
    "aliyun": {"access_key_id": "LTAIid", "access_key_secret": "s3cret-aliyun",
               "sign_name": "某某物业", "template_code": "SMS_1",
               "missed_template_code": "SMS_2"},
    "rules": [{"line": "front-desk", "after": "both"}],
}


def test_the_acceptance_snippet_parses_with_its_values_and_the_defaults() -> None:
    settings = sms_settings_from_table(tomllib.loads(ACCEPTANCE)["sms"])
    assert settings.gateway == "webhook"
    assert settings.url == "http://127.0.0.1:9000/send"
    assert settings.quiet_seconds == 86400
    assert settings.deadline_seconds == 300
    rule = settings.rule_for("front-desk")
    assert rule is not None and rule.kinds == ("answered",)
    assert rule.template_for("answered") == "您好！我是{agent_name}，感谢您的来电。"
    assert settings.rule_for("petition-office") is None


def test_default_templates_are_chinese_and_name_the_agent_on_answered_calls() -> None:
    settings = sms_settings_from_table({"gateway": "webhook", "url": "http://x/",
                                        "rules": [{"line": "*", "after": "both"}]})
    rule = settings.rule_for("any-line")
    assert rule is not None
    assert rule.template_for("answered") == DEFAULT_ANSWERED_TEMPLATE
    assert rule.template_for("missed") == DEFAULT_MISSED_TEMPLATE
    assert "{agent_name}" in DEFAULT_ANSWERED_TEMPLATE
    assert "{agent_mobile}" in DEFAULT_ANSWERED_TEMPLATE
    assert "回电" in DEFAULT_MISSED_TEMPLATE


def test_a_missed_rule_uses_its_template_for_missed_calls() -> None:
    settings = sms_settings_from_table({"gateway": "webhook", "url": "http://x/", "rules": [
        {"line": "petition", "after": "missed", "template": "未接来电，稍后回电。{org}"}]})
    rule = settings.rule_for("petition")
    assert rule is not None and rule.kinds == ("missed",)
    assert rule.template_for("missed") == "未接来电，稍后回电。{org}"


@pytest.mark.parametrize(("table", "key"), [
    ({"gateway": "webhook"}, "sms.url"),
    ({"gateway": "carrier-pigeon", "url": "http://x/"}, "sms.gateway"),
    ({"gateway": "webhook", "url": "ftp://x/"}, "sms.url"),
    ({"gateway": "webhook", "url": "http://x/", "bogus": 1}, "sms.bogus"),
    ({"gateway": "webhook", "url": "http://x/", "quiet_seconds": -1}, "sms.quiet_seconds"),
    ({"gateway": "webhook", "url": "http://x/", "deadline_seconds": 0},
     "sms.deadline_seconds"),
    ({"gateway": "webhook", "url": "http://x/",
      "rules": [{"line": "a", "after": "sometimes"}]}, "sms.rules[0].after"),
    ({"gateway": "webhook", "url": "http://x/",
      "rules": [{"line": "a", "after": "answered", "template": "hi {caller}"}]},
     "sms.rules[0].template"),
    ({"gateway": "webhook", "url": "http://x/",
      "rules": [{"line": "a", "after": "off"}, {"line": "b", "after": "off", "x": 1}]},
     "sms.rules[1].x"),
    ({"gateway": "webhook", "url": "http://x/",
      "rules": [{"line": "a", "after": "off"}, {"line": "a", "after": "missed"}]},
     "sms.rules"),
    ({"gateway": "aliyun"}, "sms.aliyun"),
    ({"gateway": "webhook", "url": "http://x/", "lease_seconds": 0}, "sms.lease_seconds"),
    ({"gateway": "webhook", "url": "http://x/", "timeout_seconds": 10, "lease_seconds": 10},
     "sms.lease_seconds"),
    ({**ALIYUN, "aliyun": {k: v for k, v in ALIYUN["aliyun"].items()
                           if k != "missed_template_code"}},
     "sms.rules[0].missed_template_code"),
    ({**ALIYUN, "aliyun": {**ALIYUN["aliyun"], "sign_name": ""}}, "sms.aliyun.sign_name"),
    # The outbox's column is 64 long: every message of a longer code failed to queue.
    ({**ALIYUN, "aliyun": {**ALIYUN["aliyun"], "template_code": "SMS_" + "9" * 61}},
     "sms.aliyun.template_code"),
    ({**ALIYUN, "rules": [{"line": "a", "after": "missed",
                           "missed_template_code": "SMS_" + "9" * 61}]},
     "sms.rules[0].missed_template_code"),
])
def test_errors_name_the_key(table: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        sms_settings_from_table(table)
    assert str(caught.value).startswith(f"{key}: "), str(caught.value)


def test_the_senders_lease_outlives_an_attempt_unless_set() -> None:
    base = {"gateway": "webhook", "url": "http://x/"}
    assert sms_settings_from_table(base).lease == 60.0
    assert sms_settings_from_table({**base, "timeout_seconds": 30}).lease == 90.0
    assert sms_settings_from_table({**base, "timeout_seconds": 2, "lease_seconds": 5}
                                   ).lease == 5.0


def test_aliyun_template_codes_come_from_the_rule_before_the_defaults() -> None:
    table = {**ALIYUN, "rules": [
        {"line": "front-desk", "after": "both", "missed_template_code": "SMS_9"},
        {"line": "petition", "after": "missed", "template_code": "SMS_7"}]}
    settings = sms_settings_from_table(table)
    front, petition = settings.rules
    assert settings.aliyun_template_code(front, "answered") == "SMS_1"
    assert settings.aliyun_template_code(front, "missed") == "SMS_9"
    assert settings.aliyun_template_code(petition, "missed") == "SMS_7"


def test_secrets_are_masked_and_never_in_the_repr() -> None:
    settings = sms_settings_from_table({**ALIYUN, "gateway": "webhook", "url": "http://x/",
                                        "token": "bearer-s3cret", "hmac_secret": "hmac-s3cret"})
    masked = settings.masked()
    assert masked["token"] == masked["hmac_secret"] == "***"
    assert masked["aliyun"]["access_key_secret"] == "***"
    assert masked["aliyun"]["access_key_id"] == "LTAIid"
    assert masked["url"] == "http://x/"
    for secret in ("bearer-s3cret", "hmac-s3cret", "s3cret-aliyun"):
        assert secret not in str(masked)
        assert secret not in repr(settings)


def test_unset_secrets_mask_to_none() -> None:
    masked = sms_settings_from_table({"gateway": "webhook", "url": "http://x/"}).masked()
    assert masked["token"] is None and masked["hmac_secret"] is None
    assert masked["aliyun"] is None


def test_secrets_come_from_the_environment_over_the_file() -> None:
    settings = sms_settings_from_table(
        {**ALIYUN, "aliyun": {**ALIYUN["aliyun"], "access_key_secret": "from-file"}},
        env={"CALLHUB_SMS_ALIYUN_ACCESS_KEY_SECRET": "from-env",
             "CALLHUB_SMS_TOKEN": "tok-from-env"})
    assert settings.aliyun is not None
    assert settings.aliyun.access_key_secret.get_secret_value() == "from-env"
    assert settings.token is not None and settings.token.get_secret_value() == "tok-from-env"


def test_a_rule_naming_a_line_no_pbx_maps_is_warned_of_and_still_matches_its_did(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A rule's line is a call's line, which is the DID itself where [pbx.lines] does not
    map it: a site without [pbx.lines] keys its rules by DID (refused for a while, which
    stopped such a site's start). `config check` warns of such a rule, a typo's too (it
    never matched a call, its callers getting the `*` rule's text or none)."""
    from callhub.cli import main

    path = tmp_path / "callhub.toml"
    path.write_text(ACCEPTANCE + '"4008001001" = "petition"\n'
                    '[[sms.rules]]\nline = "*"\nafter = "missed"\n'
                    '[[sms.rules]]\nline = "front_desk"\nafter = "both"\n'
                    '[[sms.rules]]\nline = "4008009999"\nafter = "answered"\n',
                    encoding="utf-8")
    assert main(["config", "check", str(path)]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "sms.rules" in line]
    assert warned == [
        f"callhub: sms.rules[{i}].line {line!r} is no line [pbx.lines] maps DIDs to "
        f"(front-desk, petition): it matches only the calls of an unmapped DID {line!r}"
        for i, line in ((2, "front_desk"), (3, "4008009999"))]
    sms = load_settings(str(path)).sms
    assert sms is not None
    pbx = load_settings(str(path)).pbxs[0]
    rule = sms.rule_for(pbx.line_for("4008009999"))  # an unmapped DID's calls
    assert rule is not None and rule.line == "4008009999" and rule.after == "answered"
