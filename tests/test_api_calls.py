"""GET /calls (filters, keyset pages, CSV), GET and PATCH /calls/{id}, over real HTTP."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from aiohttp.test_utils import TestClient
from store_fixtures import T0, auth, make_call, store

from callhub.config import Settings
from callhub.store.db import Database

Client = TestClient[Any, Any]
SUP = auth("supervisor")


async def get_json(api: Client, path: str, status: int = 200, **params: Any) -> Any:
    response = await api.get(path, params=params, headers=SUP)
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    return await response.json()


async def test_filters_each_narrow_the_list(api: Client, any_db: Database,
                                            api_settings: Settings) -> None:
    ids = await store(
        any_db, api_settings,
        make_call("ans", at=T0, ring_seconds=4.0),
        make_call("miss", at=T0 + 60, outcome="missed", caller_number="+8613800000004",
                  ring_seconds=20.0),
        make_call("aband", at=T0 + 120, outcome="abandoned", reason="while_ringing",
                  caller_number="+8613800000005", line="sales", called_number="4008001001",
                  ring_seconds=3.0),
        make_call("out", at=T0 + 180, direction="outbound", called_number="+8613800000004",
                  agent="PJSIP/1002", agent_name="王芳"),
    )
    by_name = dict(zip(["ans", "miss", "aband", "out"], ids, strict=True))

    async def linkedids(**params: Any) -> list[str]:
        body = await get_json(api, "/api/v1/calls", **params)
        return [c["linkedid"] for c in body["items"]]

    assert await linkedids() == ["out", "aband", "miss", "ans"]  # newest first
    assert await linkedids(direction="outbound") == ["out"]
    assert await linkedids(outcome="missed") == ["miss"]
    assert await linkedids(reason="while_ringing") == ["aband"]
    assert await linkedids(line="sales") == ["aband"]
    assert await linkedids(did="4008001001") == ["aband"]
    assert await linkedids(agent="王芳") == ["out"]
    assert await linkedids(agent="PJSIP/1001") == ["ans"]
    assert await linkedids(caller_number="+8613800000004") == ["miss"]
    assert await linkedids(number="+8613800000004") == ["out", "miss"]
    assert await linkedids(min_rings=5) == ["miss"]
    assert await linkedids(worklist_status="handled") == ["miss"]  # called back by "out"
    assert await linkedids(worklist_status="pending") == ["aband"]
    # Times: naive values are local (Asia/Shanghai, +08:00) time.
    after_first = datetime.fromtimestamp(T0 + 30, UTC)
    assert await linkedids(**{"from": after_first.isoformat()}) == ["out", "aband", "miss"]
    local = after_first.astimezone(ZoneInfo("Asia/Shanghai")).replace(tzinfo=None)
    assert await linkedids(**{"to": local.isoformat()}) == ["ans"]
    call = (await get_json(api, "/api/v1/calls", outcome="missed"))["items"][0]
    assert call["id"] == by_name["miss"]
    assert call["caller_name"] == "张三"
    assert call["worklist"]["status"] == "handled"


async def test_keyset_pages_cover_everything_once(api: Client, any_db: Database,
                                                  api_settings: Settings) -> None:
    # Ties on arrival time: the id breaks them, so pages neither skip nor repeat.
    records = [make_call(f"c{i}", at=T0 + (i // 3)) for i in range(23)]
    await store(any_db, api_settings, *records)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 5}
        if cursor:
            params["cursor"] = cursor
        body = await get_json(api, "/api/v1/calls", **params)
        seen += [c["linkedid"] for c in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 5
    assert sorted(seen) == sorted(r.linkedid for r in records)
    assert len(set(seen)) == len(seen)
    arrivals = [r.arrived_at for r in sorted(records, key=lambda r: r.linkedid)]
    assert arrivals  # and the order is newest first:
    times = {r.linkedid: r.arrived_at for r in records}
    assert [times[x] for x in seen] == sorted(times[x] for x in seen)[::-1]


@pytest.mark.parametrize(("params", "parameter"), [
    ({"outcome": "lost"}, "outcome"),
    ({"min_rings": "-1"}, "min_rings"),
    ({"min_rings": "three"}, "min_rings"),
    ({"from": "yesterday"}, "from"),
    ({"from": "2026-11-29", "to": "2026-11-28"}, "to"),
    ({"limit": "0"}, "limit"),
    ({"limit": "100000"}, "limit"),
    ({"cursor": "not-a-cursor"}, "cursor"),
    ({"outcom": "missed"}, "outcom"),
    ({"direction": ""}, "direction"),
    ({"format": "xml"}, "format"),
    ({"caller_number": "+86\x00' OR 1=1"}, "caller_number"),  # PostgreSQL refuses NUL
])
async def test_bad_parameters_get_400_naming_them(api: Client, params: dict[str, str],
                                                  parameter: str) -> None:
    body = await get_json(api, "/api/v1/calls", status=400, **params)
    assert body["error"] == "bad_parameter"
    assert body["parameter"] == parameter
    assert parameter in body["message"]


async def test_repeated_parameter_is_refused(api: Client) -> None:
    response = await api.get("/api/v1/calls?outcome=missed&outcome=answered", headers=SUP)
    assert response.status == 400
    assert (await response.json())["parameter"] == "outcome"


@pytest.mark.parametrize("how", ["query", "accept"])
async def test_csv_opens_in_excel_with_chinese_names(api: Client, any_db: Database,
                                                     api_settings: Settings, how: str) -> None:
    await store(any_db, api_settings,
                make_call("1", at=T0, caller_name="张三"),
                make_call("2", at=T0 + 5, caller_name="=HYPERLINK(\"x\")", outcome="missed"))
    if how == "query":
        response = await api.get("/api/v1/calls", params={"format": "csv"}, headers=SUP)
    else:
        response = await api.get("/api/v1/calls", headers={**SUP, "Accept": "text/csv"})
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/csv")
    raw = await response.read()
    assert raw.startswith(b"\xef\xbb\xbf")  # the BOM Excel needs to read UTF-8
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"))))
    assert [r["linkedid"] for r in rows] == ["2", "1"]
    assert rows[1]["caller_name"] == "张三"
    assert rows[1]["caller_number"] == "+8613800000001"  # a number stays a number
    assert rows[0]["caller_name"].startswith("'=")  # a formula does not run
    local = datetime.fromtimestamp(T0, ZoneInfo("Asia/Shanghai"))
    assert rows[1]["arrived_at"] == local.strftime("%Y-%m-%d %H:%M:%S")  # local time


async def test_csv_says_where_each_call_came_from_as_the_json_does(
        api: Client, any_db: Database, api_settings: Settings) -> None:
    # A call seen live and one rebuilt from CEL for a gap (its rings estimated).
    await store(any_db, api_settings, make_call("live", at=T0),
                make_call("gap", at=T0 + 5, source="cel", rings_estimated=True,
                          ring_seconds=9.0))
    response = await api.get("/api/v1/calls", params={"format": "csv"}, headers=SUP)
    assert response.status == 200
    rows = {r["linkedid"]: r for r in csv.DictReader(
        io.StringIO((await response.read()).decode("utf-8-sig")))}
    calls = {c["linkedid"]: c for c in (await get_json(api, "/api/v1/calls"))["items"]}
    assert set(rows) == set(calls) == {"live", "gap"}
    for linkedid, call in calls.items():
        assert rows[linkedid]["source"] == call["source"], linkedid
        assert rows[linkedid]["rings_estimated"] == (
            "yes" if call["rings_estimated"] else "no"), linkedid
    assert (rows["gap"]["source"], rows["gap"]["rings_estimated"]) == ("cel", "yes")
    assert (rows["live"]["source"], rows["live"]["rings_estimated"]) == ("ami", "no")
    # Listed by where they came from, in JSON and CSV.
    for source in ("ami", "cel"):
        body = await get_json(api, "/api/v1/calls", source=source)
        assert [c["linkedid"] for c in body["items"]] == [
            lid for lid, c in calls.items() if c["source"] == source]
        response = await api.get("/api/v1/calls", params={"format": "csv", "source": source},
                                 headers=SUP)
        text = (await response.read()).decode("utf-8-sig")
        assert text.splitlines()[0].split(",")[-2:] == ["source", "rings_estimated"]
        assert {r["source"] for r in csv.DictReader(io.StringIO(text))} == {source}
    response = await api.get("/api/v1/calls", params={"source": "cdr"}, headers=SUP)
    assert response.status == 400


async def test_csv_streams_more_than_one_page(api: Client, any_db: Database,
                                              api_settings: Settings) -> None:
    from callhub.api import csv_export
    await store(any_db, api_settings, *[make_call(f"p{i}", at=T0 + i) for i in range(25)])
    old = csv_export.PAGE
    csv_export.PAGE = 10
    try:
        response = await api.get("/api/v1/calls", params={"format": "csv", "outcome":
                                                          "answered"}, headers=SUP)
        text = (await response.read()).decode("utf-8-sig")
    finally:
        csv_export.PAGE = old
    assert len(list(csv.DictReader(io.StringIO(text)))) == 25


async def test_one_call_with_attempts_and_patch(api: Client, any_db: Database,
                                                api_settings: Settings) -> None:
    [call_id] = await store(any_db, api_settings, make_call("1795922046.16", outcome="missed"))
    call = await get_json(api, f"/api/v1/calls/{call_id}")
    assert call["linkedid"] == "1795922046.16"
    assert [(a["seq"], a["interface"], a["result"]) for a in call["attempts"]] == [
        (1, "PJSIP/1001", "no_answer")]

    response = await api.patch(f"/api/v1/calls/{call_id}", headers=SUP,
                               json={"category": "complaint", "note": "噪音投诉"})
    assert response.status == 200, await response.text()
    patched = await response.json()
    assert (patched["category"], patched["note"]) == ("complaint", "噪音投诉")
    again = await get_json(api, f"/api/v1/calls/{call_id}")
    assert (again["category"], again["note"]) == ("complaint", "噪音投诉")

    for body, parameter in (({"category": "gossip"}, "category"), ({"colour": "red"}, "colour"),
                            ({}, "body"), ({"note": 5}, "note"), ({"note": "a\x00b"}, "note")):
        response = await api.patch(f"/api/v1/calls/{call_id}", headers=SUP, json=body)
        assert response.status == 400
        assert (await response.json())["parameter"] == parameter
    response = await api.patch(f"/api/v1/calls/{call_id}", headers=SUP, data=b"{not json")
    assert response.status == 400
    assert (await get_json(api, "/api/v1/calls/424242", status=404))["error"] == "not_found"
    assert (await get_json(api, "/api/v1/calls/abc", status=400))["parameter"] == "id"
    response = await api.patch("/api/v1/calls/424242", headers=SUP, json={"note": "x"})
    assert response.status == 404
