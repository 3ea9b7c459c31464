"""Property-based run over the routing routes' OpenAPI entries (schemathesis): whatever the
body or path, /api/v1/agents and /api/v1/rotas answer with no 500, and nothing without a
token; the rota on disk stays valid after every accepted change."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings
from routing_fixtures import SAMPLE_ROTA
from schemathesis import GenerationMode

from callhub.api import openapi
from callhub.api.app import make_app
from callhub.config import ApiToken, Settings
from callhub.routing.api import routing_operations
from callhub.routing.chooser import Router
from callhub.routing.rota_file import load_rota
from callhub.routing.state import POSITION_FILE, RotaStore, RotationState
from callhub.store.db import Database

ADMIN = "admin-token-for-fuzz"
OPERATIONS = routing_operations(Router(RotaStore(None)))
DOC = openapi.build(OPERATIONS)
schema = schemathesis.openapi.from_dict(DOC)
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                                max_examples=15)
FUZZ = settings(max_examples=15, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.filter_too_much])


class LiveRoutingApi:
    """callhub's app with the routing routes, on its own loop in a thread."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner: web.AppRunner | None = None
        self.db: Database | None = None
        self.base_url = ""

    async def _start(self) -> str:
        seed = self.directory / "rota.toml"
        seed.write_text(SAMPLE_ROTA, encoding="utf-8")
        state = self.directory / "state"
        router = Router(RotaStore(state, seed_file=str(seed)),
                        RotationState(state / POSITION_FILE))
        settings_ = replace(Settings(), api_tokens=(ApiToken("admin", ADMIN),))
        self.db = Database.connect(f"sqlite+aiosqlite:///{self.directory / 'fuzz.db'}")
        app = make_app(settings_, self.db, extra_operations=routing_operations(router))
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        return f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    async def _stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        if self.db is not None:
            await self.db.engine.dispose()

    def __enter__(self) -> LiveRoutingApi:
        self.thread.start()
        self.base_url = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    directory = tmp_path_factory.mktemp("routing-fuzz")
    with LiveRoutingApi(directory) as api:
        yield api.base_url, directory / "state" / "rota.json"


def without_auth(case: Any) -> None:
    if case.headers:
        case.headers = {k: v for k, v in case.headers.items() if k.lower() != "authorization"}


@schema.parametrize()
@FUZZ
def test_no_server_error_and_the_rota_stays_valid(case: Any, live: tuple[str, Path]) -> None:
    base_url, saved = live
    without_auth(case)
    response = case.call(base_url=base_url, headers={"Authorization": f"Bearer {ADMIN}"},
                         timeout=10)
    assert response.status_code < 500, (case.method, case.formatted_path, case.body,
                                        response.text[:500])
    if response.status_code >= 400:
        assert "message" in response.json()
    load_rota(saved)  # whatever was accepted was checked: the saved rota still loads


@schema.parametrize()
@FUZZ
def test_nothing_without_a_token(case: Any, live: tuple[str, Path]) -> None:
    base_url, _ = live
    without_auth(case)
    response = case.call(base_url=base_url, timeout=10)
    documented = case.method.lower() in DOC["paths"][case.path]
    assert response.status_code == (401 if documented else 405), response.text[:200]
    assert "PJSIP/" not in response.text
