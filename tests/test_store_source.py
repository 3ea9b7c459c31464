"""Calls rebuilt from CEL: stored with their source, only where no record of the call is.

A CEL record (a gap callhub did not see) never replaces a stored call: the
AMI record of a call is better (it saw the ringing), and a spool or a second
recovery writing a CEL record again must change nothing. An AMI record of the
same call later replaces a CEL one as any record replaces an older one.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from aiohttp.test_utils import TestClient
from store_fixtures import T0, auth, make_call, store

from callhub.config import Settings
from callhub.store import queries
from callhub.store.db import Database

Client = TestClient[Any, Any]


def cel_call(linkedid: str, **fields: Any) -> Any:
    return replace(make_call(linkedid, **fields), source="cel", rings_estimated=True)


async def stored(db: Database, call_id: int) -> dict[str, Any]:
    async with db.connection() as conn:
        call = await queries.get_call(conn, call_id)
    assert call is not None
    return call


async def test_a_cel_record_is_stored_with_its_source_and_estimated_rings(
        any_db: Database, store_settings: Settings) -> None:
    ami_id, cel_id = await store(any_db, store_settings, make_call("a.1"), cel_call("c.1"))
    ami, cel = await stored(any_db, ami_id), await stored(any_db, cel_id)
    assert (ami["source"], ami["rings_estimated"]) == ("ami", False)
    assert (cel["source"], cel["rings_estimated"]) == ("cel", True)
    assert [a["interface"] for a in cel["attempts"]] == ["PJSIP/1001"]


async def test_a_cel_record_never_overwrites_a_stored_call(any_db: Database,
                                                           store_settings: Settings) -> None:
    [call_id] = await store(any_db, store_settings, make_call("1.1", outcome="answered"))
    async with any_db.begin() as conn:
        await queries.update_call(conn, call_id, {"note": "called back"})
    again = await store(any_db, store_settings,
                        cel_call("1.1", outcome="missed", attempts=[]), cel_call("2.2"))
    assert again[0] == call_id
    call = await stored(any_db, call_id)
    assert (call["source"], call["outcome"], call["note"]) == ("ami", "answered", "called back")
    assert [a["interface"] for a in call["attempts"]] == ["PJSIP/1001"]  # not deleted
    assert (await stored(any_db, again[1]))["source"] == "cel"
    # Nor does a second CEL record of a call first stored from CEL.
    assert await store(any_db, store_settings, cel_call("2.2", outcome="missed")) == [again[1]]
    assert (await stored(any_db, again[1]))["outcome"] == "answered"


async def test_in_one_batch_cel_after_ami_is_left_and_ami_after_cel_wins(
        any_db: Database, store_settings: Settings) -> None:
    ids = await store(any_db, store_settings,
                      make_call("x", outcome="answered"), cel_call("x", outcome="missed"),
                      cel_call("y", outcome="missed"), make_call("y", outcome="answered"))
    assert ids[0] == ids[1] and ids[2] == ids[3]
    for call_id in (ids[0], ids[2]):
        call = await stored(any_db, call_id)
        assert (call["source"], call["outcome"], call["rings_estimated"]) == (
            "ami", "answered", False)


async def test_the_api_lists_source_and_rings_estimated(
        api: Client, any_db: Database, api_settings: Settings) -> None:
    ami_id, cel_id = await store(any_db, api_settings, make_call("a", at=T0),
                                 cel_call("c", at=T0 + 60))
    response = await api.get("/api/v1/calls", headers=auth("supervisor"))
    assert response.status == 200, await response.text()
    page = await response.json()
    by_id = {item["id"]: item for item in page["items"]}
    assert (by_id[ami_id]["source"], by_id[ami_id]["rings_estimated"]) == ("ami", False)
    assert (by_id[cel_id]["source"], by_id[cel_id]["rings_estimated"]) == ("cel", True)
    one = await api.get(f"/api/v1/calls/{cel_id}", headers=auth("supervisor"))
    assert (await one.json())["source"] == "cel"
    spec = await (await api.get("/api/v1/openapi.json", headers=auth("supervisor"))).json()
    text = str(spec)
    assert "rings_estimated" in text and "'enum': ['ami', 'cel']" in text
