"""Read and check a rota (TOML file or the same schema as JSON data).

Every error raises `RotaError` with a message that names where it is: the
line, the shift or exception, and the key (`line "hotline", shift "night":
end: expected "HH:MM", got "25:00"`). Nothing half-checked is ever returned.
Each table's keys and values are checked by the pydantic models in
`rota_schema`; what spans tables (agents a rotation names, DIDs two lines
claim) is checked here, while the routing model is built.

Schema (see README "Routing by rota")::

    timezone = "Europe/Berlin"      # optional; default: the configured timezone
    fallback = "PJSIP/1000"         # optional; for a DID no line lists, and lines without one

    [[agents]]
    id = "li"                       # what shifts and rotations refer to
    name = "Li Na"
    interface = "PJSIP/1001"
    active = true                   # default true
    cleared = true                  # default true; false: a trainee, takes no calls
    ring_timeout = 20               # optional: seconds li's phone rings (default: the line's)
    mobile = "13900139000"          # optional: named in the SMS after a call ([sms])

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
from datetime import date
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from callhub.config.problems import describe, dotted, first_error
from callhub.routing.model import Agent, DatedException, Line, Rota, Shift
from callhub.routing.rota_schema import (
    MAX_RING_TIMEOUT,
    AgentTable,
    ExceptionTable,
    LineTable,
    RotaTable,
    ShiftTable,
    parse_days,
    parse_time,
    text_problem,
)

# Read here, used by the API and tests: the schema's own parsers and limit.
__all__ = ["MAX_RING_TIMEOUT", "RotaError", "atomic_write", "load_rota", "parse_days",
           "parse_time", "rota_from_data", "save_rota", "text_problem"]


class RotaError(ValueError):
    """The rota is wrong; the message names the line, shift and key."""


def rota_from_data(data: Mapping[str, Any], source: str | None = None) -> Rota:
    """Build and check a rota from parsed TOML/JSON."""
    if not isinstance(data, Mapping):
        raise RotaError(f"{source or 'rota'}: expected a table, got {data!r}")
    try:
        table = RotaTable.model_validate(data)
    except ValidationError as exc:
        raise _located(exc, data, source) from None
    agents: dict[str, Agent] = {}
    interfaces: dict[str, str] = {}
    for agent_table in table.agents:
        agent = _agent(agent_table)
        if agent.id in agents:
            raise RotaError(f"agent {agent.id!r}: defined twice")
        if agent.interface in interfaces:
            raise RotaError(f"agent {agent.id!r}: interface {agent.interface!r} already "
                            f"belongs to agent {interfaces[agent.interface]!r}")
        agents[agent.id] = agent
        interfaces[agent.interface] = agent.id
    lines: dict[str, Line] = {}
    dids: dict[str, str] = {}
    for line_table in table.lines:
        line = _line(line_table, agents)
        if line.name in lines:
            raise RotaError(f"line {line.name!r}: defined twice")
        for did in line.dids:
            if did in dids:
                raise RotaError(f"line {line.name!r}: dids: {did!r} already belongs to line "
                                f"{dids[did]!r}")
            dids[did] = line.name
        lines[line.name] = line
    return Rota(agents=agents, lines=lines, timezone=table.timezone, fallback=table.fallback,
                source=source)


def _agent(t: AgentTable) -> Agent:
    ident = t.id or t.name
    assert ident is not None  # the table checks that one is given
    return Agent(id=ident, name=t.name or ident, interface=t.interface, active=t.active,
                 cleared=t.cleared, ring_timeout=t.ring_timeout, mobile=t.mobile)


def _line(t: LineTable, agents: Mapping[str, Agent]) -> Line:
    """A line from its table, checked against the agents and its own rotation."""
    where = f"line {t.name!r}"
    shifts = tuple(_shift(s, s.name or f"#{i + 1}", where, t.rotation)
                   for i, s in enumerate(t.shifts))
    for agent_id in t.rotation or ():
        if agent_id not in agents:
            raise RotaError(f"{where}: rotation: unknown agent {agent_id!r}")
    for shift in shifts:  # before a rotation is derived from them, which would be blamed
        for agent_id in shift.agents:
            if agent_id not in agents:
                raise RotaError(f"{where}, shift {shift.name!r}: agents: unknown agent "
                                f"{agent_id!r}")
    rotation = t.rotation
    if rotation is None:
        order: list[str] = []
        for shift in shifts:
            order.extend(a for a in shift.agents if a not in order)
        rotation = tuple(order)
    for shift in shifts:
        for agent_id in shift.agents:
            if agent_id not in rotation:
                raise RotaError(f"{where}, shift {shift.name!r}: agents: {agent_id!r} is not "
                                "in the line's rotation")
    exceptions = tuple(_exception(e) for e in t.exceptions)
    for e in exceptions:
        ew = f"{where}, exception {e.name!r}"
        for key, ids in (("absent", e.absent), ("swap", tuple(e.swaps)), ("extra", e.extra)):
            for agent_id in ids:
                if agent_id not in agents:
                    raise RotaError(f"{ew}: {key}: unknown agent {agent_id!r}")
                if agent_id not in rotation:
                    raise RotaError(f"{ew}: {key}: {agent_id!r} is not in the line's rotation")
        for agent_id in e.swaps.values():
            if agent_id not in agents:
                raise RotaError(f"{ew}: swap: unknown agent {agent_id!r}")
    for agent_id in t.ring_timeouts:
        if agent_id not in agents:
            raise RotaError(f"{where}: ring_timeouts.{agent_id}: unknown agent {agent_id!r}")
    return Line(name=t.name, dids=t.dids, rotation=rotation, shifts=shifts,
                exceptions=exceptions, ring_timeout=t.ring_timeout, fallback=t.fallback,
                ring_timeouts=dict(t.ring_timeouts))


def _shift(t: ShiftTable, name: str, line: str, rotation: tuple[str, ...] | None) -> Shift:
    where = f"{line}, shift {name!r}"
    agents = t.agents
    if agents is None:
        if rotation is None:
            raise RotaError(f"{where}: agents: required when the line has no rotation")
        if not rotation:  # else blamed on the agents the shift did not write
            raise RotaError(f"{where}: agents: not given, and the line's rotation (their "
                            "default) is empty")
        agents = rotation
    if not agents:
        raise RotaError(f"{where}: agents: must name at least one agent")
    end, at_midnight = t.end
    return Shift(name=name, days=t.days, start=t.start, end=end, agents=agents,
                 ends_at_midnight=at_midnight)


def _exception(t: ExceptionTable) -> DatedException:
    return DatedException(name=t.name or t.date.isoformat(), day=t.date, start=t.start,
                          end=t.end, closed=t.closed, absent=t.absent, swaps=dict(t.swap),
                          extra=t.extra)


# ---- naming where a validation error is --------------------------------------------------

def _located(exc: ValidationError, data: Mapping[str, Any], source: str | None) -> RotaError:
    """The first error as `where: key: problem`, `where` naming the agent, line, shift or
    exception by its name once that name is itself valid, else by its position."""
    error, loc = first_error(exc)
    where, rest = _where(data, loc, source)
    key = dotted(rest)
    text = describe(error, unknown="unknown key")
    return RotaError(f"{where}: {key}: {text}" if key else f"{where}: {text}")


def _where(data: Mapping[str, Any], loc: tuple[int | str, ...],
           source: str | None) -> tuple[str, tuple[int | str, ...]]:
    if len(loc) < 2 or loc[0] not in ("agents", "lines") or not isinstance(loc[1], int):
        return source or "rota", loc
    kind, index = loc[0], loc[1]
    entry = _entry(data.get(kind), index)
    if kind == "agents":
        ident = _valid(entry, "id")
        if ident is None and "id" not in entry:
            ident = _valid(entry, "name")
        return (f"agent {ident!r}" if ident else f"agents[{index}]"), loc[2:]
    name = _valid(entry, "name")
    if name is None:
        return f"lines[{index}]", loc[2:]
    where = f"line {name!r}"
    if len(loc) < 4 or loc[2] not in ("shifts", "exceptions") or not isinstance(loc[3], int):
        return where, loc[2:]
    number = loc[3] + 1
    item = _entry(entry.get(loc[2]), loc[3])
    if loc[2] == "shifts":
        shift = _valid(item, "name")
        named = shift or (item and "name" not in item)  # unnamed: called '#n' from here on
        label = f"shift {shift or f'#{number}'!r}" if named else f"shift #{number}"
        return f"{where}, {label}", loc[4:]
    label = f"exception #{number}"
    day = _day_of(item.get("date"))
    title = _valid(item, "name")
    if day is not None and (title or "name" not in item):
        label = f"exception {title or day!r}"
    return f"{where}, {label}", loc[4:]


def _entry(items: Any, index: int) -> Mapping[str, Any]:
    entry = items[index] if isinstance(items, list) and index < len(items) else None
    return entry if isinstance(entry, Mapping) else {}


def _valid(entry: Mapping[str, Any], key: str) -> str | None:
    value = entry.get(key)
    return value if isinstance(value, str) and not text_problem(value) else None


def _day_of(value: Any) -> str | None:
    if isinstance(value, date):
        return value.isoformat()
    try:
        return date.fromisoformat(str(value)).isoformat()
    except ValueError:
        return None


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
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, RecursionError) as exc:
        why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise RotaError(f"{p}: not valid {'JSON' if p.suffix == '.json' else 'TOML'}: "
                        f"{why}") from None
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
