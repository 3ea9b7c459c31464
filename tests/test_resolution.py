"""Resolution and satisfaction (issue 13): set through the API with who and when, kept
when the call is stored again, and counted by /stats as docs/api.md defines the rates.

The app is the real one on a loopback port over SQLite and PostgreSQL (the `desk`
fixture: the API with the follow-up routes); the expected rates are computed here from
the data the test made, never written down.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from desk_fixtures import SHANGHAI, Desk
from store_fixtures import auth, make_call, store

from callhub.store import resolution_stats

SUP = auth("supervisor")
HOUR = 3600.0


async def patch(desk: Desk, call_id: int, body: dict[str, Any], headers: dict[str, str] = SUP
                ) -> tuple[int, dict[str, Any]]:
    response = await desk.client.patch(f"/api/v1/calls/{call_id}", json=body, headers=headers)
    return response.status, await response.json()


async def one_call(desk: Desk, linkedid: str = "c-1", **fields: Any) -> int:
    (call_id,) = await store(desk.db, desk.settings,
                             make_call(linkedid, at=desk.clock.now - HOUR, **fields))
    return call_id


async def test_a_resolution_is_set_with_who_and_when_and_cleared(desk: Desk) -> None:
    call_id = await one_call(desk)
    before = datetime.now(SHANGHAI)
    status, call = await patch(desk, call_id, {"resolution": "resolved", "who": "王芳"})
    assert status == 200, call
    assert call["resolution"] == "resolved" and call["resolution_department"] is None
    assert call["resolution_by"] == "王芳 (supervisor)"
    assert datetime.fromisoformat(call["resolution_at"]) >= before - timedelta(seconds=1)
    assert call["category"] is None and call["note"] is None  # untouched

    status, call = await patch(desk, call_id, {"resolution": "referred",
                                               "department": "物业维修部"},
                               headers=auth("admin"))
    assert status == 200, call
    assert (call["resolution"], call["resolution_department"], call["resolution_by"]) == (
        "referred", "物业维修部", "admin")
    got = await (await desk.client.get(f"/api/v1/calls/{call_id}", headers=SUP)).json()
    assert got["resolution"] == "referred" and got["resolution_department"] == "物业维修部"

    # With a category and note in the same request; then a change away from referred
    # drops the department.
    status, call = await patch(desk, call_id, {"resolution": "pending", "note": "等回复"})
    assert status == 200, call
    assert (call["resolution"], call["resolution_department"], call["note"]) == (
        "pending", None, "等回复")

    status, call = await patch(desk, call_id, {"resolution": None})
    assert status == 200, call
    assert [call[k] for k in ("resolution", "resolution_department", "resolution_at",
                              "resolution_by")] == [None] * 4
    assert call["note"] == "等回复"


async def test_bad_resolutions_get_clear_400s_and_roles_are_checked(desk: Desk) -> None:
    call_id = await one_call(desk)
    cases = [
        ({"resolution": "done"}, "resolution"),
        ({"resolution": "referred"}, "department"),
        ({"resolution": "referred", "department": "   "}, "department"),
        ({"resolution": "resolved", "department": "维修部"}, "department"),
        ({"department": "维修部"}, "department"),
        ({"who": "王芳"}, "who"),
        ({"resolution": "resolved", "who": "  "}, "who"),
        ({"resolution": "referred", "department": "x" * 129}, "department"),
    ]
    for body, parameter in cases:
        status, answer = await patch(desk, call_id, body)
        assert status == 400, (body, answer)
        assert answer["parameter"] == parameter, (body, answer)
    # Nothing of those reached the call.
    got = await (await desk.client.get(f"/api/v1/calls/{call_id}", headers=SUP)).json()
    assert got["resolution"] is None
    assert (await patch(desk, call_id, {"resolution": "resolved"}, auth("viewer")))[0] == 403
    status, answer = await patch(desk, call_id + 1000, {"resolution": "resolved"})
    assert status == 404, answer


async def test_storing_the_call_again_keeps_its_resolution(desk: Desk) -> None:
    at = desk.clock.now - HOUR
    # First rebuilt from CEL for a gap, then the AMI record of the same call replaces it,
    # then a replay of the spool writes that record once more.
    cel = make_call("gap-1", at=at, source="cel", rings_estimated=True, ring_seconds=9.0)
    (call_id,) = await store(desk.db, desk.settings, cel)
    status, _ = await patch(desk, call_id, {"resolution": "referred", "department": "客服部",
                                           "category": "repair", "who": "李娜"})
    assert status == 200
    ami = make_call("gap-1", at=at, ring_seconds=6.0, talk_seconds=95.0)
    assert await store(desk.db, desk.settings, ami) == [call_id]
    assert await store(desk.db, desk.settings, ami) == [call_id]
    got = await (await desk.client.get(f"/api/v1/calls/{call_id}", headers=SUP)).json()
    assert got["source"] == "ami" and got["talk_seconds"] == 95.0  # the record was replaced
    assert (got["resolution"], got["resolution_department"], got["resolution_by"],
            got["category"]) == ("referred", "客服部", "李娜 (supervisor)", "repair")
    assert got["resolution_at"] is not None


async def listed(desk: Desk, **params: Any) -> list[int]:
    """The ids GET /calls lists for `params`, every page followed."""
    ids: list[int] = []
    cursor = None
    while True:
        query = {**params, "limit": 2, **({"cursor": cursor} if cursor else {})}
        response = await desk.client.get("/api/v1/calls", params=query, headers=SUP)
        assert response.status == 200, await response.text()
        body = await response.json()
        ids += [c["id"] for c in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return ids


async def test_calls_are_listed_by_resolution_and_none_lists_those_not_set(
        desk: Desk) -> None:
    resolutions = [RESOLVED[n % len(RESOLVED)] for n in range(15)]
    random.Random(11).shuffle(resolutions)
    chosen: dict[int, str | None] = {}
    for n, resolution in enumerate(resolutions):
        line = LINES[n % 2]
        (call_id,) = await store(desk.db, desk.settings, make_call(
            f"f-{n}", at=desk.clock.now - HOUR + n * 60, line=line, called_number=line))
        if resolution is not None:
            body: dict[str, Any] = {"resolution": resolution}
            if resolution == "referred":
                body["department"] = "维修部"
            assert (await patch(desk, call_id, body))[0] == 200
        chosen[call_id] = resolution
    # A resolution set then cleared is "none" again.
    cleared = next(i for i, r in chosen.items() if r is not None)
    assert (await patch(desk, cleared, {"resolution": None}))[0] == 200
    chosen[cleared] = None
    newest_first = sorted(chosen, key=lambda i: -i)  # arrival order is id order here
    assert await listed(desk) == newest_first
    on_line = set(await listed(desk, line=LINES[0]))
    for value in ("resolved", "referred", "pending", "unresolved", "none"):
        wanted = None if value == "none" else value
        expected_ids = [i for i in newest_first if chosen[i] == wanted]
        assert expected_ids, value  # every value has calls to find
        assert await listed(desk, resolution=value) == expected_ids, value
        assert await listed(desk, resolution=value, line=LINES[0]) == [
            i for i in expected_ids if i in on_line], value
    # The listed calls show what they were listed by.
    response = await desk.client.get("/api/v1/calls", params={"resolution": "none"},
                                     headers=SUP)
    items = (await response.json())["items"]
    assert items and all(c["resolution"] is None for c in items)
    response = await desk.client.get("/api/v1/calls", params={"resolution": "done"},
                                     headers=SUP)
    assert response.status == 400
    assert (await response.json())["parameter"] == "resolution"
    # The OpenAPI document lists the filter with its values, as the API takes them.
    doc = await (await desk.client.get("/api/v1/openapi.json", headers=SUP)).json()
    (param,) = [p for p in doc["paths"]["/api/v1/calls"]["get"]["parameters"]
                if p["name"] == "resolution"]
    assert param["in"] == "query" and not param.get("required")
    assert "none" in json.dumps(param["schema"]) and all(
        value in json.dumps(param["schema"]) for value in RESOLVED if value)


async def test_the_csv_export_takes_the_resolution_filter(desk: Desk) -> None:
    import csv
    import io

    open_matter = await one_call(desk, "c-open")
    settled = await one_call(desk, "c-settled")
    pending = await one_call(desk, "c-pending")
    assert (await patch(desk, settled, {"resolution": "resolved"}))[0] == 200
    assert (await patch(desk, pending, {"resolution": "pending"}))[0] == 200
    for value, wanted in (("none", {open_matter}), ("pending", {pending}),
                          ("resolved", {settled})):
        response = await desk.client.get("/api/v1/calls", headers=SUP,
                                         params={"format": "csv", "resolution": value})
        assert response.status == 200
        rows = list(csv.DictReader(io.StringIO((await response.read()).decode("utf-8-sig"))))
        assert {int(r["id"]) for r in rows} == wanted, value


async def make_followup(desk: Desk, call_id: int) -> int:
    response = await desk.client.post(f"/api/v1/calls/{call_id}/followups", headers=SUP,
                                      json={"after": ["1h"]})
    assert response.status == 201, await response.text()
    followup_id: int = (await response.json())["items"][0]["id"]
    return followup_id


async def test_a_follow_up_is_done_with_its_outcome_and_satisfaction(desk: Desk) -> None:
    call_id = await one_call(desk)
    first, second, third = [await make_followup(desk, call_id) for _ in range(3)]
    response = await desk.client.post(f"/api/v1/followups/{first}/done", headers=SUP, json={
        "who": "王芳", "note": "客户说已修好", "outcome": "resolved",
        "satisfaction": "satisfied"})
    assert response.status == 200, await response.text()
    done = await response.json()
    assert (done["status"], done["how"], done["outcome"], done["satisfaction"], done["note"],
            done["closed_by"], done["rated_by"]) == (
        "done", "manual", "resolved", "satisfied", "客户说已修好", "王芳",
        "王芳 (supervisor)")
    assert done["rated_at"] is not None

    # Satisfaction is for done follow-ups: not with a cancel, not on an open one.
    response = await desk.client.post(f"/api/v1/followups/{second}/cancel", headers=SUP,
                                      json={"satisfaction": "fair"})
    assert response.status == 400
    assert (await response.json())["parameter"] == "satisfaction"
    response = await desk.client.patch(f"/api/v1/followups/{second}", headers=SUP,
                                       json={"satisfaction": "fair"})
    assert response.status == 409, await response.text()
    response = await desk.client.post(f"/api/v1/followups/{third}/done", headers=SUP,
                                      json={"satisfaction": "happy"})
    assert response.status == 400
    assert (await response.json())["parameter"] == "satisfaction"

    # A follow-up closed without an answer gets one afterwards (e.g. closed by a callback).
    response = await desk.client.post(f"/api/v1/followups/{third}/done", headers=SUP, json={})
    assert response.status == 200
    assert (await response.json())["satisfaction"] is None
    response = await desk.client.patch(f"/api/v1/followups/{third}", headers=SUP,
                                       json={"satisfaction": "unreachable"})
    assert response.status == 200, await response.text()
    rated = await response.json()
    assert (rated["satisfaction"], rated["outcome"], rated["rated_by"]) == (
        "unreachable", None, "supervisor")
    response = await desk.client.patch(f"/api/v1/followups/{third}", headers=SUP, json={})
    assert response.status == 400
    response = await desk.client.patch("/api/v1/followups/999999", headers=SUP,
                                       json={"satisfaction": "fair"})
    assert response.status == 404


LINES = ("4008001000", "4008002000")
AGENTS = (("PJSIP/1001", "李娜"), ("PJSIP/1002", "王芳"), ("PJSIP/1003", "张伟"))
RESOLVED = ("resolved", "referred", "pending", "unresolved", None)
SATISFIED = ("satisfied", "fair", "dissatisfied", "unreachable", None)


def expected(calls: list[dict[str, Any]], key: str | None) -> dict[Any, dict[str, Any]]:
    """Each group's resolution and satisfaction counts and rates, by the documented
    definitions, from the test's own list of calls."""
    groups: dict[Any, list[dict[str, Any]]] = {}
    for call in calls:
        groups.setdefault(call[key] if key else None, []).append(call)
    out = {}
    for k, members in groups.items():
        res = Counter(c["resolution"] for c in members if c["resolution"])
        sat = Counter(s for c in members for s in c["satisfaction"] if s)
        set_ = sum(res.values())
        asked = sat["satisfied"] + sat["fair"] + sat["dissatisfied"]
        out[k] = {
            "resolutions_set": set_, "resolved": res["resolved"],
            "referred": res["referred"], "resolution_pending": res["pending"],
            "unresolved": res["unresolved"],
            "resolution_rate": round(res["resolved"] / set_, 4) if set_ else None,
            "satisfied": sat["satisfied"], "fair": sat["fair"],
            "dissatisfied": sat["dissatisfied"], "unreachable": sat["unreachable"],
            "satisfaction_rate": round(sat["satisfied"] / asked, 4) if asked else None,
        }
    return out


