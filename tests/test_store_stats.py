"""stats.compute (SQL aggregation) against a row-by-row Python computation of DESIGN.md's figures.

Random calls over twelve days that cross a DST change (Europe/Berlin, 25 Oct),
in zones with whole, half and 45-minute offsets, with calls exactly on and
just before local hour boundaries, ties in ring time, two PBXs, short
abandons and callbacks; every grouping on SQLite and PostgreSQL.
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import replace
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from store_fixtures import make_call, store

from callhub.config import Settings
from callhub.config.targets import LineTarget, LineTargets
from callhub.records import CallRecord
from callhub.store import stats
from callhub.store.db import Database
from callhub.store.tables import worklist_entries

START = datetime(2026, 10, 19, tzinfo=UTC)
DAYS = 12
ZONES = ("Europe/Berlin", "Asia/Kathmandu", "Asia/Shanghai")
AGENTS = {"PJSIP/1001": "李娜", "PJSIP/1002": "Müller", "PJSIP/1003": None}
LINES = ("hotline", "repairs", None)
# Each line's own ring target: hotline 5, repairs 2, any other (and no line) 3; "petition"
# is configured and has no call.
TARGETS = LineTargets(LineTarget(3, 0.9), {"hotline": LineTarget(5, 0.8),
                                           "repairs": LineTarget(2, 0.95)},
                      known=("petition", "repairs", "hotline"))


def random_calls(seed: int) -> list[CallRecord]:
    rng = random.Random(seed)
    numbers = [f"+86138000{n:05d}" for n in range(40)]
    berlin = ZoneInfo("Europe/Berlin")
    stamps = [START.timestamp() + rng.random() * DAYS * 86400 for _ in range(260)]
    for day in range(DAYS):  # on and just before local hour and day boundaries
        for zone in ZONES:
            midnight = datetime.combine((START + timedelta(days=day)).date(),
                                        datetime.min.time(), tzinfo=ZoneInfo(zone))
            stamps += [midnight.timestamp(), midnight.timestamp() - 0.25,
                       midnight.timestamp() + 3600 * rng.randrange(1, 23) - 0.000001]
    switch = datetime(2026, 10, 25, 2, 30, tzinfo=berlin, fold=0).timestamp()
    stamps += [switch, switch + 3600, switch - 1800, switch + 5400]  # 02:xx twice
    records = []
    for n, at in enumerate(sorted(stamps)):
        number = rng.choice(numbers)
        pbx = "main" if rng.random() < 0.85 else "branch"
        if rng.random() < 0.15:
            outcome = "answered" if rng.random() < 0.7 else "missed"
            records.append(make_call(f"c{n}", at=at, pbx=pbx, direction="outbound",
                                     called_number=number, outcome=outcome,
                                     agent=rng.choice(list(AGENTS)),
                                     agent_name=rng.choice(("李娜", "Müller", None))))
            continue
        outcome = rng.choices(("answered", "abandoned", "missed"), (0.7, 0.18, 0.12))[0]
        ring = rng.choice((0.0, 3.0, 4.5, 9.9, 10.0, 14.2, 15.0, 21.0, 33.3))
        fields: dict[str, Any] = {
            "caller_number": number, "outcome": outcome, "ring_seconds": ring,
            "rings": 0 if ring == 0 else int(ring // 5) + 1,
            "wait_seconds": ring + rng.choice((0.0, 1.5, 6.0, 12.0)),
            "line": rng.choice(LINES), "pbx": pbx,
        }
        if outcome == "answered":
            agent = rng.choice(list(AGENTS))
            fields.update(agent=agent, agent_name=AGENTS[agent],
                          hangup_by=rng.choice(("agent", "external", "system", None)))
        else:
            fields["reason"] = "while_ringing" if outcome == "abandoned" else "not_answered"
            fields["short_abandon"] = outcome == "abandoned" and rng.random() < 0.4
        records.append(make_call(f"c{n}", at=at, **fields))
    return records


def reference(records: list[CallRecord], entries: list[Any], q: stats.StatsQuery
              ) -> dict[str, Any]:
    """The figures computed one row at a time, as DESIGN.md words them."""
    def key(ts: float | datetime, agent: str | None, line: str | None) -> Any:
        at = ts if isinstance(ts, datetime) else datetime.fromtimestamp(ts, UTC)
        local = at.astimezone(q.tz)
        if q.group_by == "hour":
            return local.replace(minute=0, second=0, microsecond=0).isoformat()
        if q.group_by == "day":
            return local.date().isoformat()
        return {"agent": agent, "line": line}.get(q.group_by or "")

    rows: dict[Any, list[tuple[str, Any]]] = {}
    names: dict[str, str] = {}
    start, end = q.start.timestamp(), q.end.timestamp()
    for r in records:
        if not start <= r.arrived_at < end or (q.pbx and r.pbx != q.pbx) or \
                r.direction not in ("inbound", "outbound"):
            continue
        if r.agent and r.agent_name:
            names[r.agent] = max(names.get(r.agent, ""), r.agent_name)
        rows.setdefault(key(r.arrived_at, r.agent, r.line), []).append(("call", r))
    for e in entries:
        if q.start <= e.first_missed_at < q.end and not (q.pbx and e.pbx != q.pbx):
            rows.setdefault(key(e.first_missed_at, None, e.line or None), []).append(
                ("entry", e))

    def figures(items: list[tuple[str, Any]]) -> dict[str, Any]:
        calls = [r for kind, r in items if kind == "call"]
        inbound = [r for r in calls if r.direction == "inbound"]
        short = [r for r in inbound if r.short_abandon and r.outcome == "abandoned"]
        counted = [r for r in inbound if not (q.exclude_short_abandons and r in short)]
        answered = [r for r in counted if r.outcome == "answered"]
        within_rings = sum(r.rings <= q.rings for r in answered)
        within_target = sum(r.rings <= q.targets.of(r.line).target_rings for r in answered)
        within_seconds = sum(r.wait_seconds <= q.seconds for r in answered)
        known = [r for r in answered if r.hangup_by is not None]
        ring_times = sorted(r.ring_seconds for r in answered)
        es = [e for kind, e in items if kind == "entry"]
        handled = [e for e in es if e.status == "handled"]
        took = [e.time_to_callback_seconds for e in handled
                if e.time_to_callback_seconds is not None]

        def rate(a: int, b: int) -> float | None:
            return round(a / b, 4) if b else None

        return {
            "inbound": len(counted), "outbound": len(calls) - len(inbound),
            "answered": len(answered),
            "abandoned": sum(r.outcome == "abandoned" for r in counted),
            "short_abandons": len(short), "missed": sum(r.outcome == "missed" for r in counted),
            "answer_rate": rate(len(answered), len(counted)),
            "answered_within_rings": within_rings,
            "within_rings_rate": rate(within_rings, len(counted)),
            "within_rings_rate_answered": rate(within_rings, len(answered)),
            "answered_within_target": within_target,
            "within_target_rate": rate(within_target, len(counted)),
            "answered_within_seconds": within_seconds,
            "service_level": rate(within_seconds, len(counted)),
            "service_level_answered": rate(within_seconds, len(answered)),
            "avg_ring_seconds": round(statistics.fmean(ring_times), 3) if answered else None,
            "p90_ring_seconds": (round(ring_times[math.ceil(len(ring_times) * 9 / 10) - 1], 3)
                                 if ring_times else None),
            "avg_speed_of_answer_seconds": (
                round(statistics.fmean(r.wait_seconds for r in answered), 3)
                if answered else None),
            "agent_hangup_first_rate": rate(sum(r.hangup_by == "agent" for r in known),
                                            len(known)),
            "pending_callbacks": sum(e.status == "pending" for e in es),
            "handled_callbacks": len(handled),
            "median_time_to_callback_seconds": (round(statistics.median(took), 3)
                                                if took else None),
        }

    out: dict[str, Any] = {"totals": figures([i for items in rows.values() for i in items])}
    if q.group_by is not None:
        out["groups"] = []
        for k in sorted(rows, key=lambda g: (g is None, "" if g is None else str(g))):
            block: dict[str, Any] = {"key": k}
            if q.group_by == "agent":
                block["agent_name"] = names.get(k) if k else None
            block |= figures(rows[k])
            if q.group_by == "line":
                target = q.targets.of(k)
                block |= {"target_rings": target.target_rings,
                          "answer_rate_target": target.answer_rate_target}
            out["groups"].append(block)
    return out


def reference_line_targets(records: list[CallRecord], q: stats.StatsQuery
                           ) -> list[dict[str, Any]]:
    """Every configured line, then every other line with calls, against its own target."""
    mine = [r for r in records if q.start.timestamp() <= r.arrived_at < q.end.timestamp()
            and not (q.pbx and r.pbx != q.pbx) and r.direction == "inbound"
            and not (q.exclude_short_abandons and r.short_abandon and r.outcome == "abandoned")]
    seen = sorted({r.line for r in mine if r.line} - set(q.targets.known))
    out = []
    for line in [*q.targets.known, *seen]:
        target = q.targets.of(line)
        calls = [r for r in mine if r.line == line]
        answered = [r for r in calls if r.outcome == "answered"]
        within = sum(r.rings <= target.target_rings for r in answered)
        rate = round(within / len(calls), 4) if calls else None
        out.append({"line": line, "target_rings": target.target_rings,
                    "answer_rate_target": target.answer_rate_target, "inbound": len(calls),
                    "answered": len(answered), "answered_within_target": within,
                    "within_target_rate": rate,
                    "target_met": None if rate is None else rate >= target.answer_rate_target})
    return out


def same(got: dict[str, Any], want: dict[str, Any]) -> None:
    """Equal, but for the means' last rounding digit (SQL sums in another order)."""
    assert got.keys() == want.keys()
    for name, value in want.items():
        if name.startswith("avg_") and value is not None:
            assert got[name] == pytest.approx(value, abs=1.01e-3), name
        else:
            assert got[name] == value, name


