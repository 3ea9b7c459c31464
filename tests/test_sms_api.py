"""The SMS routes: the opt-out list (supervisor and admin) and the outbox's filters and pages."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from aiohttp.test_utils import TestClient
from sms_fixtures import call
from store_fixtures import auth

from callhub.config import Settings
from callhub.sms import SmsSettings
from callhub.store.db import Database
from callhub.store.save import save_calls

SMS = SmsSettings.model_validate({
    "gateway": "webhook", "url": "http://127.0.0.1:9/send", "quiet_seconds": 0,
    "rules": [{"line": "front-desk", "after": "answered", "template": "谢谢{line}"}]})


async def test_opt_out_list(api: TestClient[Any, Any]) -> None:
    url = "/api/v1/sms/optouts"
    assert (await api.get(url, headers=auth("viewer"))).status == 403
    got = await api.post(url, json={"number": "+86 139-0013-9000"}, headers=auth("supervisor"))
    assert got.status == 201, await got.text()
    assert (await got.json())["number"] == "+8613900139000"
    again = await api.post(url, json={"number": "+8613900139000"}, headers=auth("admin"))
    assert again.status == 200
    bad = await api.post(url, json={"number": "1001"}, headers=auth("admin"))
    assert bad.status == 400 and "number" in (await bad.json())["message"]
    listed = await (await api.get(url, headers=auth("supervisor"))).json()
    assert [o["number"] for o in listed["items"]] == ["+8613900139000"]
    assert listed["items"][0]["by"] == "supervisor"
    gone = await api.delete(url, params={"number": "+8613900139000"}, headers=auth("admin"))
    assert gone.status == 204
    again = await api.delete(url, params={"number": "+8613900139000"}, headers=auth("admin"))
    assert again.status == 404
    assert (await (await api.get(url, headers=auth("admin"))).json())["items"] == []


async def test_outbox_pages_and_filters(api: TestClient[Any, Any], any_db: Database,
                                        api_settings: Settings) -> None:
    settings = replace(api_settings, sms=SMS)
    async with any_db.begin() as conn:
        await save_calls(conn, [call(f"p.{n}", caller=f"+86139000000{n:02d}")
                                for n in range(5)], settings)
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = await (await api.get("/api/v1/sms", params=params,
                                    headers=auth("supervisor"))).json()
        seen += [m["linkedid"] for m in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == [f"p.{n}" for n in range(5)] and len(seen) == 5
    queued = await (await api.get("/api/v1/sms", params={"status": "queued"},
                                  headers=auth("supervisor"))).json()
    assert len(queued["items"]) == 5 and queued["items"][0]["text"] == "谢谢front-desk"
    sent = await (await api.get("/api/v1/sms", params={"status": "sent"},
                                headers=auth("supervisor"))).json()
    assert sent["items"] == []
    assert (await api.get("/api/v1/sms", params={"status": "lost"},
                          headers=auth("supervisor"))).status == 400
    assert (await api.get("/api/v1/sms", headers=auth("viewer"))).status == 403
    calls = await (await api.get("/api/v1/calls", headers=auth("supervisor"))).json()
    assert {c["sms_status"] for c in calls["items"]} == {"queued"}
