"""Read and check a rota (TOML file or the same schema as JSON data).

Every error raises `RotaError` with a message that names where it is: the
line, the shift or exception, and the key (`line "hotline", shift "night":
end: expected "HH:MM", got "25:00"`). Nothing half-checked is ever returned.

Schema (see README "Routing by rota")::

    timezone = "Europe/Berlin"      # optional; default: the configured timezone
    fallback = "PJSIP/1000"         # optional; for calls on a DID no line lists

    [[agents]]
    id = "li"                       # what shifts and rotations refer to
    name = "Li Na"
    interface = "PJSIP/1001"
    active = true                   # default true
    cleared = true                  # default true; false: a trainee, takes no calls
    ring_timeout = 20               # optional: seconds li's phone rings (default: the line's)

    [[lines]]
    name = "hotline"
    dids = ["4008001004"]
    rotation = ["li", "wang"]       # default: first appearance in the shifts
    ring_timeout = 15               # seconds each agent rings (and the fallback)
    ring_timeouts = { wang = 25 }   # optional: per agent on this line; beats the agent's own
    fallback = "PJSIP/1000"         # group leader, or e.g. "Local/vm-hotline@voicemail"

    [[lines.shifts]]
    name = "day"
    days = ["mon-fri"]              # mon..sun, ranges, "daily"; default: daily
    start = "08:00"
    end = "17:00"                   # exclusive; <= start crosses midnight; "24:00" allowed
    agents = ["li", "wang"]         # default: the whole rotation

    [[lines.exceptions]]
    date = "2026-12-25"
    closed = true                   # or absent = [...], swap = {li = "wang"}, extra = [...]
    start = "12:00"                 # optional: only part of the day
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import tomllib
from collections.abc import Mapping
from datetime import date, time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from callhub.routing.model import (
    DEFAULT_RING_TIMEOUT,
    WEEKDAYS,
    Agent,
    DatedException,
    Line,
    Rota,
    Shift,
)

MAX_RING_TIMEOUT = 600


class RotaError(ValueError):
    """The rota is wrong; the message names the line, shift and key."""


class _Table:
    """Typed access to one table; errors carry `where` as a prefix."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, Mapping):
            raise RotaError(f"{where}: expected a table, got {data!r}")
        self.data = data
        self.where = where
        self.used: set[str] = set()

    def fail(self, key: str, problem: str) -> RotaError:
        return RotaError(f"{self.where}: {key}: {problem}")

    def get(self, key: str, kind: type, default: Any = None, required: bool = False) -> Any:
        self.used.add(key)
        if key not in self.data:
            if required:
                raise self.fail(key, "required")
            return default
        value = self.data[key]
        ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        if not ok:
            raise self.fail(key, f"expected {kind.__name__}, got {value!r}")
        return value

    def text(self, key: str, required: bool = False) -> str | None:
        value = self.get(key, str, None, required)
        if value is not None:
            problem = text_problem(value)
            if problem:
                raise self.fail(key, problem)
        return value if isinstance(value, str) else None

    def texts(self, key: str) -> tuple[str, ...] | None:
        value = self.get(key, list, None)
        if value is None:
            return None
        if not all(isinstance(v, str) and not text_problem(v) for v in value):
            raise self.fail(key, f"expected a list of non-empty strings without surrounding "
                                 f"spaces or control characters, got {value!r}")
        items = tuple(value)
        dupes = sorted({v for v in items if items.count(v) > 1})
        if dupes:
            raise self.fail(key, f"listed twice: {', '.join(dupes)}")
        return items

    def seconds(self, key: str, default: int | None) -> int | None:
        """A ring timeout: whole seconds, 1..MAX_RING_TIMEOUT."""
        value = self.get(key, int, default)
        if value is not None and not 1 <= value <= MAX_RING_TIMEOUT:
            raise self.fail(key, f"must be 1-{MAX_RING_TIMEOUT} seconds, got {value}")
        return value if isinstance(value, int) else None

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self.fail(unknown[0], "unknown key")


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
    """'HH:MM' (or 'HH:MM:SS') to a time; '24:00' as (00:00, True) where allowed."""
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
        return time(parts[0], parts[1], parts[2] if len(parts) == 3 else 0), False
    except ValueError:
        raise ValueError(f'expected "HH:MM", got {value!r}') from None


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


FULL_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def _weekday(word: str, item: str) -> int:
    word = word.strip()
    if word in FULL_WEEKDAYS:
        return FULL_WEEKDAYS.index(word)
    if word not in WEEKDAYS:
        raise ValueError(f"unknown weekday {item!r} (use mon, tue, wed, thu, fri, sat, sun)")
    return WEEKDAYS.index(word)


