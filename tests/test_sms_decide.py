"""Whether a call gets an SMS and which text: eligible calls get one, internal, withheld,
opted-out and quiet-time numbers none."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sms_fixtures import call

from callhub.sms.decide import (
    AgentContact,
    SmsPlan,
    check_history,
    decide,
    decide_with_history,
    idempotency_key,
    plan_sms,
)
from callhub.sms.numbers import check_number
from callhub.sms.settings import SmsSettings, sms_settings_from_table

AGENT = AgentContact(name="王芳", mobile="13900001111")


def settings(**overrides: Any) -> SmsSettings:
    table: dict[str, Any] = {
        "gateway": "webhook", "url": "http://127.0.0.1:9/send", "org": "阳光物业服务中心",
        "rules": [{"line": "front-desk", "after": "answered"},
                  {"line": "petition", "after": "missed"},
                  {"line": "both-line", "after": "both"},
                  {"line": "quiet-line", "after": "off"}],
    }
    table.update(overrides)
    return sms_settings_from_table(table)


def plan(record: Any, s: SmsSettings | None = None,
         agent: AgentContact | None = AGENT) -> SmsPlan:
    result = plan_sms(record, s or settings(), agent, now=record.ended_at + 1)
    assert isinstance(result, SmsPlan), result
    return result


def test_an_answered_call_gets_a_text_with_the_agents_name_mobile_and_the_org() -> None:
    record = call(caller="138 0013 8000")
    p = plan(record)
    assert p.kind == "answered" and p.line == "front-desk"
    assert p.to == "13800138000"
    assert "王芳" in p.text and "13900001111" in p.text and "阳光物业服务中心" in p.text
    assert "{" not in p.text
    assert p.params == {"agent_name": "王芳", "agent_mobile": "13900001111",
                        "line": "front-desk", "org": "阳光物业服务中心"}
    assert p.call_ended_at == record.ended_at


def test_the_rules_template_fills_line_and_org() -> None:
    s = settings(rules=[{"line": "front-desk", "after": "answered",
                         "template": "{line}：{agent_name}（{agent_mobile}）{org}"}])
    assert plan(call(), s).text == "front-desk：王芳（13900001111）阳光物业服务中心"


def test_a_missed_or_abandoned_call_gets_the_callback_text_where_the_rule_says_missed() -> None:
    for outcome in ("missed", "abandoned"):
        p = plan(call(outcome=outcome, line="petition"), agent=None)
        assert p.kind == "missed"
        assert "回电" in p.text and "阳光物业服务中心" in p.text


def test_both_sends_after_either_kind_with_its_own_text() -> None:
    answered = plan(call(line="both-line"))
    missed = plan(call("1700000000.2", line="both-line", outcome="missed"))
    assert (answered.kind, missed.kind) == ("answered", "missed")
    assert answered.text != missed.text


@pytest.mark.parametrize(("record", "reason"), [
    (call(outcome="missed"), "rule_off"),                   # front-desk: answered only
    (call(line="petition"), "rule_off"),                    # petition: missed only
    (call(line="quiet-line"), "rule_off"),
    (call(line="unknown-line"), "no_rule"),
    (call(line=None), "no_rule"),
    (call(direction="outbound"), "not_inbound"),
    (call(direction="internal"), "not_inbound"),
    (call(line="petition", outcome="abandoned", short_abandon=True), "short_abandon"),
])
def test_calls_the_rules_do_not_cover_get_nothing(record: Any, reason: str) -> None:
    decision = decide(record, settings(), AGENT, opted_out=False, last_sms_at=None,
                      now=record.ended_at + 1)
    assert not decision.send and decision.reason == reason and decision.plan is None


def test_short_abandons_get_the_text_when_configured() -> None:
    s = settings(include_short_abandons=True)
    assert plan(call(line="petition", outcome="abandoned", short_abandon=True), s).kind == "missed"


def test_an_incomplete_record_gets_nothing() -> None:
    record = call()
    record.incomplete = True
    skipped = plan_sms(record, settings(), AGENT, now=record.ended_at)
    assert not isinstance(skipped, SmsPlan) and skipped.reason == "incomplete"


def test_a_call_older_than_expire_seconds_gets_nothing() -> None:
    record = call()
    s = settings(expire_seconds=3600)
    assert isinstance(plan_sms(record, s, AGENT, now=record.ended_at + 3599), SmsPlan)
    late = plan_sms(record, s, AGENT, now=record.ended_at + 3601)
    assert not isinstance(late, SmsPlan) and late.reason == "too_old"


@pytest.mark.parametrize(("number", "reason"), [
    (None, "withheld"), ("", "withheld"), ("anonymous", "withheld"),
    ("Anonymous", "withheld"), ("unknown", "withheld"), ("<unknown>", "withheld"),
    ("restricted", "withheld"), ("private", "withheld"), ("  ", "withheld"),
    ("1001", "internal"), ("800", "internal"), ("+123", "internal"), ("123456", "internal"),
    ("PJSIP/1001", "not_a_number"), ("s", "not_a_number"), ("*99", "not_a_number"),
    ("#31#13800138000", "not_a_number"), ("1380013800O", "not_a_number"),
    ("++8613800138000", "not_a_number"), ("1" * 16, "not_a_number"),
    ("١٣٨٠٠١٣٨٠٠٠", "not_a_number"),   # non-ASCII digits
])
def test_internal_and_withheld_numbers_get_nothing(number: str | None, reason: str) -> None:
    record = call(caller=number)
    decision = decide(record, settings(), AGENT, opted_out=False, last_sms_at=None,
                      now=record.ended_at)
    assert not decision.send and decision.reason == reason


@pytest.mark.parametrize(("raw", "normalised"), [
    ("13800138000", "13800138000"), ("+86 138-0013-8000", "+8613800138000"),
    ("(010) 6552.1234", "01065521234"), ("6552123", "6552123"),
])
def test_external_numbers_are_normalised(raw: str, normalised: str) -> None:
    assert check_number(raw).number == normalised


@given(st.text(max_size=24))
def test_a_number_accepted_is_always_plus_and_7_to_15_ascii_digits(raw: str) -> None:
    checked = check_number(raw)
    assert (checked.number is None) != (checked.refusal is None)
    if checked.number is not None:
        assert re.fullmatch(r"\+?[0-9]{7,15}", checked.number)


def test_min_digits_is_configurable() -> None:
    assert check_number("65521", min_digits=5).number == "65521"
    assert check_number("65521", min_digits=7).refusal == "internal"


def test_an_opted_out_number_gets_nothing() -> None:
    record = call()
    decision = decide(record, settings(), AGENT, opted_out=True, last_sms_at=None,
                      now=record.ended_at)
    assert not decision.send and decision.reason == "opted_out"


def test_no_second_sms_to_one_number_within_the_quiet_time() -> None:
    record = call()
    s = settings(quiet_seconds=3600)
    p = plan(record, s)
    now = record.ended_at
    inside = check_history(p, s, opted_out=False, last_sms_at=now - 3599, now=now)
    outside = check_history(p, s, opted_out=False, last_sms_at=now - 3601, now=now)
    assert not inside.send and inside.reason == "quiet_time"
    assert outside.send and outside.plan == p


def test_a_template_naming_an_agent_detail_the_agent_lacks_is_not_sent() -> None:
    record = call()
    missing = plan_sms(record, settings(), AgentContact(name="王芳", mobile=None),
                       now=record.ended_at)
    assert not isinstance(missing, SmsPlan) and missing.reason == "missing_agent_details"
    # the name alone is enough for a template that names only the agent
    s = settings(rules=[{"line": "front-desk", "after": "answered",
                         "template": "我是{agent_name}"}])
    assert plan(record, s, agent=None).text == "我是王芳"   # the record's agent name


def test_the_idempotency_key_is_stable_per_call_and_kind_and_carries_no_number() -> None:
    a, b = plan(call("1.1")), plan(call("1.1"))
    assert a.idempotency_key == b.idempotency_key == idempotency_key("pbx1", "1.1", "answered")
    assert idempotency_key("pbx1", "1.1", "missed") != a.idempotency_key
    assert idempotency_key("pbx1", "1.2", "answered") != a.idempotency_key
    assert idempotency_key("pbx2", "1.1", "answered") != a.idempotency_key
    assert "13800138000" not in a.idempotency_key and "1.1" not in a.idempotency_key


class History:
    def __init__(self, opted_out: set[str], last: dict[str, float]) -> None:
        self.opted_out, self.last = opted_out, last
        self.asked: list[str] = []

    async def is_opted_out(self, number: str) -> bool:
        self.asked.append(number)
        return number in self.opted_out

    async def last_sms_at(self, number: str) -> float | None:
        return self.last.get(number)


async def test_decide_with_history_asks_about_the_normalised_number_only() -> None:
    record = call(caller="+86 138 0013 8000")
    history = History({"+8613800138000"}, {})
    decision = await decide_with_history(record, settings(), AGENT, history, now=record.ended_at)
    assert decision.reason == "opted_out" and history.asked == ["+8613800138000"]
    internal = History(set(), {})
    await decide_with_history(call(caller="1001"), settings(), AGENT, internal,
                              now=record.ended_at)
    assert internal.asked == []
