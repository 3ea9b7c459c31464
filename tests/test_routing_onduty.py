"""Who is on duty: shift edges (first and last minute), shifts past midnight, the days the
clocks change in Europe/Berlin, and dated exceptions."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta

import pytest
from routing_fixtures import BERLIN, berlin

from callhub.routing.model import Agent, DatedException, Line, Rota, Shift
from callhub.routing.onduty import next_change, on_duty


def duty(rota: Rota, at: datetime, line: str = "hotline") -> list[str]:
    return [s.agent.id for s in on_duty(rota.lines[line], rota.agents, at, BERLIN)]


DAY = ["ann", "ben", "cai", "dora", "eve"]


@pytest.mark.parametrize(("moment", "expected"), [
    ("2026-11-30 07:59", []),                # Monday, a minute before the day shift
    ("2026-11-30 08:00", DAY),               # first minute
    ("2026-11-30 16:59:59", DAY),            # last minute
    ("2026-11-30 17:00", ["ben", "cai"]),    # evening starts as day ends (end exclusive)
    ("2026-11-30 21:59", ["ben", "cai"]),
    ("2026-11-30 22:00", []),                # Monday has no night shift
    ("2026-12-04 22:00", ["cai"]),           # Friday night, first minute
    ("2026-12-04 23:59", ["cai"]),
    ("2026-12-05 00:00", ["cai"]),           # past midnight: Saturday, started Friday
    ("2026-12-05 05:59", ["cai"]),           # last minute of the night
    ("2026-12-05 06:00", []),
    ("2026-12-06 05:59", ["cai"]),           # Sunday morning: Saturday's night shift
    ("2026-12-07 05:59", []),                # Monday morning: no Sunday night shift
])
def test_shift_edges(sample_rota: Rota, moment: str, expected: list[str]) -> None:
    assert duty(sample_rota, berlin(moment)) == expected


def test_whole_day_shift_ending_24_00(sample_rota: Rota) -> None:
    for moment in ("2026-11-30 00:00", "2026-11-30 12:00", "2026-11-30 23:59:59"):
        assert duty(sample_rota, berlin(moment), "sales") == ["ann", "ben"]


def test_overlapping_shifts_add_up(sample_rota: Rota) -> None:
    """docs/rota.md: shifts of a line may overlap; whoever any of them puts on duty is on
    duty, once, in rotation order."""
    hotline = sample_rota.lines["hotline"]
    mid = Shift(name="mid", days=frozenset(range(5)), start=time(12, 0), end=time(20, 0),
                agents=("eve", "ann"))
    rota = sample_rota.with_line(replace(hotline, shifts=(*hotline.shifts, mid)))
    assert duty(rota, berlin("2026-11-30 11:59")) == DAY
    assert duty(rota, berlin("2026-11-30 12:00")) == DAY  # ann and eve are not doubled
    assert duty(rota, berlin("2026-11-30 17:00")) == ["ann", "ben", "cai", "eve"]
    assert duty(rota, berlin("2026-11-30 20:00")) == ["ben", "cai"]


def test_spring_forward_night(sample_rota: Rota) -> None:
    # Sunday 2026-03-29: 02:00 CET becomes 03:00 CEST. Saturday's 22:00-06:00 night shift
    # ends at 06:00 wall clock = 04:00 UTC (a fixed +01:00 would put it at 05:00 UTC).
    assert duty(sample_rota, datetime(2026, 3, 28, 21, 0, tzinfo=UTC)) == ["cai"]  # 22:00 CET
    assert duty(sample_rota, datetime(2026, 3, 28, 20, 59, tzinfo=UTC)) == []
    assert duty(sample_rota, datetime(2026, 3, 29, 0, 59, tzinfo=UTC)) == ["cai"]  # 01:59 CET
    assert duty(sample_rota, datetime(2026, 3, 29, 1, 0, tzinfo=UTC)) == ["cai"]   # 03:00 CEST
    assert duty(sample_rota, datetime(2026, 3, 29, 3, 59, tzinfo=UTC)) == ["cai"]  # 05:59 CEST
    assert duty(sample_rota, datetime(2026, 3, 29, 4, 0, tzinfo=UTC)) == []        # 06:00 CEST
    # The Monday after: the day shift starts at 08:00 CEST = 06:00 UTC.
    assert duty(sample_rota, datetime(2026, 3, 30, 5, 59, tzinfo=UTC)) == []
    assert duty(sample_rota, datetime(2026, 3, 30, 6, 0, tzinfo=UTC)) == DAY
    # Friday before the change: 08:00 CET = 07:00 UTC.
    assert duty(sample_rota, datetime(2026, 3, 27, 6, 59, tzinfo=UTC)) == []
    assert duty(sample_rota, datetime(2026, 3, 27, 7, 0, tzinfo=UTC)) == DAY


def test_fall_back_night(sample_rota: Rota) -> None:
    # Sunday 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:xx happens twice, both on duty.
    assert duty(sample_rota, datetime(2026, 10, 25, 0, 30, tzinfo=UTC)) == ["cai"]  # 02:30 CEST
    assert duty(sample_rota, datetime(2026, 10, 25, 1, 30, tzinfo=UTC)) == ["cai"]  # 02:30 CET
    assert duty(sample_rota, datetime(2026, 10, 25, 4, 59, tzinfo=UTC)) == ["cai"]  # 05:59 CET
    assert duty(sample_rota, datetime(2026, 10, 25, 5, 0, tzinfo=UTC)) == []        # 06:00 CET
    assert duty(sample_rota, datetime(2026, 10, 24, 19, 59, tzinfo=UTC)) == []      # 21:59 CEST
    assert duty(sample_rota, datetime(2026, 10, 24, 20, 0, tzinfo=UTC)) == ["cai"]  # 22:00 CEST


def test_holiday_closes_the_day_including_the_night_shift_after_midnight(
        sample_rota: Rota) -> None:
    assert duty(sample_rota, berlin("2026-12-25 10:00")) == []   # Friday, closed
    assert duty(sample_rota, berlin("2026-12-25 23:00")) == []   # Friday night, closed
    assert duty(sample_rota, berlin("2026-12-26 01:00")) == ["cai"]  # Saturday: open again
    assert duty(sample_rota, berlin("2026-12-24 23:59")) == []   # Thursday: no night shift


def test_swap_puts_the_cover_in_the_absent_agents_slot(sample_rota: Rota) -> None:
    slots = on_duty(sample_rota.lines["hotline"], sample_rota.agents, berlin("2026-12-24 09:00"),
                    BERLIN)
    assert [(s.agent.id, s.position) for s in slots] == [
        ("lead", 0), ("ben", 1), ("cai", 2), ("dora", 3), ("eve", 4)]
    # the day before and after: ann as usual
    assert duty(sample_rota, berlin("2026-12-23 09:00"))[0] == "ann"


def test_a_cover_from_the_rotation_keeps_their_own_slot(sample_rota: Rota) -> None:
    """dora covering ben's evening shift (dora is on the rotation, off duty that evening)
    works at dora's own place, not ben's: one agent, one place in the rotation."""
    hotline = sample_rota.lines["hotline"]
    evening = berlin("2026-11-30 18:00")  # the evening shift: ben and cai
    assert duty(sample_rota, evening) == ["ben", "cai"]
    swap = DatedException(name="dora for ben", day=date(2026, 11, 30), swaps={"ben": "dora"})
    swapped = {**sample_rota.lines, "hotline": replace(hotline, exceptions=(swap,))}
    slots = on_duty(swapped["hotline"], sample_rota.agents, evening, BERLIN)
    assert [(s.agent.id, s.position) for s in slots] == [
        ("cai", hotline.rotation.index("cai")), ("dora", hotline.rotation.index("dora"))]


def test_partial_day_absence(sample_rota: Rota) -> None:
    assert "ben" in duty(sample_rota, berlin("2026-12-23 11:59"))
    assert "ben" not in duty(sample_rota, berlin("2026-12-23 12:00"))
    assert duty(sample_rota, berlin("2026-12-23 17:30")) == ["cai"]


def test_naive_moment_is_taken_as_local(sample_rota: Rota) -> None:
    assert duty(sample_rota, datetime(2026, 11, 30, 8, 0)) == DAY


def scan_next_change(line: Line, at: datetime, horizon: timedelta) -> datetime | None:
    """The definition, minute by minute: the first minute whose on-duty set differs."""
    agents = {i: Agent(id=i, name=i, interface=f"X/{i}") for i in "abcdef"}
    local = at.astimezone(BERLIN).replace(second=0, microsecond=0)
    current = {s.agent.id for s in on_duty(line, agents, local, BERLIN)}
    moment = local + timedelta(minutes=1)
    while moment <= local + horizon:
        if {s.agent.id for s in on_duty(line, agents, moment, BERLIN)} != current:
            return moment
        moment += timedelta(minutes=1)
    return None


def random_line(rng: random.Random, around: date) -> Line:
    def clock() -> time:
        return time(rng.randrange(24), rng.choice([0, 0, 15, 30, 59]),
                    rng.choice([0, 0, 0, 30]))
    shifts = tuple(
        Shift(name=f"s{k}", days=frozenset(rng.sample(range(7), rng.randint(1, 7))),
              start=clock(), end=clock(), agents=tuple(rng.sample("abcde", 2)),
              ends_at_midnight=rng.random() < 0.1)
        for k in range(rng.randint(0, 4)))
    exceptions = tuple(
        DatedException(name=f"e{k}", day=around + timedelta(days=rng.randrange(-1, 8)),
                       start=rng.choice([None, clock()]), end=rng.choice([None, clock()]),
                       closed=rng.random() < 0.2, absent=tuple(rng.sample("abcde", 1)),
                       swaps={rng.choice("abcde"): "f"} if rng.random() < 0.3 else {},
                       extra=tuple(rng.sample("abcde", rng.randint(0, 1))))
        for k in range(rng.randint(0, 3)))
    return Line(name="l", dids=("1",), rotation=tuple("abcde"), shifts=shifts,
                exceptions=exceptions)


@pytest.mark.parametrize("seed", range(40))
def test_next_change_is_the_first_minute_the_on_duty_set_changes(seed: int) -> None:
    """Against the minute-by-minute definition, on random shifts and exceptions (odd
    minutes and seconds among them) and moments around the clock changes."""
    rng = random.Random(seed)
    at = berlin(rng.choice(["2026-03-27 10:17", "2026-10-23 23:59:40", "2026-12-01 00:00"]))
    at += timedelta(minutes=rng.randrange(3 * 24 * 60))
    line = random_line(rng, at.date())
    horizon = timedelta(days=7)
    assert next_change(line, at, BERLIN, horizon) == scan_next_change(line, at, horizon)