@pytest.mark.parametrize("zone", ZONES)
async def test_sql_figures_are_the_row_by_row_figures(
        any_db: Database, store_settings: Settings, zone: str) -> None:
    settings = replace(store_settings, worklist_include_short_abandons=True)
    records = random_calls(seed=len(zone))
    await store(any_db, settings, *records)
    async with any_db.connection() as conn:
        entries = (await conn.execute(sa.select(worklist_entries))).all()
    assert any(e.status == "handled" and e.time_to_callback_seconds for e in entries)
    tz: tzinfo = ZoneInfo(zone)
    whole = stats.StatsQuery(start=START, end=START + timedelta(days=DAYS), tz=tz,
                             targets=TARGETS)
    inner = replace(whole, start=datetime(2026, 10, 22, 7, 30, tzinfo=tz),
                    end=datetime(2026, 10, 27, 1, 15, tzinfo=tz))
    queries = [replace(q, group_by=g) for q in (whole, inner) for g in (None, *stats.GROUPS)]
    queries += [replace(whole, group_by="hour", rings=1, seconds=9.9, pbx="main"),
                replace(inner, group_by="agent", exclude_short_abandons=False, rings=6),
                replace(whole, group_by="day", pbx="branch", seconds=0),
                replace(inner, group_by="line", targets=LineTargets())]
    async with any_db.connection() as conn:
        for q in queries:
            got = await stats.compute(conn, q)
            want = reference(records, entries, q)
            same(got["totals"], want["totals"])
            assert [g["key"] for g in got.get("groups", [])] == [
                g["key"] for g in want.get("groups", [])], q
            for g, w in zip(got.get("groups", []), want.get("groups", []), strict=True):
                same(g, w)
            assert got["line_targets"] == reference_line_targets(records, q), q
            assert got["default_target"] == {"target_rings": q.targets.default.target_rings,
                                             "answer_rate_target":
                                                 q.targets.default.answer_rate_target}
    assert want["totals"]["inbound"] > 0
    # Each line's own target counts: hotline's 5 rings take calls that 3 rings would not.
    lines = {t["line"]: t for t in reference_line_targets(records, whole)}
    assert lines["hotline"]["answered_within_target"] > sum(
        r.rings <= 3 and r.outcome == "answered" and r.line == "hotline"
        and r.direction == "inbound" for r in records)
    assert lines["petition"]["inbound"] == 0 and lines["petition"]["target_met"] is None


def test_nearest_rank_is_exact() -> None:
    assert [stats.nearest_rank(n, 90) for n in (1, 9, 10, 11, 70, 100)] == [1, 9, 9, 10, 63, 90]
    assert stats.percentile(range(1, 71), 90) == 63
    assert stats.percentile([], 90) is None


def test_offset_pieces_follow_the_zone() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    pieces = stats.offset_pieces(datetime(2026, 1, 1, tzinfo=UTC),
                                 datetime(2027, 1, 1, tzinfo=UTC), berlin)
    assert pieces == [(datetime(2026, 3, 29, 1, tzinfo=UTC), 3600),
                      (datetime(2026, 10, 25, 1, tzinfo=UTC), 7200), (None, 3600)]
    assert stats.offset_pieces(START, START + timedelta(days=400),
                               ZoneInfo("Asia/Shanghai")) == [(None, 8 * 3600)]
