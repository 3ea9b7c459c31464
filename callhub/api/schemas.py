"""What the API answers, as typed dicts: every JSON response body, as documented.

Handlers build plain dicts from the store's rows; `callhub.api.base.reply`
encodes them with orjson. The OpenAPI document is generated from these
models, and with response validation on (the test suite) the bytes sent are
checked against the model the operation documents for that status, so a
response that drifts from its documented schema fails loudly (a 500 in the
log, and the schemathesis conformance tests) instead of reaching a client.
Production skips the check: on a page of 50 calls it cost more than the
encoding itself (bench/README.md).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, NotRequired

from pydantic import AwareDatetime, ConfigDict, Field, PlainSerializer, WithJsonSchema
from typing_extensions import TypedDict

from callhub.records import OUTCOMES, REASONS
from callhub.routing.rota_file import MAX_RING_TIMEOUT
from callhub.store.resolution import RESOLUTIONS, SATISFACTIONS
from callhub.store.resolution_stats import RESOLUTION_FIGURES_DOC
from callhub.store.stats import FIGURES_DOC, GROUPS


def _iso(value: datetime) -> str:
    return value.isoformat()


Time = Annotated[AwareDatetime, PlainSerializer(_iso, return_type=str, when_used="json"),
                 WithJsonSchema({"type": "string", "format": "date-time"})]
"""An aware timestamp, written as ISO 8601 with its offset (`+00:00`, as `isoformat`)."""

CLOSED = ConfigDict(extra="forbid")
Direction = Literal["inbound", "outbound", "internal"]
Outcome = Literal[OUTCOMES]  # type: ignore[valid-type]
Reason = Literal[REASONS]  # type: ignore[valid-type]
Seconds = Annotated[int, Field(ge=1, le=MAX_RING_TIMEOUT)]


class ErrorBody(TypedDict):
    """Every error: a code, a sentence, and for a 400 the parameter at fault."""

    __pydantic_config__ = CLOSED  # type: ignore[misc]
    error: str
    message: str
    parameter: NotRequired[Annotated[str, Field(description="The bad parameter (400 only).")]]


class Attempt(TypedDict):
    """One agent's phone offered the call."""

    __pydantic_config__ = CLOSED  # type: ignore[misc]
    id: NotRequired[int]
    call_id: NotRequired[int]
    seq: int
    interface: str
    agent_name: str | None
    offered_at: Time
    ring_started_at: Time | None
    ended_at: Time | None
    result: str | None
    ring_seconds: float


class WorklistRef(TypedDict):
    """The worklist entry a call is on."""

    __pydantic_config__ = CLOSED  # type: ignore[misc]
    id: int
    status: Literal["pending", "handled", "dismissed"]


SmsStatus = Literal["queued", "sending", "sent", "failed", "expired"]
Resolution = Literal[RESOLUTIONS]  # type: ignore[valid-type]
Satisfaction = Literal[SATISFACTIONS]  # type: ignore[valid-type]