def _agent(data: Any, index: int) -> Agent:
    t = _Table(data, f"agents[{index}]")
    ident = t.text("id") or t.text("name", required=True)
    assert ident is not None
    t.where = f"agent {ident!r}"
    name = t.text("name") or ident
    interface = t.text("interface", required=True)
    assert interface is not None
    if "/" not in interface or any(c in interface for c in "&,\"\\ "):
        raise t.fail("interface", f"expected a device such as \"PJSIP/1001\", got {interface!r}")
    agent = Agent(id=ident, name=name, interface=interface,
                  active=t.get("active", bool, True), cleared=t.get("cleared", bool, True),
                  ring_timeout=t.seconds("ring_timeout", None))
    t.finish()
    return agent


def _target(t: _Table, key: str) -> str | None:
    value = t.text(key)
    if value is not None and any(c in value for c in "\"\\\n"):
        raise t.fail(key, f"must not contain quotes, backslashes or newlines: {value!r}")
    return value


def _shift(data: Any, where: str, index: int, rotation: tuple[str, ...] | None) -> Shift:
    t = _Table(data, f"{where}, shift #{index + 1}")
    name = t.text("name") or f"#{index + 1}"
    t.where = f"{where}, shift {name!r}"
    try:
        days = parse_days(t.get("days", object, "daily"))
    except ValueError as exc:
        raise t.fail("days", str(exc)) from None
    try:
        start, _ = parse_time(t.get("start", object, None, required=True))
    except ValueError as exc:
        raise t.fail("start", str(exc)) from None
    try:
        end, at_midnight = parse_time(t.get("end", object, None, required=True), allow_24=True)
    except ValueError as exc:
        raise t.fail("end", str(exc)) from None
    if end == start and not at_midnight:
        raise t.fail("end", f"equals start ({t.data['start']}); write 00:00 to 24:00 "
                            "for a whole day")
    agents = t.texts("agents")
    if agents is None:
        if rotation is None:
            raise t.fail("agents", "required when the line has no rotation")
        agents = rotation
    if not agents:
        raise t.fail("agents", "must name at least one agent")
    t.finish()
    return Shift(name=name, days=days, start=start, end=end, agents=agents,
                 ends_at_midnight=at_midnight)


def _exception(data: Any, where: str, index: int) -> DatedException:
    t = _Table(data, f"{where}, exception #{index + 1}")
    raw_day = t.get("date", object, None, required=True)
    try:
        day = raw_day if isinstance(raw_day, date) else date.fromisoformat(str(raw_day))
    except ValueError:
        raise t.fail("date", f'expected "YYYY-MM-DD", got {raw_day!r}') from None
    name = t.text("name") or day.isoformat()
    t.where = f"{where}, exception {name!r}"
    start = end = None
    try:
        if "start" in t.data:
            start, _ = parse_time(t.get("start", object))
    except ValueError as exc:
        raise t.fail("start", str(exc)) from None
    try:
        if "end" in t.data:
            end, _ = parse_time(t.get("end", object))
    except ValueError as exc:
        raise t.fail("end", str(exc)) from None
    if start is not None and end is not None and end <= start:
        raise t.fail("end", "must be after start (an exception covers one date)")
    swaps = t.get("swap", dict, {})
    for k, v in swaps.items():
        if not isinstance(v, str) or not v:
            raise t.fail(f"swap.{k}", "expected an agent id")
    exc_ = DatedException(
        name=name, day=day, start=start, end=end, closed=t.get("closed", bool, False),
        absent=t.texts("absent") or (), swaps=dict(swaps), extra=t.texts("extra") or ())
    if not (exc_.closed or exc_.absent or exc_.swaps or exc_.extra):
        raise t.fail("closed", "an exception needs closed, absent, swap or extra")
    t.finish()
    return exc_


