"""/api/v1/agents and /api/v1/rotas through aiohttp's real server, inside callhub's app
(role check, JSON errors): admin only, changes checked as a whole rota, persisted, and used
by the very next routing decision."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from routing_fixtures import HOTLINE_DID, berlin

from callhub.api.app import make_app
from callhub.config import ApiToken, Settings
from callhub.routing.chooser import Router
from callhub.routing.rota_file import load_rota
from callhub.store.db import Database

ADMIN = {"Authorization": "Bearer admin-token-123"}
VIEWER = {"Authorization": "Bearer viewer-token-123"}


@pytest.fixture
async def api(router: Router, tmp_path: Path) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    settings = Settings(timezone="Europe/Berlin", api_tokens=(
        ApiToken("admin", "admin-token-123"), ApiToken("viewer", "viewer-token-123")))
    db = Database.connect(f"sqlite+aiosqlite:///{tmp_path / 'api.db'}")
    app = make_app(settings, db, router=router)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            yield str(server.make_url("")), session
    finally:
        await server.close()
        await db.engine.dispose()


async def call(api: tuple[str, aiohttp.ClientSession], method: str, path: str,
               headers: dict[str, str] | None = ADMIN, **kw: Any) -> tuple[int, Any]:
    base, session = api
    async with session.request(method, base + path, headers=headers, **kw) as resp:
        body = await resp.json() if resp.content_type == "application/json" else None
        return resp.status, body


async def test_admin_token_required(api: tuple[str, aiohttp.ClientSession]) -> None:
    assert (await call(api, "GET", "/api/v1/agents", headers=None))[0] == 401
    assert (await call(api, "GET", "/api/v1/rotas", headers=VIEWER))[0] == 403
    status, body = await call(api, "GET", "/api/v1/agents")
    assert status == 200
    assert [a["id"] for a in body["agents"]] == ["ann", "ben", "cai", "dora", "eve", "lead"]


async def test_clearing_a_trainee_puts_her_in_the_rotation(
        api: tuple[str, aiohttp.ClientSession], router: Router, state_path: Path) -> None:
    monday = berlin("2026-11-30 10:00")
    assert "dora" not in [a.id for a in router.choose(HOTLINE_DID, monday).targets]
    status, body = await call(api, "PATCH", "/api/v1/agents/dora", json={"cleared": True})
    assert status == 200 and body["cleared"] is True
    assert [a.id for a in router.choose(HOTLINE_DID, monday).targets] == [
        "ben", "cai", "dora", "ann"]
    saved = load_rota(state_path / "rota.json")  # persisted for the next start
    assert saved.agents["dora"].cleared


async def test_create_replace_and_delete_agent(api: tuple[str, aiohttp.ClientSession]) -> None:
    status, body = await call(api, "PUT", "/api/v1/agents/fay",
                              json={"name": "Fay", "interface": "PJSIP/1006"})
    assert status == 201 and body == {"id": "fay", "name": "Fay", "interface": "PJSIP/1006",
                                      "active": True, "cleared": True}
    status, body = await call(api, "PUT", "/api/v1/agents/fay",
                              json={"name": "Fay Wu", "interface": "PJSIP/1016"})
    assert status == 200 and body["interface"] == "PJSIP/1016"
    assert (await call(api, "DELETE", "/api/v1/agents/fay"))[0] == 204
    assert (await call(api, "GET", "/api/v1/agents/fay"))[0] == 404


async def test_bad_agent_changes_are_refused(api: tuple[str, aiohttp.ClientSession]) -> None:
    status, body = await call(api, "PUT", "/api/v1/agents/gus",
                              json={"name": "Gus", "interface": "PJSIP/1001"})
    assert status == 400
    assert body["message"] == ("agent 'gus': interface 'PJSIP/1001' already belongs to "
                               "agent 'ann'")
    status, body = await call(api, "PATCH", "/api/v1/agents/ann", json={"cleared": "yes"})
    assert status == 400 and body["parameter"] == "cleared"
    status, body = await call(api, "DELETE", "/api/v1/agents/ann")
    assert status == 409 and "hotline" in body["message"]
    status, body = await call(api, "PATCH", "/api/v1/agents/ann", data=b"{oops")
    assert status == 400 and body["parameter"] == "body"


async def test_rotas_read_and_replace(api: tuple[str, aiohttp.ClientSession],
                                      router: Router) -> None:
    status, body = await call(api, "GET", "/api/v1/rotas")
    assert status == 200 and body["timezone"] == "Europe/Berlin"
    assert [line["name"] for line in body["lines"]] == ["hotline", "sales"]
    status, body = await call(api, "GET", "/api/v1/rotas/4008009000")  # by DID
    assert status == 200 and body["rotation"] == ["ann", "ben"]

    new_sales = {"dids": ["4008009000"], "rotation": ["ben", "cai"], "ring_timeout": 20,
                 "shifts": [{"name": "mornings", "days": ["mon-fri"], "start": "07:00",
                             "end": "13:00"}]}
    status, body = await call(api, "PUT", "/api/v1/rotas/sales", json=new_sales)
    assert status == 200 and body["shifts"][0]["agents"] == ["ben", "cai"]
    decision = router.choose("4008009000", berlin("2026-11-30 12:59"))
    assert decision.interfaces == ("PJSIP/1002", "PJSIP/1003") and decision.ring_timeout == 20
    assert router.choose("4008009000", berlin("2026-11-30 13:00")).result == "no_agent_on_duty"

    bad = {**new_sales, "shifts": [{"name": "mornings", "start": "7am", "end": "13:00"}]}
    status, body = await call(api, "PUT", "/api/v1/rotas/sales", json=bad)
    assert status == 400
    assert body["message"].startswith("line 'sales', shift 'mornings': start: expected")

    status, body = await call(api, "GET", "/api/v1/rotas/hotline/on-duty",
                              params={"at": "2026-12-05T01:00"})
    assert status == 200 and [a["id"] for a in body["on_duty"]] == ["cai"]
    status, body = await call(api, "GET", "/api/v1/rotas/hotline/on-duty",
                              params={"at": "yesterday"})
    assert status == 400 and body["parameter"] == "at"
    assert (await call(api, "DELETE", "/api/v1/rotas/sales"))[0] == 204
    assert router.choose("4008009000", berlin("2026-11-30 12:00")).result == "unknown_line"
    assert (await call(api, "GET", "/api/v1/rotas/sales"))[0] == 404


async def test_names_are_taken_as_given_or_refused(api: tuple[str, aiohttp.ClientSession]
                                                  ) -> None:
    status, body = await call(api, "PUT", "/api/v1/rotas/%C2%85sales%20",
                              json={"dids": ["4008009001"], "rotation": ["ann"]})
    assert status == 400 and "must not start or end with spaces" in body["message"]
    status, body = await call(api, "PUT", "/api/v1/agents/gus%07",
                              json={"interface": "PJSIP/1009"})
    assert status == 400 and "control characters" in body["message"]
    status, body = await call(api, "PUT", "/api/v1/rotas/张三热线",
                              json={"dids": ["4008009001"], "rotation": ["ann"]})
    assert status == 201 and body["name"] == "张三热线"


async def test_ring_timeouts_per_agent(api: tuple[str, aiohttp.ClientSession],
                                       router: Router, state_path: Path) -> None:
    monday = berlin("2026-11-30 10:00")
    status, body = await call(api, "GET", "/api/v1/agents/ben")
    assert status == 200 and body["ring_timeout"] == 20
    status, body = await call(api, "GET", "/api/v1/agents/ann")
    assert "ring_timeout" not in body  # the line's
    status, body = await call(api, "PATCH", "/api/v1/agents/ann", json={"ring_timeout": 25})
    assert status == 200 and body["ring_timeout"] == 25
    status, body = await call(api, "PATCH", "/api/v1/agents/cai", json={"ring_timeout": 30})
    assert status == 200
    # ann's own 25; ben's own 20; cai's 30 does not beat the hotline's entry for cai (8)
    assert router.choose(HOTLINE_DID, monday).ring_timeouts == (25, 20, 8)
    assert load_rota(state_path / "rota.json").agents["ann"].ring_timeout == 25
    status, body = await call(api, "PATCH", "/api/v1/agents/ann", json={"ring_timeout": None})
    assert status == 200 and "ring_timeout" not in body

    status, body = await call(api, "PATCH", "/api/v1/agents/ann", json={"ring_timeout": 0})
    assert status == 400 and body["message"] == (
        "agent 'ann': ring_timeout: must be 1-600 seconds, got 0")
    status, body = await call(api, "PATCH", "/api/v1/agents/ann", json={"ring_timeout": "9"})
    assert status == 400 and body["parameter"] == "ring_timeout"

    status, body = await call(api, "GET", "/api/v1/rotas/hotline")
    assert body["ring_timeouts"] == {"cai": 8}
    assert (await call(api, "PUT", "/api/v1/agents/fay", json={"interface": "PJSIP/1009"})
            )[0] == 201
    sales = {"dids": ["4008009000"], "rotation": ["ann", "ben"], "ring_timeout": 10,
             "ring_timeouts": {"ben": 7, "fay": 30},
             "shifts": [{"name": "always", "start": "00:00", "end": "24:00"}]}
    status, body = await call(api, "PUT", "/api/v1/rotas/sales", json=sales)
    assert status == 200 and body["ring_timeouts"] == {"ben": 7, "fay": 30}
    assert router.choose("4008009000", monday).ring_timeouts == (10, 7)
    status, body = await call(api, "PUT", "/api/v1/rotas/sales",
                              json={**sales, "ring_timeouts": {"ben": -1}})
    assert status == 400 and body["message"] == (
        "line 'sales': ring_timeouts.ben: must be 1-600 seconds, got -1")
    # fay is in no rotation, but the sales line names fay's ring time: still in use
    status, body = await call(api, "DELETE", "/api/v1/agents/fay")
    assert status == 409 and "line(s) sales;" in body["message"]

    status, doc = await call(api, "GET", "/api/v1/openapi.json")
    ref = doc["paths"]["/api/v1/agents/{id}"]["get"]["responses"]["200"]["content"][
        "application/json"]["schema"]["$ref"]  # the response model, under components
    agent = doc["components"]["schemas"][ref.removeprefix("#/components/schemas/")]
    assert agent["properties"]["ring_timeout"]["maximum"] == 600
