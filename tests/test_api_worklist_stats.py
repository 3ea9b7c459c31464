"""GET /worklist and marking entries; GET /stats figures by their definitions."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from aiohttp.test_utils import TestClient, TestServer
from store_fixtures import T0, auth, make_call, store

from callhub.api.app import make_app
from callhub.config import Settings
from callhub.store.db import Database

Client = TestClient[Any, Any]
SUP = auth("supervisor")
X, Y, Z = "+8613800000004", "+8613800000005", "+8613800000006"


async def test_worklist_pending_first_oldest_first_and_marking(
        api: Client, any_db: Database, api_settings: Settings) -> None:
    await store(any_db, api_settings,
                make_call("m1", at=T0 + 100, outcome="missed", caller_number=X),
                make_call("m2", at=T0, outcome="missed", caller_number=Y),
                make_call("m3", at=T0 + 50, outcome="missed", caller_number=Z),
                make_call("m4", at=T0 + 200, outcome="missed", caller_number=X),
                make_call("cb", at=T0 + 300, direction="outbound", called_number=Z))
    response = await api.get("/api/v1/worklist", headers=SUP)
    assert response.status == 200
    items = (await response.json())["items"]
    assert [(e["number"], e["status"]) for e in items] == [
        (Y, "pending"), (X, "pending"), (Z, "handled")]
    assert items[1]["call_count"] == 2
    assert [c["linkedid"] for c in items[1]["calls"]] == ["m1", "m4"]
    assert items[2]["how"] == "callback" and items[2]["time_to_callback_seconds"] > 0

    y_id, x_id = items[0]["id"], items[1]["id"]
    response = await api.post(f"/api/v1/worklist/{y_id}/handled", headers=SUP,
                              json={"who": "王芳", "note": "回电已处理"})
    assert response.status == 200, await response.text()
    entry = await response.json()
    assert (entry["status"], entry["how"], entry["handled_by"], entry["note"]) == (
        "handled", "manual", "王芳", "回电已处理")
    response = await api.post(f"/api/v1/worklist/{x_id}/dismiss", headers=SUP, json={})
    assert (await response.json())["status"] == "dismissed"

    response = await api.post(f"/api/v1/worklist/{x_id}/handled", headers=SUP,
                              json={"who": "王芳"})
    assert response.status == 409
    response = await api.post("/api/v1/worklist/999999/dismiss", headers=SUP)
    assert response.status == 404
    response = await api.post(f"/api/v1/worklist/{x_id}/handled", headers=SUP, json={})
    assert response.status == 400 and (await response.json())["parameter"] == "who"

    pending = await api.get("/api/v1/worklist", params={"status": "pending"}, headers=SUP)
    assert (await pending.json())["items"] == []
    page = await api.get("/api/v1/worklist", params={"limit": 2}, headers=SUP)
    body = await page.json()
    assert len(body["items"]) == 2 and body["next_cursor"]
    rest = await api.get("/api/v1/worklist", params={"limit": 2, "cursor": body["next_cursor"]},
                         headers=SUP)
    rest_body = await rest.json()
    assert len(rest_body["items"]) == 1 and rest_body["next_cursor"] is None
    bad = await api.get("/api/v1/worklist", params={"status": "open"}, headers=SUP)
    assert bad.status == 400 and (await bad.json())["parameter"] == "status"


def desk_day() -> list[Any]:
    """Eight calls within one hour; the expected figures below follow from DESIGN.md."""
    return [
        make_call("A", at=T0 + 10, ring_seconds=4.0, hangup_by="external"),     # 1 ring, wait 5
        make_call("B", at=T0 + 20, ring_seconds=12.0, hangup_by="agent",        # 3 rings, 13
                  agent="PJSIP/1002", agent_name="王芳"),
        make_call("C", at=T0 + 30, ring_seconds=18.0, hangup_by="external"),    # 4 rings, 19
        make_call("D", at=T0 + 40, ring_seconds=25.0, hangup_by="external",     # 6 rings, 26
                  agent="PJSIP/1002", agent_name="王芳"),
        make_call("E", at=T0 + 50, outcome="missed", caller_number=X),
        make_call("F", at=T0 + 60, outcome="abandoned", reason="while_ringing",
                  caller_number=Y, ring_seconds=8.0),
        make_call("G", at=T0 + 70, outcome="abandoned", reason="while_ringing",
                  caller_number=Z, ring_seconds=1.0, wait_seconds=2.0, short_abandon=True),
        make_call("H", at=T0 + 600, direction="outbound", called_number=X),   # calls E back
    ]


async def stats(client: Client, **params: Any) -> Any:
    response = await client.get("/api/v1/stats", headers=auth("viewer"), params={
        "from": "2026-11-01T00:00:00+00:00", "to": "2026-12-01T00:00:00+00:00", **params})
    assert response.status == 200, await response.text()
    return await response.json()


async def test_stats_figures(api: Client, any_db: Database, api_settings: Settings) -> None:
    calls = desk_day()
    await store(any_db, api_settings, *calls)
    t = (await stats(api))["totals"]
    assert (t["inbound"], t["outbound"], t["answered"], t["abandoned"], t["short_abandons"],
            t["missed"]) == (6, 1, 4, 1, 1, 1)
    assert t["answer_rate"] == pytest.approx(4 / 6, abs=1e-4)
    assert t["answered_within_rings"] == 2  # A (1 ring), B (3 rings)
    assert t["within_rings_rate"] == pytest.approx(2 / 6, abs=1e-4)
    assert t["within_rings_rate_answered"] == pytest.approx(2 / 4, abs=1e-4)
    assert t["answered_within_seconds"] == 3  # waits 5, 13, 19 <= 20
    assert t["service_level"] == pytest.approx(3 / 6, abs=1e-4)
    assert t["service_level_answered"] == pytest.approx(3 / 4, abs=1e-4)
    assert t["avg_ring_seconds"] == pytest.approx((4 + 12 + 18 + 25) / 4)
    assert t["p90_ring_seconds"] == 25.0
    assert t["avg_speed_of_answer_seconds"] == pytest.approx((5 + 13 + 19 + 26) / 4)
    assert t["agent_hangup_first_rate"] == pytest.approx(1 / 4)
    assert (t["pending_callbacks"], t["handled_callbacks"]) == (1, 1)  # F pending, E called back
    h, e = calls[7], calls[4]
    assert h.answered_at is not None
    assert t["median_time_to_callback_seconds"] == pytest.approx(h.answered_at - e.arrived_at,
                                                                 abs=1e-2)

    wider = (await stats(api, rings=4, seconds=25))["totals"]
    assert wider["answered_within_rings"] == 3 and wider["answered_within_seconds"] == 3

    by_agent = await stats(api, group_by="agent")
    groups = {g["key"]: g for g in by_agent["groups"]}
    assert set(groups) == {"PJSIP/1001", "PJSIP/1002", None}
    assert groups["PJSIP/1002"]["agent_name"] == "王芳"
    assert groups["PJSIP/1002"]["answered"] == 2
    assert groups["PJSIP/1002"]["agent_hangup_first_rate"] == pytest.approx(0.5)
    assert groups[None]["missed"] == 1 and groups[None]["pending_callbacks"] == 1
    assert by_agent["groups"][-1]["key"] is None

    by_hour = await stats(api, group_by="hour")
    assert sum(g["inbound"] for g in by_hour["groups"]) == 6
    assert all(g["key"].endswith(":00:00+08:00") for g in by_hour["groups"])  # local hours
    by_day = await stats(api, group_by="day")
    local_day = datetime.fromtimestamp(T0, ZoneInfo("Asia/Shanghai")).date().isoformat()
    assert [g["key"] for g in by_day["groups"]] == [local_day]


async def test_stats_can_count_short_abandons(any_db: Database, api_settings: Settings) -> None:
    settings = replace(api_settings, stats_exclude_short_abandons=False)
    await store(any_db, settings, *desk_day())
    client: Client = TestClient(TestServer(make_app(settings, any_db)))
    await client.start_server()
    try:
        t = (await stats(client))["totals"]
    finally:
        await client.close()
    assert (t["inbound"], t["abandoned"], t["short_abandons"]) == (7, 2, 1)
    assert t["answer_rate"] == pytest.approx(4 / 7, abs=1e-4)


@pytest.mark.parametrize(("params", "parameter"), [
    ({"group_by": "week"}, "group_by"), ({"rings": "0"}, "rings"),
    ({"seconds": "nan"}, "seconds"), ({"from": "2026-13-01"}, "from"),
    ({"from": "2020-01-01", "to": "2026-01-01"}, "to"),
])
async def test_stats_bad_parameters(api: Client, params: dict[str, str], parameter: str) -> None:
    response = await api.get("/api/v1/stats", headers=auth("viewer"), params=params)
    assert response.status == 400
    assert (await response.json())["parameter"] == parameter


async def test_stats_default_period_is_today(api: Client) -> None:
    body = await (await api.get("/api/v1/stats", headers=auth("viewer"))).json()
    assert body["from"].endswith("T00:00:00+08:00")
    assert body["totals"]["inbound"] == 0 and body["totals"]["answer_rate"] is None
