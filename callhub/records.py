"""Finished call records: what the correlator emits and everything downstream consumes.

Times are POSIX seconds (floats, UTC) as Asterisk stamps its events; `to_dict`
turns them into ISO 8601 strings for JSON. Field names follow DESIGN.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any, Literal

Direction = Literal["inbound", "outbound", "internal"]
Outcome = Literal["answered", "abandoned", "missed", "unanswered"]
AttemptResult = Literal["answered", "no_answer", "busy", "unavailable", "cancelled"]
HangupBy = Literal["external", "agent", "system"]
RecordSource = Literal["ami", "cel"]

OUTCOMES: tuple[str, ...] = ("answered", "abandoned", "missed", "unanswered")
REASONS: tuple[str, ...] = (
    "in_ivr",
    "in_queue",
    "while_ringing",
    "no_agent_on_duty",
    "no_agent_available",
    "not_answered",
    "voicemail",
)
ATTEMPT_RESULTS: tuple[str, ...] = ("answered", "no_answer", "busy", "unavailable", "cancelled")

TIME_FIELDS = ("arrived_at", "ring_started_at", "answered_at", "ended_at")
ATTEMPT_TIME_FIELDS = ("offered_at", "ring_started_at", "ended_at")


@dataclass(slots=True)
class Attempt:
    """One offer of the call to one agent device."""

    interface: str
    agent_name: str | None
    offered_at: float
    ring_started_at: float | None = None
    ended_at: float | None = None
    result: AttemptResult | None = None
    ring_seconds: float = 0.0


@dataclass(slots=True)
class Transfer:
    """A transfer of an answered call to another device."""

    type: Literal["blind", "attended"]
    to: str
    at: float


@dataclass(slots=True)
class CallRecord:
    """Everything that shared one Linkedid on one PBX, finished."""

    pbx: str
    linkedid: str
    direction: Direction
    line: str | None
    called_number: str | None
    caller_number: str | None
    caller_name: str | None
    arrived_at: float
    ring_started_at: float | None
    answered_at: float | None
    ended_at: float
    ring_seconds: float
    rings: int
    wait_seconds: float
    talk_seconds: float
    hold_seconds: float
    outcome: Outcome
    reason: str | None
    voicemail: bool
    short_abandon: bool
    agent: str | None
    agent_name: str | None
    hangup_by: HangupBy | None
    hangup_cause: int | None
    queue: str | None
    incomplete: bool = False
    # Where the record was rebuilt from: "ami" (the live event stream) or "cel"
    # (Asterisk's CEL table, for calls no AMI session saw).
    source: RecordSource = "ami"
    # True when rings and ring_seconds are estimated rather than measured: CEL has no
    # ringing event, so they run from the agent leg's creation to its answer or end.
    rings_estimated: bool = False
    transfers: list[Transfer] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    # Some value from the PBX was longer than its column and was cut (see `bounded`).
    truncated: bool = False

    @property
    def external_number(self) -> str | None:
        """The outside party's number: the caller inbound, the dialled number outbound."""
        return self.called_number if self.direction == "outbound" else self.caller_number

    def to_plain(self) -> dict[str, Any]:
        """`to_dict` with times left as POSIX seconds: exact, and cheap enough for every
        finished call on its way to the spool (`from_dict` reads both)."""
        data = {name: getattr(self, name) for name in _CALL_FIELDS}
        data["transfers"] = [{"type": t.type, "to": t.to, "at": t.at} for t in self.transfers]
        data["attempts"] = [{name: getattr(a, name) for name in _ATTEMPT_FIELDS}
                            for a in self.attempts]
        return data

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: times as ISO 8601 UTC strings, field names as in DESIGN.md.

        What `dataclasses.asdict` gives, built directly (asdict deep-copies every
        value, several times slower).
        """
        data = self.to_plain()
        for key in TIME_FIELDS:
            data[key] = iso(data[key])
        for transfer in data["transfers"]:
            transfer["at"] = iso(transfer["at"])
        for attempt in data["attempts"]:
            for key in ATTEMPT_TIME_FIELDS:
                attempt[key] = iso(attempt[key])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], dropped: set[str] | None = None) -> CallRecord:
        """The inverse of `to_dict` and of `to_plain` (used by the spool and tests).

        Fields this version does not know (a spool written by a newer callhub, read
        after a downgrade) are left out, and their names added to `dropped`: the call
        is stored without them rather than lost."""
        values = dict(data)
        for key in TIME_FIELDS:
            values[key] = parse_iso(values.get(key))
        attempts = values.get("attempts", [])
        try:  # the names are looked at only when they fail: this runs for every spooled call
            values["attempts"] = [_attempt(a) for a in attempts]
        except TypeError:
            values["attempts"] = [_attempt(_known(a, _ATTEMPT_NAMES, dropped))
                                  for a in attempts]
        values["transfers"] = [
            Transfer(type=t["type"], to=t["to"], at=parse_iso(t["at"]) or 0.0)
            for t in values.get("transfers", [])
        ]
        try:
            return cls(**values)
        except TypeError:
            if _CALL_NAMES.issuperset(values):
                raise
            return cls(**_known(values, _CALL_NAMES, dropped))


def _attempt(data: dict[str, Any]) -> Attempt:
    return Attempt(**{k: parse_iso(v) if k in ATTEMPT_TIME_FIELDS else v
                      for k, v in data.items()})


def _known(values: dict[str, Any], names: frozenset[str],
           dropped: set[str] | None) -> dict[str, Any]:
    """`values` without the keys not in `names` (their names go to `dropped`)."""
    unknown = values.keys() - names
    if dropped is not None:
        dropped.update(unknown)
    return {k: v for k, v in values.items() if k not in unknown}


# The longest value each free-text field from the PBX may have: the size of its column
# (callhub/store/tables.py uses these). Longer values are cut where they enter.
FIELD_LIMITS: dict[str, int] = {
    "caller_name": 256,
    "caller_number": 64,
    "called_number": 64,
    "line": 128,
    "queue": 128,
    "agent_name": 256,
}
MIN_KEPT = 80  # a caller name keeps at least this much (numbers' columns are 64 long)


def cut(value: str, limit: int) -> str:
    """`value` cut to `limit` characters (code points: never inside a UTF-8 sequence),
    NUL characters removed (PostgreSQL text cannot hold them)."""
    value = value.replace("\x00", "")
    if len(value) <= limit:
        return value
    return value[:limit]


def bounded(record: CallRecord) -> CallRecord:
    """The record with every PBX value cut to its column (`FIELD_LIMITS`) and flagged
    `truncated`, so that one odd value cannot make the database refuse the call; the
    same object when nothing needed it."""
    changes: dict[str, Any] = {}
    for name, limit in FIELD_LIMITS.items():
        value = getattr(record, name)
        if value is not None and (len(value) > limit or "\x00" in value):
            changes[name] = cut(value, limit)
    attempts = record.attempts
    if any(a.agent_name is not None and len(a.agent_name) > FIELD_LIMITS["agent_name"]
           for a in attempts):
        attempts = [replace(a, agent_name=cut(a.agent_name, FIELD_LIMITS["agent_name"]))
                    if a.agent_name is not None else a for a in attempts]
        changes["attempts"] = attempts
    if not changes:
        return record
    return replace(record, **changes, truncated=True)


_CALL_FIELDS = tuple(f.name for f in fields(CallRecord))
_ATTEMPT_FIELDS = tuple(f.name for f in fields(Attempt))
_CALL_NAMES = frozenset(_CALL_FIELDS)
_ATTEMPT_NAMES = frozenset(_ATTEMPT_FIELDS)


def iso(ts: float | None) -> str | None:
    """POSIX seconds to an ISO 8601 UTC string with milliseconds."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def parse_iso(value: Any) -> Any:
    """ISO 8601 string back to POSIX seconds; anything else passes through."""
    if isinstance(value, str):
        return datetime.fromisoformat(value).timestamp()
    return value