class Call(TypedDict):
    """One call record (DESIGN.md), with its worklist entry; `attempts` on GET /calls/{id}."""

    __pydantic_config__ = CLOSED  # type: ignore[misc]
    id: int
    pbx: str
    linkedid: str
    direction: Direction
    line: str | None
    called_number: str | None
    caller_number: str | None
    caller_name: str | None
    external_number: str | None
    arrived_at: Time
    ring_started_at: Time | None
    answered_at: Time | None
    ended_at: Time
    ring_seconds: float
    rings: int
    wait_seconds: float
    talk_seconds: float
    hold_seconds: float
    outcome: Outcome
    reason: Reason | None
    voicemail: bool
    short_abandon: bool
    agent: str | None
    agent_name: str | None
    hangup_by: str | None
    hangup_cause: int | None
    queue: str | None
    incomplete: bool
    truncated: Annotated[bool, Field(description="A value from the PBX was longer than its "
                                                 "column and was cut (docs/reliability.md).")]
    source: Annotated[Literal["ami", "cel"], Field(
        description="Where the record was rebuilt from: the live AMI stream, or Asterisk's "
                    "CEL table for a gap no AMI session saw (docs/reliability.md).")]
    rings_estimated: Annotated[bool, Field(
        description="rings and ring_seconds are estimated (CEL has no ringing event: they "
                    "run from the agent leg's creation to its answer or end).")]
    transfers: list[dict[str, Any]]
    category: str | None
    note: str | None
    resolution: Annotated[Resolution | None, Field(
        description="The caller's matter: resolved, referred (to resolution_department), "
                    "pending or unresolved; null: none set yet (docs/api.md).")]
    resolution_department: Annotated[str | None, Field(
        description="The department a referred matter went to.")]
    resolution_at: Annotated[Time | None, Field(description="When the resolution was set.")]
    resolution_by: Annotated[str | None, Field(
        description="Who set it: the token's role, after the name the client gave "
                    "(`王芳 (supervisor)`).")]
    worklist: WorklistRef | None
    sms_status: Annotated[SmsStatus | None, Field(
        description="The status of the call's latest SMS in the outbox (docs/sms.md); null: "
                    "none queued.")]
    attempts: NotRequired[list[Attempt]]


class CallPage(TypedDict):
    """A page of calls, newest first."""

    __pydantic_config__ = CLOSED  # type: ignore[misc]
    items: list[Call]
    next_cursor: Annotated[str | None, Field(description="Pass as `cursor` for the next page; "
                                                          "null on the last.")]


class EntryCall(TypedDict):
    """A missed call of a worklist entry."""

    __pydantic_config__ = CLOSED  # type: ignore[misc]
    id: int
    linkedid: str
    arrived_at: Time
    outcome: Outcome
    reason: Reason | None
    ring_seconds: float
    wait_seconds: float
    caller_name: str | None
    called_number: str | None


class WorklistEntry(TypedDict):
    """A caller to call back: their missed calls on one line, and how it was handled."""

    __pydantic_config__ = CLOSED  # type: ignore[misc]
    id: int
    pbx: str
    number: str
    line: str | None
    status: Literal["pending", "handled", "dismissed"]
    first_missed_at: Time
    last_missed_at: Time
    call_count: int
    handled_at: Time | None
    handled_by: str | None
    how: Literal["callback", "called_again", "manual"] | None
    handled_call_id: int | None
    time_to_callback_seconds: float | None
    note: str | None
    calls: list[EntryCall]


class WorklistPage(TypedDict):
    """A page of worklist entries, pending first."""

    __pydantic_config__ = CLOSED  # type: ignore[misc]
    items: list[WorklistEntry]
    next_cursor: str | None


class Followup(TypedDict):
    """A follow-up call to make, with its call's name, line and category."""

    __pydantic_config__ = CLOSED  # type: ignore[misc]
    id: int
    call_id: int
    pbx: str
    number: str
    due_at: Time
    status: Literal["open", "done", "cancelled"]
    source: Literal["rule", "manual"]
    category: str | None
    created_at: Time
    created_by: str | None
    closed_at: Time | None
    closed_by: str | None
    how: Literal["callback", "manual", "cancelled", "category_changed"] | None
    closed_call_id: int | None
    note: str | None
    outcome: Annotated[Resolution | None, Field(
        description="What the follow-up found of the caller's matter (as a call's "
                    "resolution); null: not recorded.")]
    satisfaction: Annotated[Satisfaction | None, Field(
        description="The caller's satisfaction: satisfied, fair, dissatisfied, or "
                    "unreachable (not reached); null: not recorded.")]
    rated_at: Annotated[Time | None, Field(description="When outcome or satisfaction "
                                                       "was recorded.")]
    rated_by: Annotated[str | None, Field(description="Who recorded them.")]
    caller_name: str | None
    line: str | None
    direction: Direction
    call_arrived_at: Time
    call_category: str | None
    due: Annotated[bool, Field(description="Open and due by now.")]
    overdue: Annotated[bool, Field(description="Open longer than [followups] overdue_after "
                                               "past due.")]


