"""Who is on duty on a line at a moment, in rotation order.

Shifts are wall-clock times in the rota's timezone, so the moment is turned
into local time first (zoneinfo): a 22:00-06:00 shift is 7 real hours on the
night the clocks go forward and 9 on the night they go back, and an 08:00
start is 08:00 on either side of a change. Dated exceptions apply to the
local date of the moment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from callhub.routing.model import Agent, Line, Rota, Shift


@dataclass(frozen=True, slots=True)
class DutySlot:
    """An agent on duty and the rotation position the agent takes."""

    agent: Agent
    position: int


def shift_covers(shift: Shift, local: datetime) -> bool:
    """True when the local wall-clock moment falls inside the shift (end exclusive)."""
    t = local.time().replace(tzinfo=None)
    weekday = local.weekday()
    if shift.ends_at_midnight:
        return weekday in shift.days and t >= shift.start
    if not shift.crosses_midnight:
        return weekday in shift.days and shift.start <= t < shift.end
    started_today = weekday in shift.days and t >= shift.start
    started_yesterday = (weekday - 1) % 7 in shift.days and t < shift.end
    return started_today or started_yesterday


def local_time(at: datetime, tz: ZoneInfo) -> datetime:
    """An aware moment in the rota's zone; a naive one is taken as already local."""
    if at.tzinfo is None:
        return at.replace(tzinfo=tz)
    return at.astimezone(tz)


def on_duty(line: Line, agents: Mapping[str, Agent], at: datetime,
            tz: ZoneInfo) -> list[DutySlot]:
    """The agents on duty (whatever their flags), ordered by rotation position."""
    local = local_time(at, tz)
    ids: set[str] = set()
    for shift in line.shifts:
        if shift_covers(shift, local):
            ids.update(shift.agents)
    position = {agent_id: i for i, agent_id in enumerate(line.rotation)}
    today: date = local.date()
    clock: time = local.time().replace(tzinfo=None)
    exceptions = [e for e in line.exceptions if e.day == today and e.covers(clock)]
    if any(e.closed for e in exceptions):
        ids.clear()
    for e in exceptions:
        ids.difference_update(e.absent)
    for e in exceptions:
        for away, cover in e.swaps.items():
            if away in ids:
                ids.discard(away)
                ids.add(cover)
                if cover not in position:  # from outside this line: takes the slot
                    position[cover] = position[away]
    for e in exceptions:
        ids.update(e.extra)
    slots = [DutySlot(agents[i], position[i]) for i in ids if i in agents and i in position]
    slots.sort(key=lambda s: (s.position, s.agent.id))
    return slots


def rota_zone(rota: Rota, default: str) -> ZoneInfo:
    return ZoneInfo(rota.timezone or default)


def next_change(line: Line, at: datetime, tz: ZoneInfo, horizon: timedelta) -> datetime | None:
    """The first minute after `at` when the on-duty set changes (for `rota show`).

    Who is on duty changes only where a shift or an exception starts or ends, or at
    midnight (the weekday and the exceptions' date change): those wall-clock minutes are
    the only ones looked at, a few dozen over a week instead of 10,080 (a minute-by-minute
    scan held the event loop, and FastAGI with it, for over a second).
    """
    local = local_time(at, tz).replace(second=0, microsecond=0)
    agents = _no_filter(line)
    current = {s.agent.id for s in on_duty(line, agents, local, tz)}
    end = local + horizon
    boundaries = _boundaries(line)
    day = local.date()
    while (first := datetime.combine(day, time(0, 0), tzinfo=local.tzinfo)) <= end:
        for clock in boundaries:
            moment = first.replace(hour=clock.hour, minute=clock.minute)
            if not local < moment <= end:
                continue
            if {s.agent.id for s in on_duty(line, agents, moment, tz)} != current:
                return moment
        day += timedelta(days=1)
    return None


def _boundaries(line: Line) -> list[time]:
    """The wall-clock minutes of a day at which the line's on-duty set may change, in
    order; a boundary with seconds counts from its next minute, as a scan would see it."""
    times = {time(0, 0)}
    for shift in line.shifts:
        times.update((shift.start, shift.end))
    for e in line.exceptions:
        times.update(t for t in (e.start, e.end) if t is not None)
    minutes = {min(t.hour * 60 + t.minute + (t.second > 0 or t.microsecond > 0), 1439)
               for t in times}
    return [time(m // 60, m % 60) for m in sorted(minutes)]


def _no_filter(line: Line) -> dict[str, Agent]:
    """Placeholder agents so on-duty sets can be compared without the agent table."""
    ids = set(line.rotation)
    for e in line.exceptions:
        ids.update(e.swaps.values())
    return {i: Agent(id=i, name=i, interface=f"X/{i}") for i in ids}
