"""Property-based run over the OpenAPI document (schemathesis): no 500, no data without a token.

Schemathesis generates requests from the document the app serves (valid and
invalid ones) and sends them over real HTTP to the app on a loopback port,
backed by a SQLite file with a few calls and worklist entries in it.
"""

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
from schemathesis import GenerationMode
from store_fixtures import T0, TOKENS, auth, make_call, store

from callhub.api import openapi
from callhub.api.app import BUILTIN_OPERATIONS, make_app
from callhub.config import ApiToken, Settings
from callhub.store import migrate
from callhub.store.db import Database

SECRET_VALUES = ("+8613800000004", "张三", "13800000004")

DOC = openapi.build(BUILTIN_OPERATIONS)
schema = schemathesis.openapi.from_dict(DOC)
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                                max_examples=25)
FUZZ = settings(max_examples=25, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.filter_too_much])


class LiveApi:
    """The app on its own event loop in a thread, serving a SQLite file with data."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner: web.AppRunner | None = None
        self.db: Database | None = None
        self.base_url = ""

    async def _start(self) -> str:
        settings_ = replace(Settings(), spool_dir=str(self.directory / "spool"),
                            api_tokens=tuple(ApiToken(r, t) for r, t in TOKENS.items()))
        self.db = Database.connect(f"sqlite+aiosqlite:///{self.directory / 'fuzz.db'}")
        await migrate.upgrade(self.db)
        await store(self.db, settings_,
                    make_call("1", at=T0, outcome="missed", caller_number=SECRET_VALUES[0]),
                    make_call("2", at=T0 + 50, caller_number=SECRET_VALUES[0]),
                    make_call("3", at=T0 + 90, outcome="abandoned", reason="in_queue",
                              caller_number="+8613800000005"))
        self.runner = web.AppRunner(make_app(settings_, self.db))
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    async def _stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        if self.db is not None:
            await self.db.close()

    def __enter__(self) -> LiveApi:
        self.thread.start()
        self.base_url = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def live_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with LiveApi(tmp_path_factory.mktemp("fuzz")) as live:
        yield live.base_url


def without_auth(case: Any) -> None:
    if case.headers:
        case.headers = {k: v for k, v in case.headers.items() if k.lower() != "authorization"}


@schema.parametrize()
@FUZZ
def test_no_server_error_with_an_admin_token(case: Any, live_api: str) -> None:
    without_auth(case)
    response = case.call(base_url=live_api, headers=auth("admin"), timeout=10)
    assert response.status_code < 500, (case.method, case.formatted_path, case.query,
                                        response.text[:500])
    if response.status_code == 400:
        body = response.json()
        assert body["error"] == "bad_parameter" and "parameter" in body, body


@schema.parametrize()
@FUZZ
def test_no_data_without_a_token(case: Any, live_api: str) -> None:
    without_auth(case)
    response = case.call(base_url=live_api, timeout=10)
    documented = case.method.lower() in DOC["paths"][case.path]
    if not documented:  # schemathesis also tries methods a path does not have
        assert response.status_code == 405
    elif case.path == "/healthz":
        assert response.status_code == 200
        return
    else:
        assert response.status_code == 401, (case.method, case.formatted_path, response.text[:300])
    assert not any(value in response.text for value in SECRET_VALUES)
