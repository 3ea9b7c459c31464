"""GET /healthz (the process answers) and GET /readyz (every part of the process, by name).

/readyz reads the app's `Supervisor` (callhub.lifecycle): the daemon hands
in its own, where every background task and part reports (database, each
PBX's AMI, writer, fastagi, keeper, ...). `add_default_parts` adds the
database and each configured PBX's AMI when nothing else did, so an app
made on its own (tests, tools) still answers for them. The body:

    {"ready": false,
     "reasons": ["fastagi: cannot listen on 127.0.0.1:4573: ..."],
     "parts": {"database": {"ready": true, "required": true, "reason": null},
               "fastagi": {"ready": false, "required": true, "reason": "cannot ..."},
               "role/pbx1": {"ready": true, "required": false, "reason": null,
                             "detail": "standby"}}}

A part may carry a `detail` whatever its state: `role/<pbx>` says whether
this instance is the writer or the standby of a pair (callhub.store.election).

`ready` is false (and the status 503) when any required part is down;
`reasons` lists those, as `part: reason`.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from callhub.api.base import SETTINGS, IngestStatus, Operation, json_response
from callhub.api.params import parse_query
from callhub.config import Settings
from callhub.lifecycle import CHECK_TIMEOUT, Check, Supervisor
from callhub.store.db import Database
from callhub.store.read_pool import NoAnswer

SUPERVISOR: web.AppKey[Supervisor] = web.AppKey("supervisor", Supervisor)

READY_TIMEOUT = CHECK_TIMEOUT


PING_TIMEOUT = 2.0
"""Seconds the `database` check waits for its ping: a database that hangs (its socket
open, no answer) made /readyz take the whole CHECK_TIMEOUT and say only "TimeoutError";
a probe's own timeout is often a second or two."""


def database_check(db: Database) -> Check:
    """The `database` part's check: a ping (any failure is the reason)."""
    async def ping() -> str | None:
        try:
            await db.ping(within=PING_TIMEOUT)
        except NoAnswer as exc:
            return str(exc)  # "no answer in 2 s"
        except Exception as exc:  # any failure means not ready; say which
            return f"unreachable ({type(exc).__name__})"
        return None

    return ping


def add_default_parts(supervisor: Supervisor, settings: Settings, db: Database,
                      ingests: Mapping[str, IngestStatus]) -> None:
    """The `database` part (a ping) and `ami/<pbx>` per configured PBX, unless registered."""
    if "database" not in supervisor.parts:
        supervisor.part("database", check=database_check(db), ready=True)
    for pbx in settings.pbxs:
        name = f"ami/{pbx.name}"
        if name in supervisor.parts:
            continue

        async def link(pbx_name: str = pbx.name) -> str | None:
            ingest = ingests.get(pbx_name)
            if ingest is None:
                return "AMI ingestion not running"
            return None if ingest.connected else "AMI not connected"

        supervisor.part(name, check=link, ready=True)


async def healthz(request: web.Request) -> web.StreamResponse:
    """Alive: no token, no data."""
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.StreamResponse:
    """Ready when every required part is: each part with its state and reason."""
    settings = request.app[SETTINGS]
    parse_query(request.query, (), settings.tz)
    states = await request.app[SUPERVISOR].states(READY_TIMEOUT)
    reasons = [f"{s.name}: {s.reason}" for s in states if s.required and not s.ready]
    body = {"ready": not reasons, "reasons": reasons,
            "parts": {s.name: {"ready": s.ready, "required": s.required, "reason": s.reason,
                               **({"detail": s.detail} if s.detail is not None else {})}
                      for s in states}}
    return json_response(body, status=503 if reasons else 200)


PART_SCHEMA = {
    "type": "object", "required": ["ready", "required", "reason"],
    "properties": {"ready": {"type": "boolean"}, "required": {"type": "boolean"},
                   "reason": {"type": ["string", "null"]},
                   "detail": {"type": "string"}}}
READY_SCHEMA = {"application/json": {"schema": {
    "type": "object", "required": ["ready", "reasons", "parts"],
    "properties": {"ready": {"type": "boolean"},
                   "reasons": {"type": "array", "items": {"type": "string"}},
                   "parts": {"type": "object", "additionalProperties": PART_SCHEMA}}}}}

OPERATIONS = (
    Operation("GET", "/healthz", healthz, None, "The process is alive (no token needed).",
              "health", responses={"200": {"description": "Alive.", "content": {
                  "application/json": {"schema": {"type": "object"}}}}}, database=False),
    Operation("GET", "/readyz", readyz, "viewer",
              "Every part of the process by name (database, each PBX's AMI, writer, fastagi, "
              "keeper, ...); 503 with the reasons when a required part is down.",
              "health", responses={"200": {"description": "Ready.", "content": READY_SCHEMA},
                                   "503": {"description": "Not ready.", "content": READY_SCHEMA}},
              database=False),
)
