"""Whether a finished call gets an SMS, and which text: pure functions, no I/O.

The store calls these in the transaction that saves the call, so the
outbox row is written with it (or not at all):

    plan = plan_sms(record, settings, agent, now=now)       # who, what, which key
    if isinstance(plan, SmsPlan):
        decision = check_history(plan, settings,
                                 opted_out=<is plan.to on the opt-out list>,
                                 last_sms_at=<last queued-or-sent SMS to plan.to>,
                                 now=now)
        if decision.send: <insert plan into the outbox>

`decide()` does both from values, `decide_with_history()` from an async
`RecipientHistory` (the store's queries).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from callhub.records import CallRecord
from callhub.sms.numbers import check_number
from callhub.sms.settings import Kind, SmsSettings, template_fields

SkipReason = Literal[
    "not_inbound", "incomplete", "too_old", "no_rule", "rule_off", "short_abandon",
    "withheld", "not_a_number", "internal", "missing_agent_details", "opted_out",
    "quiet_time",
]
SKIP_REASONS: tuple[str, ...] = (
    "not_inbound", "incomplete", "too_old", "no_rule", "rule_off", "short_abandon",
    "withheld", "not_a_number", "internal", "missing_agent_details", "opted_out",
    "quiet_time",
)


@dataclass(frozen=True, slots=True)
class AgentContact:
    """The agent named in the text: the rota's agent name and `mobile`."""

    name: str | None = None
    mobile: str | None = None


@dataclass(frozen=True, slots=True)
class SmsPlan:
    """One SMS to queue for one call. `params` fill the template (and Aliyun's)."""

    pbx: str
    linkedid: str
    kind: Kind
    line: str | None
    to: str
    text: str
    params: Mapping[str, str]
    template_code: str | None
    idempotency_key: str
    call_id: str
    call_ended_at: float


@dataclass(frozen=True, slots=True)
class Skip:
    """No SMS for this call, and why (a closed set, fit for a metric label)."""

    reason: SkipReason
    line: str | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """`send` with the plan, or not with the reason."""

    send: bool
    plan: SmsPlan | None = None
    reason: SkipReason | None = None
    line: str | None = field(default=None)


class RecipientHistory(Protocol):
    """What the store knows about a (normalised) number."""

    async def is_opted_out(self, number: str) -> bool: ...

    async def last_sms_at(self, number: str) -> float | None:
        """When the last SMS to this number was queued or sent (failed ones do not count)."""
        ...


def idempotency_key(pbx: str, linkedid: str, kind: Kind) -> str:
    """Stable per (pbx, linkedid, kind): a resend after a crash carries the same key.

    A hash, so the key carries no personal data and fits any gateway's limit.
    """
    digest = hashlib.sha256(f"{pbx}\x1f{linkedid}\x1f{kind}".encode()).hexdigest()
    return f"callhub-{digest[:32]}"


def call_kind(record: CallRecord, include_short_abandons: bool = False
              ) -> Kind | SkipReason:
    """'answered' or 'missed' for an inbound call, else why it gets nothing."""
    if record.direction != "inbound":
        return "not_inbound"
    if record.incomplete:
        return "incomplete"
    if record.outcome == "answered":
        return "answered"
    if record.short_abandon and not include_short_abandons:
        return "short_abandon"
    return "missed"


def render(template: str, params: Mapping[str, str]) -> str:
    """The template with its placeholders filled, outer whitespace trimmed."""
    return template.format_map(dict(params)).strip()


def plan_sms(record: CallRecord, settings: SmsSettings, agent: AgentContact | None = None,
             *, now: float, line: str | None = None) -> SmsPlan | Skip:
    """What to send after this call, before looking at the number's history.

    `line` defaults to the record's line name. `agent` defaults to the
    record's agent name with no mobile; a template that names a detail the
    agent lacks is not sent (`missing_agent_details`) rather than sent broken.
    """
    line = record.line if line is None else line
    kind_or_reason = call_kind(record, settings.include_short_abandons)
    if kind_or_reason != "answered" and kind_or_reason != "missed":
        return Skip(kind_or_reason, line)
    kind: Kind = kind_or_reason
    if now - record.ended_at > settings.expire_seconds:
        return Skip("too_old", line)
    rule = settings.rule_for(line)
    if rule is None:
        return Skip("no_rule", line)
    if kind not in rule.kinds:
        return Skip("rule_off", line)
    check = check_number(record.caller_number, settings.min_digits)
    if check.number is None:
        return Skip(check.refusal or "not_a_number", line)
    agent = agent or AgentContact()
    params = {
        "agent_name": agent.name or record.agent_name or "",
        "agent_mobile": agent.mobile or "",
        "line": line or "",
        "org": settings.org,
    }
    template = rule.template_for(kind)
    if any(not params[name] for name in template_fields(template) if name.startswith("agent_")):
        return Skip("missing_agent_details", line)
    return SmsPlan(
        pbx=record.pbx, linkedid=record.linkedid, kind=kind, line=line, to=check.number,
        text=render(template, params), params=params,
        template_code=settings.aliyun_template_code(rule, kind),
        idempotency_key=idempotency_key(record.pbx, record.linkedid, kind),
        call_id=f"{record.pbx}:{record.linkedid}", call_ended_at=record.ended_at,
    )


def check_history(plan: SmsPlan, settings: SmsSettings, *, opted_out: bool,
                  last_sms_at: float | None, now: float) -> Decision:
    """Never to an opted-out number, never twice to one number within quiet_seconds."""
    if opted_out:
        return Decision(False, reason="opted_out", line=plan.line)
    if last_sms_at is not None and now - last_sms_at < settings.quiet_seconds:
        return Decision(False, reason="quiet_time", line=plan.line)
    return Decision(True, plan=plan, line=plan.line)


def decide(record: CallRecord, settings: SmsSettings, agent: AgentContact | None = None, *,
           opted_out: bool, last_sms_at: float | None, now: float,
           line: str | None = None) -> Decision:
    """`plan_sms` then `check_history`, with the history given as values."""
    plan = plan_sms(record, settings, agent, now=now, line=line)
    if isinstance(plan, Skip):
        return Decision(False, reason=plan.reason, line=plan.line)
    return check_history(plan, settings, opted_out=opted_out, last_sms_at=last_sms_at, now=now)


async def decide_with_history(record: CallRecord, settings: SmsSettings,
                              agent: AgentContact | None, history: RecipientHistory, *,
                              now: float, line: str | None = None) -> Decision:
    """`decide`, asking `history` about the number only when there is one to ask about."""
    plan = plan_sms(record, settings, agent, now=now, line=line)
    if isinstance(plan, Skip):
        return Decision(False, reason=plan.reason, line=plan.line)
    return check_history(plan, settings, opted_out=await history.is_opted_out(plan.to),
                         last_sms_at=await history.last_sms_at(plan.to), now=now)