def figures_of(block: dict[str, Any]) -> dict[str, Any]:
    return {name: block[name] for name in resolution_stats.RESOLUTION_FIGURES_DOC}


async def test_stats_give_resolution_and_satisfaction_rates_per_line_agent_and_day(
        desk: Desk) -> None:
    rng = random.Random(13)
    start = datetime(2026, 11, 27, tzinfo=SHANGHAI)  # two local days before the clock's
    calls: list[dict[str, Any]] = []
    for n in range(36):
        day = n % 2
        at = start + timedelta(days=day, hours=8 + n % 10, minutes=n)
        answered = rng.random() < 0.8
        interface, name = rng.choice(AGENTS)
        line = rng.choice(LINES)
        record = make_call(f"r-{n}", at=at.timestamp(), line=line, called_number=line,
                           outcome="answered" if answered else "missed",
                           agent=interface if answered else None,
                           agent_name=name if answered else None,
                           caller_number=f"+86139{n:08d}")
        (call_id,) = await store(desk.db, desk.settings, record)
        resolution = rng.choice(RESOLVED)
        if resolution is not None:
            body: dict[str, Any] = {"resolution": resolution}
            if resolution == "referred":
                body["department"] = "维修部"
            assert (await patch(desk, call_id, body))[0] == 200
        answers = []
        for _ in range(rng.randrange(3)):
            followup_id = await make_followup(desk, call_id)
            answer = rng.choice(SATISFIED)
            closing = {} if answer is None else {"satisfaction": answer}
            response = await desk.client.post(f"/api/v1/followups/{followup_id}/done",
                                              headers=SUP, json=closing)
            assert response.status == 200
            answers.append(answer)
        calls.append({"line": line, "agent": interface if answered else None,
                      "day": at.date().isoformat(), "resolution": resolution,
                      "satisfaction": answers})
    # A call outside the period and an internal call, resolved and rated: not counted.
    for linkedid, at, direction in (("before", start - timedelta(hours=1), "inbound"),
                                    ("internal", start + timedelta(hours=9), "internal")):
        (other,) = await store(desk.db, desk.settings, make_call(
            linkedid, at=at.timestamp(), direction=direction))
        assert (await patch(desk, other, {"resolution": "resolved"}))[0] == 200
        followup_id = await make_followup(desk, other)
        await desk.client.post(f"/api/v1/followups/{followup_id}/done", headers=SUP,
                               json={"satisfaction": "satisfied"})
    assert sum(1 for c in calls if c["resolution"]) >= 10  # the data exercises the rates

    period = {"from": start.date().isoformat(), "to": (start + timedelta(days=2)).date()
              .isoformat()}
    response = await desk.client.get("/api/v1/stats", params=period, headers=auth("viewer"))
    assert response.status == 200, await response.text()
    assert figures_of((await response.json())["totals"]) == expected(calls, None)[None]
    for group_by, key in (("line", "line"), ("agent", "agent"), ("day", "day")):
        response = await desk.client.get("/api/v1/stats", headers=auth("viewer"),
                                         params={**period, "group_by": group_by})
        assert response.status == 200, await response.text()
        got = {g["key"]: figures_of(g) for g in (await response.json())["groups"]}
        assert got == expected(calls, key), group_by


