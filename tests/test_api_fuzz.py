"""Property-based run over the OpenAPI document (schemathesis): no 500, every answer as
documented (status, content type, body schema), no data without a token.

Schemathesis generates requests from the document the app serves (valid and
invalid ones) and sends them over real HTTP to the app on a loopback port,
backed by a SQLite file with a few calls and worklist entries in it.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from hypothesis import HealthCheck, settings
from live_app import LiveApp, without_auth
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from store_fixtures import T0, TOKENS, auth, make_call, store

from callhub.api import followups, openapi
from callhub.api.app import BUILTIN_OPERATIONS, make_app
from callhub.config import ApiToken, Settings
from callhub.store import migrate
from callhub.store.db import Database

SECRET_VALUES = ("+8613800000004", "张三", "13800000004")

DOC = openapi.build((*BUILTIN_OPERATIONS, *followups.OPERATIONS))
schema = schemathesis.openapi.from_dict(DOC)
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                                max_examples=25)
CONFORMANCE = [not_a_server_error, status_code_conformance, content_type_conformance,
               response_schema_conformance]
# aiohttp's HTTP parser refuses a longer URL (400, plain text) before any handler runs:
# schemathesis builds such URLs from long generated strings now and then.
MAX_URL = inspect.signature(RequestHandler.__init__).parameters["max_line_size"].default
FUZZ = settings(max_examples=25, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.filter_too_much])


async def seeded_app(directory: Path) -> tuple[web.Application, Database]:
    """The app over a SQLite file with a few calls and worklist entries in it."""
    settings_ = replace(Settings(), spool_dir=str(directory / "spool"),
                        api_tokens=tuple(ApiToken(r, t) for r, t in TOKENS.items()))
    db = Database.connect(f"sqlite+aiosqlite:///{directory / 'fuzz.db'}")
    await migrate.upgrade(db)
    await store(db, settings_,
                make_call("1", at=T0, outcome="missed", caller_number=SECRET_VALUES[0]),
                make_call("2", at=T0 + 50, caller_number=SECRET_VALUES[0]),
                make_call("3", at=T0 + 90, outcome="abandoned", reason="in_queue",
                          caller_number="+8613800000005"))
    return make_app(settings_, db, extra_operations=followups.OPERATIONS), db


def refused_as_too_long(response: Any) -> bool:
    """The request's URL is past the HTTP parser's limit: the server's own 400 answered it,
    with no data and no handler run (`test_a_request_line_too_long_...` in test_logs)."""
    if len(response.request.path_url.encode()) <= MAX_URL:
        return False
    assert response.status_code == 400, (response.status_code, response.text[:300])
    assert not any(value in response.text for value in SECRET_VALUES)
    return True


@pytest.fixture(scope="module")
def live_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("fuzz")
    with LiveApp(lambda: seeded_app(directory)) as live:
        yield live.base_url


@schema.parametrize()
@FUZZ
def test_no_server_error_with_an_admin_token(case: Any, live_api: str) -> None:
    without_auth(case)
    response = case.call(base_url=live_api, headers=auth("admin"), timeout=10)
    if refused_as_too_long(response):
        return
    # The status, content type and body are the ones the document gives for this operation.
    case.validate_response(response, checks=CONFORMANCE)
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
    if refused_as_too_long(response):
        return
    documented = case.method.lower() in DOC["paths"][case.path]
    if not documented:  # schemathesis also tries methods a path does not have
        assert response.status_code == 405
    elif case.path == "/healthz":
        assert response.status_code == 200
        return
    else:
        assert response.status_code == 401, (case.method, case.formatted_path, response.text[:300])
    assert not any(value in response.text for value in SECRET_VALUES)
