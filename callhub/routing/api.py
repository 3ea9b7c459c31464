"""HTTP API for agents and rotas (admin token): read them, change them, see who is on duty.

`routing_operations(router)` returns the routes as `Operation`s for
`make_app(..., extra_operations=...)`, so they get the same role check,
error handling and OpenAPI entry as every other route. A change is checked
as a whole rota (`RotaError` -> 400 naming the line, shift and key) and
persisted through the router's store before the response; the FastAGI
server uses it from the next call on.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from aiohttp import web

from callhub.api.base import SETTINGS, Operation, error_response, json_response
from callhub.api.params import BadParameter, Param, parse_query
from callhub.routing.chooser import Router
from callhub.routing.cli import line_report
from callhub.routing.model import Agent, agent_to_data, line_to_data
from callhub.routing.onduty import local_time, rota_zone
from callhub.routing.rota_file import MAX_RING_TIMEOUT, RotaError, rota_from_data

AGENT_FIELDS = ("name", "interface", "active", "cleared", "ring_timeout")
SECONDS: dict[str, Any] = {"type": "integer", "minimum": 1, "maximum": MAX_RING_TIMEOUT}
AGENT_RING_TIMEOUT: dict[str, Any] = {
    **SECONDS, "description": "Seconds this agent's phone rings on every line (unless the "
                              "line's ring_timeouts names the agent); absent: the line's "
                              "ring_timeout."}
AGENT_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["id", "name", "interface", "active", "cleared"],
    "properties": {"id": {"type": "string"}, "name": {"type": "string"},
                   "interface": {"type": "string", "example": "PJSIP/1001"},
                   "active": {"type": "boolean"}, "cleared": {"type": "boolean"},
                   "ring_timeout": AGENT_RING_TIMEOUT}}
AGENT_BODY: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "properties": {"name": {"type": "string"}, "interface": {"type": "string"},
                   "active": {"type": "boolean"}, "cleared": {"type": "boolean"},
                   "ring_timeout": {**AGENT_RING_TIMEOUT, "type": ["integer", "null"],
                                    "description": AGENT_RING_TIMEOUT["description"]
                                    + " null (PATCH): back to the line's."}}}
LINE_SCHEMA: dict[str, Any] = {
    "type": "object", "description": "A line as in the rota file's [[lines]] table.",
    "properties": {"name": {"type": "string"}, "dids": {"type": "array"},
                   "rotation": {"type": "array"},
                   "ring_timeout": {**SECONDS, "description": "Seconds each agent rings "
                                    "(default 15), and the fallback."},
                   "ring_timeouts": {"type": "object", "additionalProperties": SECONDS,
                                     "description": "Agent id -> seconds on this line; "
                                                    "beats the agent's own ring_timeout.",
                                     "example": {"wang": 25}},
                   "fallback": {"type": "string"}, "shifts": {"type": "array"},
                   "exceptions": {"type": "array"}}}
ID = Param("id", "string", "Agent id as in the rota.")
LINE = Param("line", "string", "Line name (or one of its DIDs).")
AT = Param("at", "datetime", "The moment (default now); without an offset, local time.")


def _ok(schema: dict[str, Any], text: str = "OK.") -> dict[str, Any]:
    return {"200": {"description": text, "content": {"application/json": {"schema": schema}}}}


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        data = json.loads(await request.text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadParameter("body", f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadParameter("body", "must be a JSON object")
    return data


def routing_operations(router: Router) -> tuple[Operation, ...]:
    """The /api/v1/agents and /api/v1/rotas routes, bound to `router`."""

    def save(make: Callable[[dict[str, Any]], dict[str, Any]]) -> web.Response | None:
        """Apply `make` to the rota's data, check and persist; a 400 response if wrong."""
        data = make(router.rota.to_data())
        try:
            router.replace_rota(rota_from_data(data, source="api"))
        except RotaError as exc:
            return error_response(400, "invalid_rota", str(exc))
        return None

    async def list_agents(request: web.Request) -> web.StreamResponse:
        return json_response({"agents": [agent_to_data(a) for a in router.rota.agents.values()]})

    async def get_agent(request: web.Request) -> web.StreamResponse:
        agent = router.rota.agents.get(request.match_info["id"])
        if agent is None:
            return error_response(404, "not_found", "no such agent")
        return json_response(agent_to_data(agent))

    async def put_agent(request: web.Request, partial: bool) -> web.StreamResponse:
        ident = request.match_info["id"]
        body = await _body(request)
        for key, value in body.items():
            if key not in AGENT_FIELDS:
                raise BadParameter(key, f"unknown field (known: {', '.join(AGENT_FIELDS)})")
            if key == "ring_timeout":
                if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                    raise BadParameter(key, "expected whole seconds or null")
                continue
            kind = bool if key in ("active", "cleared") else str
            if not isinstance(value, kind):
                raise BadParameter(key, f"expected {'a boolean' if kind is bool else 'a string'}")
        existing = router.rota.agents.get(ident)
        if partial and existing is None:
            return error_response(404, "not_found", "no such agent")
        if not partial and "interface" not in body:
            raise BadParameter("interface", "required")
        base = existing or Agent(id=ident, name=ident, interface="")
        agent = replace(base, **body) if partial else Agent(
            id=ident, name=body.get("name", ident), interface=body["interface"],
            active=body.get("active", True), cleared=body.get("cleared", True),
            ring_timeout=body.get("ring_timeout"))

        def make(data: dict[str, Any]) -> dict[str, Any]:
            agents = [a for a in data["agents"] if a["id"] != ident]
            data["agents"] = [*agents, agent_to_data(agent)]
            return data

        problem = save(make)
        if problem is not None:
            return problem
        return json_response(agent_to_data(router.rota.agents[ident]),
                             status=201 if existing is None else 200)

    async def replace_agent(request: web.Request) -> web.StreamResponse:
        return await put_agent(request, partial=False)

    async def patch_agent(request: web.Request) -> web.StreamResponse:
        return await put_agent(request, partial=True)

    async def delete_agent(request: web.Request) -> web.StreamResponse:
        ident = request.match_info["id"]
        if ident not in router.rota.agents:
            return error_response(404, "not_found", "no such agent")
        users = [line.name for line in router.rota.lines.values()
                 if ident in line.rotation or ident in line.ring_timeouts
                 or any(ident in e.swaps.values() for e in line.exceptions)]
        if users:
            return error_response(409, "in_use", f"agent {ident!r} is in the rota of line(s) "
                                                 f"{', '.join(users)}; change those first")

        def make(data: dict[str, Any]) -> dict[str, Any]:
            data["agents"] = [a for a in data["agents"] if a["id"] != ident]
            return data

        return save(make) or web.Response(status=204)

    async def list_rotas(request: web.Request) -> web.StreamResponse:
        rota = router.rota
        data = rota.to_data()
        data.pop("agents")
        data.setdefault("timezone", router.default_timezone)
        return json_response(data)

    def line_or_404(request: web.Request) -> Any:
        return router.rota.line_for(request.match_info["line"])

    async def get_rota(request: web.Request) -> web.StreamResponse:
        line = line_or_404(request)
        if line is None:
            return error_response(404, "not_found", "no such line")
        return json_response(line_to_data(line))

    async def put_rota(request: web.Request) -> web.StreamResponse:
        name = request.match_info["line"]
        body = await _body(request)
        if body.get("name", name) != name:
            raise BadParameter("name", "differs from the line in the path")
        body["name"] = name
        existed = name in router.rota.lines

        def make(data: dict[str, Any]) -> dict[str, Any]:
            lines = [item for item in data["lines"] if item["name"] != name]
            data["lines"] = [*lines, body]
            return data

        problem = save(make)
        if problem is not None:
            return problem
        return json_response(line_to_data(router.rota.lines[name]),
                             status=200 if existed else 201)

    async def delete_rota(request: web.Request) -> web.StreamResponse:
        name = request.match_info["line"]
        if name not in router.rota.lines:
            return error_response(404, "not_found", "no such line")

        def make(data: dict[str, Any]) -> dict[str, Any]:
            data["lines"] = [item for item in data["lines"] if item["name"] != name]
            return data

        return save(make) or web.Response(status=204)

    async def on_duty(request: web.Request) -> web.StreamResponse:
        line = line_or_404(request)
        if line is None:
            return error_response(404, "not_found", "no such line")
        tz = rota_zone(router.rota, router.default_timezone)
        args = parse_query(request.query, (AT,), request.app[SETTINGS].tz)
        at = local_time(args["at"] or router.clock(), tz)
        return json_response(line_report(router, line, at))

    Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

    def op(method: str, path: str, handler: Handler, summary: str, **kw: Any) -> Operation:
        return Operation(method, path, handler, "admin", summary, "routing", **kw)

    deleted = {"204": {"description": "Deleted."}}
    return (
        op("GET", "/api/v1/agents", list_agents, "Every agent of the rota.",
           responses=_ok({"type": "object", "properties": {
               "agents": {"type": "array", "items": AGENT_SCHEMA}}})),
        op("GET", "/api/v1/agents/{id}", get_agent, "One agent.", path_params=(ID,),
           responses=_ok(AGENT_SCHEMA)),
        op("PUT", "/api/v1/agents/{id}", replace_agent,
           "Create or replace an agent (interface required).", path_params=(ID,),
           body=AGENT_BODY, responses=_ok(AGENT_SCHEMA)),
        op("PATCH", "/api/v1/agents/{id}", patch_agent,
           "Change some fields, e.g. {\"cleared\": true} when a trainee is cleared.",
           path_params=(ID,), body=AGENT_BODY, responses=_ok(AGENT_SCHEMA)),
        op("DELETE", "/api/v1/agents/{id}", delete_agent,
           "Remove an agent that no line uses (409 otherwise).", path_params=(ID,),
           responses=deleted),
        op("GET", "/api/v1/rotas", list_rotas, "Every line's rota, timezone and fallback.",
           responses=_ok({"type": "object", "properties": {
               "lines": {"type": "array", "items": LINE_SCHEMA}}})),
        op("GET", "/api/v1/rotas/{line}", get_rota, "One line's rota.", path_params=(LINE,),
           responses=_ok(LINE_SCHEMA)),
        op("PUT", "/api/v1/rotas/{line}", put_rota,
           "Create or replace a line's rota (checked; 400 names the shift and key).",
           path_params=(LINE,), body=LINE_SCHEMA, responses=_ok(LINE_SCHEMA)),
        op("DELETE", "/api/v1/rotas/{line}", delete_rota, "Remove a line.",
           path_params=(LINE,), responses=deleted),
        op("GET", "/api/v1/rotas/{line}/on-duty", on_duty,
           "Who is on duty at a moment, in the order the next call is offered.",
           path_params=(LINE,), query=(AT,),
           responses=_ok({"type": "object"})),
    )
