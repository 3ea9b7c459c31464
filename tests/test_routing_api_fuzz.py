"""Property-based run over the routing routes' OpenAPI entries (schemathesis): whatever the
body or path, /api/v1/agents and /api/v1/rotas answer with no 500 and as documented (status,
content type, body schema), and nothing without a token; the rota on disk stays valid after
every accepted change."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings
from live_app import LiveApp, without_auth
from routing_fixtures import SAMPLE_ROTA
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from callhub.api import openapi, rota
from callhub.api.app import make_app
from callhub.config import ApiToken, Settings
from callhub.routing.chooser import Router
from callhub.routing.rota_file import load_rota
from callhub.routing.state import POSITION_FILE, RotaStore, RotationState
from callhub.store.db import Database

ADMIN = "admin-token-for-fuzz"
DOC = openapi.build(rota.OPERATIONS)
schema = schemathesis.openapi.from_dict(DOC)
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                                max_examples=15)
CONFORMANCE = [not_a_server_error, status_code_conformance, content_type_conformance,
               response_schema_conformance]
FUZZ = settings(max_examples=15, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.filter_too_much])


async def routing_app(directory: Path) -> tuple[web.Application, Database]:
    """callhub's app with the routing routes, its rota seeded from the sample file."""
    seed = directory / "rota.toml"
    seed.write_text(SAMPLE_ROTA, encoding="utf-8")
    state = directory / "state"
    router = Router(RotaStore(state, seed_file=str(seed)), RotationState(state / POSITION_FILE))
    settings_ = replace(Settings(), api_tokens=(ApiToken("admin", ADMIN),))
    db = Database.connect(f"sqlite+aiosqlite:///{directory / 'fuzz.db'}")
    return make_app(settings_, db, router=router), db


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    directory = tmp_path_factory.mktemp("routing-fuzz")
    with LiveApp(lambda: routing_app(directory)) as api:
        yield api.base_url, directory / "state" / "rota.json"


@schema.parametrize()
@FUZZ
def test_no_server_error_and_the_rota_stays_valid(case: Any, live: tuple[str, Path]) -> None:
    base_url, saved = live
    without_auth(case)
    response = case.call(base_url=base_url, headers={"Authorization": f"Bearer {ADMIN}"},
                         timeout=10)
    # The status, content type and body are the ones the document gives for this operation.
    case.validate_response(response, checks=CONFORMANCE)
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
