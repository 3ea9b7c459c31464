"""Tokens and roles on every route, /healthz and /readyz, and the OpenAPI document."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from store_fixtures import T0, TOKENS, auth, make_call, store

from callhub.api.app import make_app
from callhub.api.base import Operation
from callhub.config import PbxConfig, Settings
from callhub.store.db import Database

Client = TestClient[Any, Any]


def concrete(path: str, call_id: int) -> str:
    return path.replace("{id}", str(call_id))


async def documented(api: Client) -> dict[str, Any]:
    response = await api.get("/api/v1/openapi.json", headers=auth("viewer"))
    assert response.status == 200
    return await response.json()  # type: ignore[no-any-return]


async def test_no_data_without_a_valid_token(api: Client, any_db: Database,
                                             api_settings: Settings) -> None:
    [call_id] = await store(any_db, api_settings,
                            make_call("1", at=T0, outcome="missed", caller_number="+861234"))
    doc = await documented(api)
    checked = 0
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            url = concrete(path, call_id if "worklist" not in path else 1)
            for headers in ({}, {"Authorization": "Bearer wrong-token-000"},
                            {"Authorization": f"Basic {TOKENS['admin']}"}):
                response = await api.request(method.upper(), url, headers=headers,
                                             json={"who": "x"} if method != "get" else None)
                text = await response.text()
                if op["security"] == []:
                    assert path == "/healthz"
                    assert response.status == 200
                    continue
                assert response.status == 401, (method, path, headers)
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
                assert "+861234" not in text and "张三" not in text
                checked += 1
    assert checked >= 3 * 9


@pytest.mark.parametrize(("role", "path", "status"), [
    ("viewer", "/api/v1/stats", 200),
    ("viewer", "/api/v1/readyz".replace("/api/v1", ""), 200),
    ("viewer", "/api/v1/calls", 403),
    ("viewer", "/api/v1/worklist", 403),
    ("supervisor", "/api/v1/calls", 200),
    ("supervisor", "/api/v1/worklist", 200),
    ("supervisor", "/api/v1/stats", 200),
    ("admin", "/api/v1/calls", 200),
    ("admin", "/api/v1/stats", 200),
])
async def test_roles(api: Client, role: str, path: str, status: int) -> None:
    response = await api.get(path, headers=auth(role))
    assert response.status == status
    if status == 403:
        body = await response.json()
        assert body["error"] == "forbidden" and "items" not in body


@dataclass
class Link:
    connected: bool


async def test_readyz_names_what_is_not_ready(any_db: Database, api_settings: Settings,
                                              tmp_path: Any) -> None:
    from dataclasses import replace
    settings = replace(api_settings, pbxs=(PbxConfig("main"), PbxConfig("branch"),
                                           PbxConfig("lab")))
    ingests = {"main": Link(True), "branch": Link(False)}
    client: Client = TestClient(TestServer(make_app(settings, any_db, ingests=ingests)))
    await client.start_server()
    try:
        response = await client.get("/readyz", headers=auth("viewer"))
        assert response.status == 503
        body = await response.json()
        assert body["ready"] is False
        assert body["reasons"] == ["ami/branch: AMI not connected",
                                   "ami/lab: AMI ingestion not running"]
        assert body["parts"]["ami/main"] == {"ready": True, "required": True, "reason": None}
        assert body["parts"]["ami/branch"] == {"ready": False, "required": True,
                                               "reason": "AMI not connected"}
        assert body["parts"]["database"]["ready"] is True
        ingests["branch"].connected = True
        ingests["lab"] = Link(True)
        response = await client.get("/readyz", headers=auth("viewer"))
        assert response.status == 200 and (await response.json())["ready"] is True
    finally:
        await client.close()
    # A database that cannot be reached: 503 naming the database, and 503 on data routes.
    gone = Database.connect(f"sqlite+aiosqlite:///{tmp_path}/no/such/dir/x.db")
    client = TestClient(TestServer(make_app(settings, gone, ingests=ingests)))
    await client.start_server()
    try:
        response = await client.get("/readyz", headers=auth("viewer"))
        assert response.status == 503
        body = await response.json()
        assert body["reasons"][0].startswith("database: unreachable (")
        assert body["parts"]["database"]["ready"] is False
        response = await client.get("/api/v1/calls", headers=auth("admin"))
        assert response.status == 503
        assert (await response.json())["error"] == "database_unavailable"
        response = await client.get("/healthz")
        assert response.status == 200
    finally:
        await client.close()
        await gone.close()


async def test_every_route_is_documented_and_every_documented_route_served(
        api: Client) -> None:
    doc = await documented(api)
    assert doc["openapi"].startswith("3.")
    served = {(route.method.lower(), route.resource.canonical)  # type: ignore[union-attr]
              for route in api.app.router.routes() if route.method != "HEAD"}
    listed = {(method, path) for path, methods in doc["paths"].items() for method in methods}
    assert served == listed
    for path, methods in doc["paths"].items():
        for op in methods.values():
            names = {p["name"] for p in op["parameters"] if p["in"] == "path"}
            assert names == {part[1:-1] for part in path.split("/") if part.startswith("{")}
            assert op["summary"] and op["responses"]


async def test_extra_operations_are_served_and_documented(any_db: Database,
                                                          api_settings: Settings) -> None:
    from aiohttp import web

    async def metrics(request: web.Request) -> web.StreamResponse:
        return web.Response(text="callhub_up 1\n")

    extra = Operation("GET", "/metrics", metrics, None, "Prometheus metrics.", "metrics",
                      produces=("text/plain",))
    client: Client = TestClient(TestServer(make_app(api_settings, any_db,
                                                    extra_operations=[extra])))
    await client.start_server()
    try:
        assert (await (await client.get("/metrics")).text()) == "callhub_up 1\n"
        doc = await documented(client)
        assert "/metrics" in doc["paths"]
    finally:
        await client.close()


async def test_unknown_paths_and_methods_answer_json(api: Client) -> None:
    response = await api.get("/api/v1/nothing", headers=auth("admin"))
    assert response.status == 404 and (await response.json())["error"] == "not_found"
    response = await api.delete("/api/v1/calls", headers=auth("admin"))
    assert response.status == 405