def _line(data: Any, index: int, agents: Mapping[str, Agent]) -> Line:
    t = _Table(data, f"lines[{index}]")
    name = t.text("name", required=True)
    assert name is not None
    where = f"line {name!r}"
    t.where = where
    dids = t.texts("dids") or ()
    rotation = t.texts("rotation")
    shift_data = t.get("shifts", list, [])
    shifts = tuple(_shift(s, where, i, rotation) for i, s in enumerate(shift_data))
    if rotation is None:
        order: list[str] = []
        for shift in shifts:
            order.extend(a for a in shift.agents if a not in order)
        rotation = tuple(order)
    for agent_id in rotation:
        if agent_id not in agents:
            raise t.fail("rotation", f"unknown agent {agent_id!r}")
    for shift in shifts:
        for agent_id in shift.agents:
            if agent_id not in rotation:
                raise RotaError(f"{where}, shift {shift.name!r}: agents: {agent_id!r} is not "
                                "in the line's rotation")
    exceptions = tuple(_exception(e, where, i)
                       for i, e in enumerate(t.get("exceptions", list, [])))
    for e in exceptions:
        ew = f"{where}, exception {e.name!r}"
        for agent_id in (*e.absent, *e.swaps):
            if agent_id not in rotation:
                raise RotaError(f"{ew}: {agent_id!r} is not in the line's rotation")
        for agent_id in e.extra:
            if agent_id not in rotation:
                raise RotaError(f"{ew}: extra: {agent_id!r} is not in the line's rotation")
        for agent_id in e.swaps.values():
            if agent_id not in agents:
                raise RotaError(f"{ew}: swap: unknown agent {agent_id!r}")
    ring_timeout = t.seconds("ring_timeout", DEFAULT_RING_TIMEOUT)
    assert ring_timeout is not None
    line = Line(name=name, dids=dids, rotation=rotation, shifts=shifts, exceptions=exceptions,
                ring_timeout=ring_timeout, fallback=_target(t, "fallback"),
                ring_timeouts=_ring_timeouts(t, agents))
    t.finish()
    return line


def _ring_timeouts(line: _Table, agents: Mapping[str, Agent]) -> dict[str, int]:
    """The line's `ring_timeouts = { agent = seconds }`: known agents, 1..MAX seconds."""
    table = line.get("ring_timeouts", dict, {})
    prefixed = _Table({f"ring_timeouts.{k}": v for k, v in table.items()}, line.where)
    out: dict[str, int] = {}
    for agent_id in table:
        key = f"ring_timeouts.{agent_id}"
        if agent_id not in agents:
            raise prefixed.fail(key, f"unknown agent {agent_id!r}")
        seconds = prefixed.seconds(key, None)
        assert seconds is not None
        out[agent_id] = seconds
    return out


def rota_from_data(data: Mapping[str, Any], source: str | None = None) -> Rota:
    """Build and check a rota from parsed TOML/JSON."""
    t = _Table(data, source or "rota")
    timezone = t.text("timezone")
    if timezone is not None:
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise t.fail("timezone", f"unknown time zone {timezone!r}") from None
    agents: dict[str, Agent] = {}
    interfaces: dict[str, str] = {}
    for i, item in enumerate(t.get("agents", list, [])):
        agent = _agent(item, i)
        if agent.id in agents:
            raise RotaError(f"agent {agent.id!r}: defined twice")
        if agent.interface in interfaces:
            raise RotaError(f"agent {agent.id!r}: interface {agent.interface!r} already "
                            f"belongs to agent {interfaces[agent.interface]!r}")
        agents[agent.id] = agent
        interfaces[agent.interface] = agent.id
    lines: dict[str, Line] = {}
    dids: dict[str, str] = {}
    for i, item in enumerate(t.get("lines", list, [])):
        line = _line(item, i, agents)
        if line.name in lines:
            raise RotaError(f"line {line.name!r}: defined twice")
        for did in line.dids:
            if did in dids:
                raise RotaError(f"line {line.name!r}: dids: {did!r} already belongs to line "
                                f"{dids[did]!r}")
            dids[did] = line.name
        lines[line.name] = line
    fallback = _target(t, "fallback")
    t.finish()
    return Rota(agents=agents, lines=lines, timezone=timezone, fallback=fallback, source=source)


def load_rota(path: str | Path) -> Rota:
    """Read a rota file: TOML, or JSON when the name ends in .json (the saved form)."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise RotaError(f"{p}: no such file") from None
    except OSError as exc:
        raise RotaError(f"{p}: cannot read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
        data = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
    except UnicodeDecodeError:
        raise RotaError(f"{p}: not UTF-8 text") from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise RotaError(f"{p}: not valid {'JSON' if p.suffix == '.json' else 'TOML'}: "
                        f"{exc}") from None
    if not isinstance(data, dict):
        raise RotaError(f"{p}: expected a table at the top")
    return rota_from_data(data, source=str(p))


def save_rota(rota: Rota, path: str | Path) -> None:
    """Write the rota as JSON, atomically (temp file in the same directory, then rename)."""
    atomic_write(Path(path), json.dumps(rota.to_data(), ensure_ascii=False, indent=2) + "\n")


def atomic_write(path: Path, text: str) -> None:
    """Replace `path` with `text` so a reader sees either the old or the new file, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
