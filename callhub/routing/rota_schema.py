"""The rota file's shape as pydantic models: each table's keys, types and own checks.

What needs more than one table (an agent a rotation names, a DID two lines
claim) is checked by `rota_file` when it builds the routing model. The text
values (times, weekdays, names) are parsed here too, so the API and the file
read them alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, time
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, StrictBool, StrictInt, model_validator

from callhub.config.problems import keyed, problem
from callhub.config.values import time_zone
from callhub.routing.model import DEFAULT_RING_TIMEOUT, WEEKDAYS

MAX_RING_TIMEOUT = 600
# Line names and agent ids are kept in columns of 128 characters (the shared rotation
# position, the worklist, the SMS outbox): a longer one made PostgreSQL refuse every
# shared-mode call of its line and, once in the state file, every reconcile after it.
MAX_NAME = 128
FULL_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def text_problem(value: str) -> str | None:
    """Why a name, id, DID or device is unusable, or None. Refused rather than cleaned up,
    so what is saved is exactly what was given (an API path names the same line)."""
    if not value.strip():
        return "must not be empty"
    if value != value.strip():
        return f"must not start or end with spaces: {value!r}"
    if not value.isprintable():
        return f"must not contain control characters: {value!r}"
    return None


def parse_time(value: Any, allow_24: bool = False) -> tuple[time, bool]:
    """'HH:MM' (or 'HH:MM:00') to a time; '24:00' as (00:00, True) where allowed."""
    if isinstance(value, time):
        return value, False
    if not isinstance(value, str):
        raise ValueError(f'expected "HH:MM", got {value!r}')
    text = value.strip()
    if allow_24 and text in ("24:00", "24:00:00"):
        return time(0, 0), True
    try:
        parts = [int(p) for p in text.split(":")]
        if len(parts) not in (2, 3) or len(text.split(":")[0]) > 2:
            raise ValueError
        at = time(parts[0], parts[1], parts[2] if len(parts) == 3 else 0)
    except ValueError:
        raise ValueError(f'expected "HH:MM", got {value!r}') from None
    if at.second:  # shifts are whole minutes (the rota is saved, and on duty cached, so)
        raise ValueError(f'whole minutes only: expected "HH:MM", got {value!r}')
    return at, False


def parse_days(value: Any) -> frozenset[int]:
    """["mon-fri", "sun"] / "daily" / "weekdays" to weekday numbers (0 = Monday)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise ValueError(f"expected a list of weekdays such as [\"mon-fri\"], got {value!r}")
    days: set[int] = set()
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"expected a weekday name, got {item!r}")
        word = item.strip().lower()
        if word in ("daily", "all", "mon-sun"):
            days.update(range(7))
        elif word == "weekdays":
            days.update(range(5))
        elif word == "weekends":
            days.update((5, 6))
        elif "-" in word:
            first, _, last = word.partition("-")
            a, b = _weekday(first, item), _weekday(last, item)
            day = a
            days.add(day)
            while day != b:  # ranges may wrap: "fri-mon"
                day = (day + 1) % 7
                days.add(day)
        else:
            days.add(_weekday(word, item))
    return frozenset(days)


def _weekday(word: str, item: str) -> int:
    word = word.strip()
    if word in FULL_WEEKDAYS:
        return FULL_WEEKDAYS.index(word)
    if word not in WEEKDAYS:
        raise ValueError(f"unknown weekday {item!r} (use mon, tue, wed, thu, fri, sat, sun)")
    return WEEKDAYS.index(word)


# ---- field types: each says what is wrong in the rota's words --------------------------

def _text(value: Any) -> Any:
    if not isinstance(value, str):
        raise problem(f"expected str, got {value!r}")
    trouble = text_problem(value)
    if trouble:
        raise problem(trouble)
    return value


def _name(value: Any) -> Any:
    """A line name or agent id (or the name that stands for one): text of MAX_NAME at most."""
    value = _text(value)
    if len(value) > MAX_NAME:
        raise problem(f"must be at most {MAX_NAME} characters, got {len(value)}")
    return value


def _texts(value: Any) -> Any:
    if not isinstance(value, list):
        raise problem(f"expected list, got {value!r}")
    if not all(isinstance(v, str) and not text_problem(v) for v in value):
        raise problem("expected a list of non-empty strings without surrounding spaces or "
                      f"control characters, got {value!r}")
    dupes = sorted({v for v in value if value.count(v) > 1})
    if dupes:
        raise problem(f"listed twice: {', '.join(dupes)}")
    return tuple(value)


