"""The routing model: agents, lines with weekly shifts, dated exceptions and a rotation order.

Plain frozen dataclasses, no I/O. `rota_file` builds them from TOML or JSON
(and checks them); `onduty` and `chooser` read them. A `Rota` is replaced as a
whole when it changes (load, API edit), never mutated in place, so a request
in flight always sees one consistent rota.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date, time
from typing import Any

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
END_OF_DAY = time(23, 59, 59, 999999)
DEFAULT_RING_TIMEOUT = 15


@dataclass(frozen=True, slots=True)
class Agent:
    """A person who takes calls on one device interface (`PJSIP/1001`)."""

    id: str
    name: str
    interface: str
    active: bool = True
    cleared: bool = True  # a trainee not yet cleared to work alone takes no calls
    ring_timeout: int | None = None  # seconds this agent's phone rings; None: the line's
    mobile: str | None = None  # the agent's mobile number, for the SMS after a call

    @property
    def can_take_calls(self) -> bool:
        return self.active and self.cleared


@dataclass(frozen=True, slots=True)
class Shift:
    """Agents on duty on some weekdays from `start` to `end` (local wall-clock time).

    `end` is exclusive. `end <= start` means the shift crosses midnight and
    ends on the next day; `ends_at_midnight` marks an end written as 24:00.
    `days` are 0 = Monday .. 6 = Sunday: the day the shift starts.
    """

    name: str
    days: frozenset[int]
    start: time
    end: time
    agents: tuple[str, ...]
    ends_at_midnight: bool = False

    @property
    def crosses_midnight(self) -> bool:
        return not self.ends_at_midnight and self.end <= self.start


@dataclass(frozen=True, slots=True)
class DatedException:
    """A change for one local date: a holiday, an absence, a swap or an extra shift.

    Applies to the times of `day` between `start` and `end` (the whole day
    when both are None). `closed` takes everybody off duty; `absent` takes
    some agents off; `swaps` maps an agent to the one who works instead;
    `extra` puts agents on duty in addition.
    """

    name: str
    day: date
    start: time | None = None
    end: time | None = None
    closed: bool = False
    absent: tuple[str, ...] = ()
    swaps: Mapping[str, str] = field(default_factory=dict)
    extra: tuple[str, ...] = ()

    def covers(self, at: time) -> bool:
        start = self.start or time(0, 0)
        if self.end is None:
            return at >= start
        return start <= at < self.end


@dataclass(frozen=True, slots=True)
class Line:
    """One routed line: a DID or a group of DIDs, with its shifts and rotation."""

    name: str
    dids: tuple[str, ...]
    rotation: tuple[str, ...]
    shifts: tuple[Shift, ...]
    exceptions: tuple[DatedException, ...] = ()
    ring_timeout: int = DEFAULT_RING_TIMEOUT  # the default for each agent and the fallback
    fallback: str | None = None
    ring_timeouts: Mapping[str, int] = field(default_factory=dict)  # agent id -> seconds here

    def ring_timeout_for(self, agent: Agent) -> int:
        """How long `agent` rings on this line: the line's own entry for the agent, else the
        agent's `ring_timeout`, else the line's `ring_timeout`."""
        own = self.ring_timeouts.get(agent.id)
        if own is not None:
            return own
        return agent.ring_timeout if agent.ring_timeout is not None else self.ring_timeout

    def covers(self) -> tuple[str, ...]:
        """The agents who stand in for one of the rotation on some date (the swaps' covers)
        and are not in it themselves: each takes the absent agent's slot."""
        ids = {cover for e in self.exceptions for cover in e.swaps.values()}
        return tuple(sorted(ids.difference(self.rotation)))

    def rotation_index(self, agent_id: str) -> int | None:
        try:
            return self.rotation.index(agent_id)
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class Rota:
    """Every agent and line; the unit that is loaded, validated and persisted."""

    agents: Mapping[str, Agent]
    lines: Mapping[str, Line]
    timezone: str | None = None  # None: the configured settings.timezone
    fallback: str | None = None  # for calls on no known line
    source: str | None = None  # where it was loaded from (for `rota show`)

    def line_for(self, key: str | None) -> Line | None:
        """The line named `key`, else the line that lists `key` among its DIDs."""
        if not key:
            return None
        line = self.lines.get(key)
        if line is not None:
            return line
        for line in self.lines.values():
            if key in line.dids:
                return line
        return None

    def agent_by_interface(self, interface: str) -> Agent | None:
        for agent in self.agents.values():
            if agent.interface == interface:
                return agent
        return None

    def with_agent(self, agent: Agent) -> Rota:
        agents = dict(self.agents)
        agents[agent.id] = agent
        return replace(self, agents=agents)

    def with_line(self, line: Line) -> Rota:
        lines = dict(self.lines)
        lines[line.name] = line
        return replace(self, lines=lines)

    def to_data(self) -> dict[str, Any]:
        """The rota as plain data in the rota file's schema (what `rota_file` reads back)."""
        data: dict[str, Any] = {}
        if self.timezone:
            data["timezone"] = self.timezone
        if self.fallback:
            data["fallback"] = self.fallback
        data["agents"] = [agent_to_data(a) for a in self.agents.values()]
        data["lines"] = [line_to_data(line) for line in self.lines.values()]
        return data


EMPTY_ROTA = Rota(agents={}, lines={})


def agent_to_data(agent: Agent) -> dict[str, Any]:
    data: dict[str, Any] = {"id": agent.id, "name": agent.name, "interface": agent.interface,
                            "active": agent.active, "cleared": agent.cleared}
    if agent.ring_timeout is not None:
        data["ring_timeout"] = agent.ring_timeout
    if agent.mobile is not None:
        data["mobile"] = agent.mobile
    return data


def _hhmm(value: time, midnight: bool = False) -> str:
    return "24:00" if midnight else value.strftime("%H:%M")


def line_to_data(line: Line) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": line.name,
        "dids": list(line.dids),
        "rotation": list(line.rotation),
        "ring_timeout": line.ring_timeout,
    }
    if line.ring_timeouts:
        data["ring_timeouts"] = dict(line.ring_timeouts)
    if line.fallback:
        data["fallback"] = line.fallback
    data["shifts"] = [
        {"name": s.name, "days": [WEEKDAYS[d] for d in sorted(s.days)],
         "start": _hhmm(s.start), "end": _hhmm(s.end, s.ends_at_midnight),
         "agents": list(s.agents)}
        for s in line.shifts
    ]
    exceptions = []
    for e in line.exceptions:
        item: dict[str, Any] = {"name": e.name, "date": e.day.isoformat()}
        if e.start is not None:
            item["start"] = _hhmm(e.start)
        if e.end is not None:
            item["end"] = _hhmm(e.end)
        if e.closed:
            item["closed"] = True
        if e.absent:
            item["absent"] = list(e.absent)
        if e.swaps:
            item["swap"] = dict(e.swaps)
        if e.extra:
            item["extra"] = list(e.extra)
        exceptions.append(item)
    if exceptions:
        data["exceptions"] = exceptions
    return data