async def test_stats_of_a_period_with_nothing_recorded_have_no_rates(desk: Desk) -> None:
    await one_call(desk)
    response = await desk.client.get("/api/v1/stats", params={"group_by": "line"},
                                     headers=SUP)
    body = await response.json()
    for block in (body["totals"], *body["groups"]):
        assert block["resolution_rate"] is None and block["satisfaction_rate"] is None
        assert block["resolutions_set"] == 0 and block["satisfied"] == 0


async def test_stats_count_each_change_of_a_resolution_or_satisfaction_at_once(
        desk: Desk) -> None:
    """/stats by hour is answered from the rollup and kept in the stats cache: every change
    a supervisor makes must be in the very next answer."""
    call_id = await one_call(desk, line="hotline")
    await one_call(desk, "c-2", line="repairs")
    day = datetime.fromtimestamp(desk.clock.now - HOUR, SHANGHAI).date()
    params = {"from": day.isoformat(), "to": (day + timedelta(days=1)).isoformat(),
              "group_by": "hour"}

    async def totals() -> dict[str, Any]:
        response = await desk.client.get("/api/v1/stats", params=params, headers=SUP)
        assert response.status == 200, await response.text()
        body = await response.json()
        assert sum(g["resolutions_set"] for g in body["groups"]) == \
            body["totals"]["resolutions_set"]
        return figures_of(body["totals"])

    assert (await totals())["resolutions_set"] == 0
    assert (await totals())["resolutions_set"] == 0  # the cached answer
    assert (await patch(desk, call_id, {"resolution": "resolved"}))[0] == 200
    got = await totals()
    assert (got["resolved"], got["resolutions_set"], got["resolution_rate"]) == (1, 1, 1.0)
    assert (await patch(desk, call_id, {"resolution": "unresolved"}))[0] == 200
    got = await totals()
    assert (got["resolved"], got["unresolved"], got["resolution_rate"]) == (0, 1, 0.0)

    followup_id = await make_followup(desk, call_id)
    response = await desk.client.post(f"/api/v1/followups/{followup_id}/done", headers=SUP,
                                      json={"satisfaction": "fair"})
    assert response.status == 200
    got = await totals()
    assert (got["fair"], got["satisfaction_rate"]) == (1, 0.0)
    response = await desk.client.patch(f"/api/v1/followups/{followup_id}", headers=SUP,
                                       json={"satisfaction": "satisfied"})
    assert response.status == 200
    got = await totals()
    assert (got["fair"], got["satisfied"], got["satisfaction_rate"]) == (0, 1, 1.0)

    assert (await patch(desk, call_id, {"resolution": None}))[0] == 200
    assert (await totals())["resolutions_set"] == 0