def _seconds(value: Any) -> Any:
    """A ring timeout: whole seconds, 1..MAX_RING_TIMEOUT."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise problem(f"expected int, got {value!r}")
    if not 1 <= value <= MAX_RING_TIMEOUT:
        raise problem(f"must be 1-{MAX_RING_TIMEOUT} seconds, got {value}")
    return value


def _target(value: Any) -> Any:
    value = _text(value)
    if any(c in value for c in "\"\\\n"):
        raise problem(f"must not contain quotes, backslashes or newlines: {value!r}")
    return value


def _interface(value: Any) -> Any:
    value = _text(value)
    if "/" not in value or any(c in value for c in "&,\"\\ "):
        raise problem(f"expected a device such as \"PJSIP/1001\", got {value!r}")
    return value


def _raising(parse: Any) -> Any:
    """A parser that raises ValueError, as a validator that says its message."""
    def validate(value: Any) -> Any:
        try:
            return parse(value)
        except ValueError as exc:
            raise problem(str(exc)) from None
    return validate


def _timezone(value: Any) -> Any:
    return time_zone(_text(value))


def _day(value: Any) -> date:
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise problem(f'expected "YYYY-MM-DD", got {value!r}') from None


def _swaps(value: Any) -> Any:
    if not isinstance(value, Mapping):
        raise problem(f"expected dict, got {value!r}")
    for k, v in value.items():
        if not isinstance(v, str) or not v:
            raise keyed(str(k), "expected an agent id")
    return dict(value)


OptionalText = Annotated[str | None, BeforeValidator(_text)]
Name = Annotated[str, BeforeValidator(_name)]
OptionalName = Annotated[str | None, BeforeValidator(_name)]
Texts = Annotated[tuple[str, ...], BeforeValidator(_texts)]
OptionalTexts = Annotated[tuple[str, ...] | None, BeforeValidator(_texts)]
Seconds = Annotated[StrictInt, BeforeValidator(_seconds)]
OptionalSeconds = Annotated[int | None, BeforeValidator(_seconds)]
Target = Annotated[str | None, BeforeValidator(_target)]
Time = Annotated[time | None, BeforeValidator(_raising(lambda v: parse_time(v)[0]))]
EndTime = Annotated[tuple[time, bool], BeforeValidator(_raising(
    lambda v: parse_time(v, allow_24=True)))]
Days = Annotated[frozenset[int], BeforeValidator(_raising(parse_days))]


def _until(value: Any) -> time | None:
    """An exception's end: '24:00' is the end of its day, as an end left out (docs/rota.md
    allows 24:00 as an end; an exception's was refused as 'expected "HH:MM"')."""
    at, midnight = parse_time(value, allow_24=True)
    return None if midnight else at


Until = Annotated[time | None, BeforeValidator(_raising(_until))]


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class AgentTable(_Table):
    id: OptionalName = None
    name: OptionalName = None
    interface: Annotated[str, BeforeValidator(_interface)]
    active: StrictBool = True
    cleared: StrictBool = True
    ring_timeout: OptionalSeconds = None
    mobile: OptionalText = None

    @model_validator(mode="after")
    def _named(self) -> AgentTable:
        if not (self.id or self.name):
            raise keyed("name", "required")
        return self


class ShiftTable(_Table):
    name: OptionalText = None
    days: Days = frozenset(range(7))
    start: Annotated[time, BeforeValidator(_raising(lambda v: parse_time(v)[0]))]
    end: EndTime
    agents: OptionalTexts = None

    @model_validator(mode="after")
    def _not_empty(self) -> ShiftTable:
        end, at_midnight = self.end
        if end == self.start and not at_midnight:
            raise keyed("end", f"equals start ({self.start.strftime('%H:%M')}); write 00:00 "
                               "to 24:00 for a whole day")
        return self


Day = Annotated[date, BeforeValidator(_day)]  # (a field named `date` would hide the type)


class ExceptionTable(_Table):
    date: Day
    name: OptionalText = None
    start: Time = None
    end: Until = None
    closed: StrictBool = False
    absent: Texts = ()
    swap: Annotated[dict[str, str], BeforeValidator(_swaps)] = {}
    extra: Texts = ()

    @model_validator(mode="after")
    def _one_date_of_changes(self) -> ExceptionTable:
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise keyed("end", "must be after start (an exception covers one date)")
        if not (self.closed or self.absent or self.swap or self.extra):
            raise keyed("closed", "an exception needs closed, absent, swap or extra")
        return self


class LineTable(_Table):
    name: Name
    dids: Texts = ()
    rotation: OptionalTexts = None
    shifts: list[ShiftTable] = []
    exceptions: list[ExceptionTable] = []
    ring_timeout: Seconds = DEFAULT_RING_TIMEOUT
    ring_timeouts: dict[str, Seconds] = {}
    fallback: Target = None


class RotaTable(_Table):
    timezone: Annotated[str | None, BeforeValidator(_timezone)] = None
    agents: list[AgentTable] = []
    lines: list[LineTable] = []
    fallback: Target = None

