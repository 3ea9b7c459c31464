"""GET /api/v1/stats gives each line's own target_rings and its within-target rate (issue 13).

The settings come from a config file as a site writes it (`[pbx.lines]` and
`[lines."<line>"]`), the calls are stored by the store, and the figures are
checked against the calls' rings and each line's own target.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from store_fixtures import T0, auth, make_call, store

from callhub.api.app import make_app
from callhub.config import Settings, load_settings
from callhub.records import CallRecord
from callhub.store.db import Database

Client = TestClient[Any, Any]
CONFIG = """
timezone = "Asia/Shanghai"

[pbx.lines]
"4008001000" = "front-desk"
"4008005000" = "petition"
"4008007000" = "repairs"

[lines.petition]
target_rings = 5
answer_rate_target = 0.8

[desk.targets]
within_rings_rate = 0.75
"""
PERIOD = {"from": "2026-11-01T00:00:00+00:00", "to": "2026-12-01T00:00:00+00:00"}


@pytest.fixture
def settings(tmp_path: Path, api_settings: Settings) -> Settings:
    path = tmp_path / "callhub.toml"
    path.write_text(CONFIG, encoding="utf-8")
    loaded = load_settings(path, env={})
    return replace(api_settings, pbxs=loaded.pbxs, line_tables=loaded.line_tables,
                   desk_targets=loaded.desk_targets)


@pytest.fixture
async def client(any_db: Database, settings: Settings) -> AsyncIterator[Client]:
    served: Client = TestClient(TestServer(make_app(settings, any_db)))
    await served.start_server()
    yield served
    await served.close()


def call(n: int, line: str | None, rings: int | None) -> CallRecord:
    """An inbound call on `line` answered after `rings` rings (None: missed)."""
    if rings is None:
        return make_call(f"c{n}", at=T0 + n, line=line, outcome="missed")
    return make_call(f"c{n}", at=T0 + n, line=line, rings=rings, ring_seconds=5.0 * rings)


CALLS = [  # front-desk: 3 rings; petition: 5 rings; an unmapped DID: the default, 3
    (1, "front-desk", 1), (2, "front-desk", 3), (3, "front-desk", 4), (4, "front-desk", None),
    (5, "petition", 2), (6, "petition", 4), (7, "petition", 5), (8, "petition", 6),
    (9, "petition", 5),
    (10, "4008009999", 3), (11, "4008009999", 4),
]


async def get_stats(client: Client, **params: Any) -> Any:
    response = await client.get("/api/v1/stats", headers=auth("viewer"),
                                params={**PERIOD, **params})
    assert response.status == 200, await response.text()
    return await response.json()


def expected(line: str, target_rings: int) -> tuple[int, int, int]:
    mine = [rings for _, name, rings in CALLS if name == line]
    answered = [r for r in mine if r is not None]
    return len(mine), len(answered), sum(r <= target_rings for r in answered)


async def test_stats_give_each_lines_own_target_and_within_target_rate(
        client: Client, any_db: Database, settings: Settings) -> None:
    await store(any_db, settings, *(call(*c) for c in CALLS))
    body = await get_stats(client)
    assert body["default_target"] == {"target_rings": 3, "answer_rate_target": 0.75}
    lines = {t["line"]: t for t in body["line_targets"]}
    # Every configured line, in config order, then the other line that had calls.
    assert [t["line"] for t in body["line_targets"]] == [
        "front-desk", "petition", "repairs", "4008009999"]
    for line, rings, rate_target in (("front-desk", 3, 0.75), ("petition", 5, 0.8),
                                     ("4008009999", 3, 0.75)):
        inbound, answered, within = expected(line, rings)
        got = lines[line]
        assert (got["target_rings"], got["answer_rate_target"]) == (rings, rate_target)
        assert (got["inbound"], got["answered"], got["answered_within_target"]) == (
            inbound, answered, within), line
        assert got["within_target_rate"] == pytest.approx(within / inbound, abs=1e-4)
        assert got["target_met"] is (within / inbound >= rate_target)
    # The petition office's 5 rings count calls a fixed N = 3 would not: 4 of 5, met.
    assert lines["petition"]["answered_within_target"] == 4
    assert lines["petition"]["target_met"] is True
    assert lines["front-desk"]["target_met"] is False  # 2 of 4
    assert lines["repairs"] == {
        "line": "repairs", "target_rings": 3, "answer_rate_target": 0.75, "inbound": 0,
        "answered": 0, "answered_within_target": 0, "within_target_rate": None,
        "target_met": None}
    # The totals count each call against its own line's target; the fixed N stays N.
    totals = body["totals"]
    assert totals["answered_within_target"] == sum(t["answered_within_target"]
                                                   for t in body["line_targets"])
    assert totals["within_target_rate"] == pytest.approx(
        totals["answered_within_target"] / totals["inbound"], abs=1e-4)
    assert totals["answered_within_rings"] == sum(
        1 for _, _, rings in CALLS if rings is not None and rings <= 3)
    assert body["rings"] == 3


async def test_line_groups_say_which_target_they_used(
        client: Client, any_db: Database, settings: Settings) -> None:
    await store(any_db, settings, *(call(*c) for c in CALLS))
    body = await get_stats(client, group_by="line", rings=2)
    groups = {g["key"]: g for g in body["groups"]}
    assert (groups["petition"]["target_rings"], groups["petition"]["answer_rate_target"]) == (
        5, 0.8)
    assert groups["petition"]["answered_within_target"] == 4
    assert groups["petition"]["answered_within_rings"] == 1  # rings=2 is the fixed N
    assert groups["front-desk"]["target_rings"] == 3
    by_agent = await get_stats(client, group_by="agent")
    assert all("target_rings" not in g for g in by_agent["groups"])
    assert sum(g["answered_within_target"] for g in by_agent["groups"]) == \
        by_agent["totals"]["answered_within_target"]


async def test_a_pbx_filter_lists_that_pbxs_lines(
        any_db: Database, settings: Settings) -> None:
    other = replace(settings.pbxs[0], name="branch", lines={"4008006000": "branch-desk"})
    two = replace(settings, pbxs=(settings.pbxs[0], other))
    served: Client = TestClient(TestServer(make_app(two, any_db)))
    await served.start_server()
    try:
        await store(any_db, two, call(1, "front-desk", 1))
        everything = await get_stats(served)
        branch = await get_stats(served, pbx="branch")
    finally:
        await served.close()
    assert "branch-desk" in [t["line"] for t in everything["line_targets"]]
    assert [t["line"] for t in branch["line_targets"]] == ["branch-desk"]


async def test_openapi_documents_the_line_targets(client: Client) -> None:
    doc = await (await client.get("/api/v1/openapi.json", headers=auth("viewer"))).json()
    text = str(doc)
    for name in ("line_targets", "default_target", "within_target_rate", "target_met",
                 "answered_within_target"):
        assert name in text, name