async def test_the_csv_export_carries_the_resolution(desk: Desk) -> None:
    import csv
    import io

    referred = await one_call(desk, "c-ref")
    plain = await one_call(desk, "c-plain")
    assert (await patch(desk, referred, {"resolution": "referred", "department": "=维修部",
                                         "who": "王芳"}))[0] == 200
    response = await desk.client.get("/api/v1/calls", params={"format": "csv"}, headers=SUP)
    assert response.status == 200
    rows = {int(r["id"]): r for r in csv.DictReader(
        io.StringIO((await response.read()).decode("utf-8-sig")))}
    call = await (await desk.client.get(f"/api/v1/calls/{referred}", headers=SUP)).json()
    local = datetime.fromisoformat(call["resolution_at"]).astimezone(SHANGHAI)
    assert (rows[referred]["resolution"], rows[referred]["resolution_department"],
            rows[referred]["resolution_by"], rows[referred]["resolution_at"]) == (
        "referred", "'=维修部", "王芳 (supervisor)", local.strftime("%Y-%m-%d %H:%M:%S"))
    assert [rows[plain][k] for k in ("resolution", "resolution_department", "resolution_at",
                                     "resolution_by")] == [""] * 4


async def test_the_report_gives_the_rates_per_period_line_agent_and_day(desk: Desk) -> None:
    import csv
    import io

    from callhub.report import build_report, render

    day = datetime(2026, 11, 24, tzinfo=SHANGHAI)  # a Tuesday: its week is 23 to 29 November
    plan = [("4008001000", "PJSIP/1001", "resolved", "satisfied"),
            ("4008001000", "PJSIP/1002", "unresolved", "dissatisfied"),
            ("4008002000", "PJSIP/1001", "resolved", "fair"),
            ("4008002000", "PJSIP/1002", "referred", "unreachable")]
    for n, (line, agent, resolution, answer) in enumerate(plan):
        (call_id,) = await store(desk.db, desk.settings, make_call(
            f"w-{n}", at=(day + timedelta(hours=9 + n)).timestamp(), line=line,
            called_number=line, agent=agent))
        body: dict[str, Any] = {"resolution": resolution}
        if resolution == "referred":
            body["department"] = "维修部"
        assert (await patch(desk, call_id, body))[0] == 200
        followup_id = await make_followup(desk, call_id)
        await desk.client.post(f"/api/v1/followups/{followup_id}/done", headers=SUP,
                               json={"satisfaction": answer})
    report = await build_report(desk.db, desk.settings, day.date(), period="week")
    params = {"from": "2026-11-23", "to": "2026-11-30"}
    for scope, group_by in (("totals", None), ("lines", "line"), ("agents", "agent")):
        response = await desk.client.get("/api/v1/stats", headers=SUP, params={
            **params, **({"group_by": group_by} if group_by else {})})
        api = await response.json()
        blocks = [api["totals"]] if group_by is None else api["groups"]
        mine = [report["totals"]] if group_by is None else report[scope]
        assert [figures_of(b) for b in mine] == [figures_of(b) for b in blocks], scope
    totals = report["totals"]
    assert totals["resolution_rate"] == round(2 / 4, 4)
    assert totals["satisfaction_rate"] == round(1 / 3, 4)
    tuesday = next(d for d in report["days"] if d["date"] == "2026-11-24")
    assert figures_of(tuesday) == figures_of(totals)
    assert all(d["resolutions_set"] == 0 for d in report["days"] if d is not tuesday)

    text = render(report, "text")
    period_row = next(line for line in text.splitlines() if line.startswith("period "))
    assert f"{totals['resolution_rate'] * 100:.1f} %" in period_row
    assert f"{totals['satisfaction_rate'] * 100:.1f} %" in period_row
    rows = list(csv.DictReader(io.StringIO(render(report, "csv").lstrip("\ufeff"))))
    by_scope = {(r["scope"], r["key"]): r for r in rows}
    for g in report["lines"]:
        assert float(by_scope[("line", g["key"])]["resolution_rate"]) == g["resolution_rate"]
    assert float(by_scope[("week", "")]["satisfaction_rate"]) == totals["satisfaction_rate"]
    for lang, word in (("zh", "解决率"), ("en", "Resolution rate")):
        page = render(report, "html", lang)
        section = page[page.index('<table id="resolution"'):]
        assert word in page and f"{totals['resolution_rate'] * 100:.1f} %" in section