class FollowupList(TypedDict):
    """Follow-ups; `next_cursor` on the paged list."""

    __pydantic_config__ = CLOSED  # type: ignore[misc]
    items: list[Followup]
    next_cursor: NotRequired[str | None]


class Agent(TypedDict):
    """An agent of the rota."""

    __pydantic_config__ = CLOSED  # type: ignore[misc]
    id: str
    name: str
    interface: Annotated[str, Field(examples=["PJSIP/1001"])]
    active: bool
    cleared: bool
    ring_timeout: NotRequired[Annotated[Seconds, Field(
        description="Seconds this agent's phone rings on every line (unless the line's "
                    "ring_timeouts names the agent); absent: the line's ring_timeout.")]]
    mobile: NotRequired[Annotated[str, Field(
        description="The agent's mobile number, named in the SMS after a call.")]]


class AgentList(TypedDict):
    __pydantic_config__ = CLOSED  # type: ignore[misc]
    agents: list[Agent]


class Shift(TypedDict):
    """Who is on duty on some weekdays between two times."""

    __pydantic_config__ = CLOSED  # type: ignore[misc]
    name: str
    days: list[str]
    start: str
    end: str
    agents: list[str]


class RotaException(TypedDict):
    """A date that differs from the shifts: closed, other hours, absences, swaps."""

    __pydantic_config__ = CLOSED  # type: ignore[misc]
    name: str
    date: str
    start: NotRequired[str]
    end: NotRequired[str]
    closed: NotRequired[bool]
    absent: NotRequired[list[str]]
    swap: NotRequired[dict[str, str]]
    extra: NotRequired[list[str]]


class Line(TypedDict):
    """A line as in the rota file's [[lines]] table."""

    __pydantic_config__ = CLOSED  # type: ignore[misc]
    name: str
    dids: list[str]
    rotation: list[str]
    ring_timeout: Annotated[Seconds, Field(description="Seconds each agent rings (default "
                                                       "15), and the fallback.")]
    ring_timeouts: NotRequired[Annotated[dict[str, Seconds], Field(
        description="Agent id -> seconds on this line; beats the agent's own ring_timeout.",
        examples=[{"wang": 25}])]]
    fallback: NotRequired[str]
    shifts: list[Shift]
    exceptions: NotRequired[list[RotaException]]


class Rotas(TypedDict):
    """Every line's rota, the rota's time zone and fallback."""

    __pydantic_config__ = CLOSED  # type: ignore[misc]
    timezone: str
    fallback: NotRequired[str]
    lines: list[Line]


class OnDutyAgent(TypedDict):
    __pydantic_config__ = CLOSED  # type: ignore[misc]
    order: Annotated[int | None, Field(description="Place in the next call's offer order; "
                                                   "null when not taking calls.")]
    id: str
    name: str
    interface: str
    mobile: str | None
    ring_timeout: int
    status: Literal["takes calls", "inactive", "not cleared (trainee)"]


class OnDuty(TypedDict):
    """Who is on duty on a line at a moment, in the order the next call is offered."""

    __pydantic_config__ = CLOSED  # type: ignore[misc]
    line: str
    dids: list[str]
    at: str
    timezone: str
    ring_timeout: int
    fallback: str | None
    previous_agent: str | None
    on_duty: list[OnDutyAgent]
    next_change: str | None


def _figure(name: str) -> Any:
    ratio = "rate" in name or "level" in name or name.startswith(("avg", "p90", "median"))
    return Annotated[float | None if ratio else int, Field(description=FIGURES_DOC[name])]


_FIGURES: dict[str, Any] = {name: _figure(name) for name in FIGURES_DOC}
_FIGURES.update({name: Annotated[float | None if name.endswith("_rate") else int,
                                 Field(description=RESOLUTION_FIGURES_DOC[name])]
                 for name in RESOLUTION_FIGURES_DOC})
