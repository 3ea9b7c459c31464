"""GET /healthz (the process answers) and GET /readyz (database and every PBX's AMI)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from callhub.api.base import DB, INGESTS, SETTINGS, Operation, json_response
from callhub.api.params import parse_query

READY_TIMEOUT = 5.0


async def healthz(request: web.Request) -> web.StreamResponse:
    """Alive: no token, no data."""
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.StreamResponse:
    """Ready when the database answers and every configured PBX's AMI is logged in."""
    settings = request.app[SETTINGS]
    parse_query(request.query, (), settings.tz)
    reasons: list[str] = []
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            await request.app[DB].ping()
    except Exception as exc:  # any failure means not ready; say which
        reasons.append(f"database unreachable: {type(exc).__name__}")
    ingests = request.app[INGESTS]
    for pbx in settings.pbxs:
        ingest = ingests.get(pbx.name)
        if ingest is None:
            reasons.append(f"pbx {pbx.name}: AMI ingestion not running")
        elif not ingest.connected:
            reasons.append(f"pbx {pbx.name}: AMI not connected")
    body = {"ready": not reasons, "reasons": reasons}
    return json_response(body, status=503 if reasons else 200)


READY_SCHEMA = {"application/json": {"schema": {
    "type": "object", "required": ["ready", "reasons"],
    "properties": {"ready": {"type": "boolean"},
                   "reasons": {"type": "array", "items": {"type": "string"}}}}}}

OPERATIONS = (
    Operation("GET", "/healthz", healthz, None, "The process is alive (no token needed).",
              "health", responses={"200": {"description": "Alive.", "content": {
                  "application/json": {"schema": {"type": "object"}}}}}),
    Operation("GET", "/readyz", readyz, "viewer",
              "Database reachable and every PBX's AMI connected; 503 with the reasons if not.",
              "health", responses={"200": {"description": "Ready.", "content": READY_SCHEMA},
                                   "503": {"description": "Not ready.", "content": READY_SCHEMA}}),
)