Figures = TypedDict("Figures", _FIGURES)  # type: ignore[misc]
Figures.__doc__ = "The desk's figures over a period (or one group of it)."
Figures.__pydantic_config__ = CLOSED  # type: ignore[attr-defined]
Group = TypedDict("Group", {
    "key": Annotated[str | None, Field(description="The hour (local, with its offset), day, "
                                                   "agent or line; null: none known.")],
    "agent_name": NotRequired[str | None],
    "target_rings": NotRequired[Annotated[int, Field(description=(
        "group_by=line: the line's ring target, used for answered_within_target."))]],
    "answer_rate_target": NotRequired[Annotated[float, Field(description=(
        "group_by=line: the share of the line's inbound calls to answer within "
        "target_rings."))]],
    **_FIGURES})  # type: ignore[misc]
Group.__doc__ = "The figures of one hour, day, agent or line."
Group.__pydantic_config__ = CLOSED  # type: ignore[attr-defined]


class Target(TypedDict):
    """A line's targets ([lines] in the config; the default for lines without one)."""

    __pydantic_config__ = CLOSED  # type: ignore[misc]
    target_rings: Annotated[int, Field(description=(
        "An answered call is within target when it rang at most this many times."))]
    answer_rate_target: Annotated[float, Field(description=(
        "The share of inbound calls to answer within target_rings (0..1)."))]


class LineTargetFigures(TypedDict):
    """One line over the period, against its own targets."""

    __pydantic_config__ = CLOSED  # type: ignore[misc]
    line: str
    target_rings: Annotated[int, Field(description="The line's ring target.")]
    answer_rate_target: Annotated[float, Field(description="The line's answer-rate target.")]
    inbound: Annotated[int, Field(description=FIGURES_DOC["inbound"])]
    answered: Annotated[int, Field(description=FIGURES_DOC["answered"])]
    answered_within_target: Annotated[int, Field(description=(
        "Answered with rings <= target_rings."))]
    within_target_rate: Annotated[float | None, Field(description=(
        "answered_within_target / inbound; null without inbound calls."))]
    target_met: Annotated[bool | None, Field(description=(
        "within_target_rate >= answer_rate_target; null without inbound calls."))]


Stats = TypedDict("Stats", {
    "from": Time,
    "to": Time,
    "group_by": Literal[GROUPS] | None,  # type: ignore[valid-type]
    "rings": int,
    "seconds": float,
    "short_abandons_excluded": bool,
    "totals": Figures,
    "groups": NotRequired[list[Group]],
    "default_target": Annotated[Target, Field(description=(
        "The targets of lines without a [lines] table of their own, and of calls with "
        "no line."))],
    "line_targets": Annotated[list[LineTargetFigures], Field(description=(
        "Every configured line (and any other line with calls) against its own targets."))],
})
Stats.__doc__ = "Figures over a period: totals, and one block per group with group_by."
Stats.__pydantic_config__ = CLOSED  # type: ignore[attr-defined]


class SmsMessage(TypedDict):
    """One SMS of the outbox (docs/sms.md)."""

    __pydantic_config__ = CLOSED  # type: ignore[misc]
    id: int
    pbx: str
    linkedid: str
    call_id: Annotated[int | None, Field(description="The call's id (GET /calls/{id}).")]
    kind: Literal["answered", "missed"]
    line: str | None
    to_number: str
    text: str
    params: dict[str, str]
    template_code: str | None
    status: SmsStatus
    attempts: int
    next_attempt_at: Time
    last_error: str | None
    provider_id: str | None
    idempotency_key: str
    call_ended_at: Time
    created_at: Time
    sent_at: Time | None


class SmsPage(TypedDict):
    """A page of the SMS outbox, newest first."""

    __pydantic_config__ = CLOSED  # type: ignore[misc]
    items: list[SmsMessage]
    next_cursor: str | None


class SmsOptout(TypedDict):
    """A number that gets no SMS."""

    __pydantic_config__ = CLOSED  # type: ignore[misc]
    number: str
    created_at: Time
    by: str | None


class SmsOptoutList(TypedDict):
    __pydantic_config__ = CLOSED  # type: ignore[misc]
    items: list[SmsOptout]
