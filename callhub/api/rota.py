"""Agents and rotas over HTTP (admin token): read them, change them, see who is on duty.

The handlers reach the running router through the app (`ROUTER`, set by
`make_app(..., router=...)`). A change is checked as a whole rota
(`RotaError` -> 400 naming the line, shift and key) and persisted through
the router's store before the response; the FastAGI server uses it from the
next call on. Bodies declare their shape (types, known keys); the rota's own
checks (bounds, times, references between agents and lines) stay with the
rota file's rules, so the API and `rota load` refuse the same things.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from aiohttp import web
from pydantic import Field, StrictInt

from callhub.api.base import (
    Operation,
    Reply,
    body_of,
    error_response,
    path_of,
    query_of,
    reply,
)
from callhub.api.params import BadParameter, Body, Moment, NoQuery, Path, Query
from callhub.api.schemas import Agent as AgentSchema
from callhub.api.schemas import AgentList, ErrorBody, Line, OnDuty, Rotas
from callhub.routing.chooser import Router
from callhub.routing.duty import line_report
from callhub.routing.model import Agent, agent_to_data, line_to_data
from callhub.routing.onduty import local_time, rota_zone
from callhub.routing.rota_file import RotaError, rota_from_data

ROUTER: web.AppKey[Router] = web.AppKey("router", Router)
RING_TIMEOUT_DOC = ("Seconds this agent's phone rings on every line (unless the line's "
                    "ring_timeouts names the agent); null (PATCH): back to the line's. "
                    "1-600, checked with the whole rota.")


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def optional(**kw: Any) -> Any:
    """A body field that may be left out but not sent as null."""
    return Field(default=None, json_schema_extra=_no_default, **kw)


class AgentId(Path):
    id: str = Field(description="Agent id as in the rota.")


class LineName(Path):
    line: str = Field(description="Line name (or one of its DIDs).")


class AgentFields(Body):
    """An agent's fields (PATCH: only the ones to change)."""

    name: str = optional()
    interface: str = optional(examples=["PJSIP/1001"])
    active: bool = optional()
    cleared: bool = optional()
    ring_timeout: StrictInt | None = Field(None, description=RING_TIMEOUT_DOC)
    mobile: str | None = Field(None, description="The agent's mobile number, named in the "
                                                 "SMS after a call; null (PATCH): none.")


class NewAgent(AgentFields):
    """An agent to create or replace: the interface is required; name defaults to the id."""

    interface: str = Field(examples=["PJSIP/1001"])


class ShiftBody(Body):
    name: str = optional()
    days: str | list[str] = optional(description='"daily", "mon-fri" or a list of days.')
    start: str = Field(examples=["08:00"])
    end: str = Field(examples=["17:00"], description="Exclusive; <= start crosses midnight; "
                                                     '"24:00" allowed.')
    agents: list[str] = optional(description="Default: the line's rotation.")


class ExceptionBody(Body):
    name: str = optional()
    date: str = Field(examples=["2026-12-24"])
    start: str = optional()
    end: str = optional()
    closed: bool = optional()
    absent: list[str] = optional()
    swap: dict[str, str] = optional()
    extra: list[str] = optional()


class LineBody(Body):
    """A line as in the rota file's [[lines]] table (`name`, if given, as in the path)."""

    name: str = optional()
    dids: list[str] = optional()
    rotation: list[str] = optional()
    ring_timeout: StrictInt = optional(description="Seconds each agent rings (default 15), "
                                                   "and the fallback; 1-600.")
    ring_timeouts: dict[str, StrictInt] = optional(
        description="Agent id -> seconds on this line (1-600); beats the agent's own "
                    "ring_timeout.", examples=[{"wang": 25}])
    fallback: str = optional()
    shifts: list[ShiftBody] = optional()
    exceptions: list[ExceptionBody] = optional()


class OnDutyQuery(Query):
    at: Moment | None = Field(None, description="The moment (default now); without an "
                                                "offset, local time.")


def _save(router: Router, make: Callable[[dict[str, Any]], dict[str, Any]]
          ) -> web.Response | None:
    """Apply `make` to the rota's data, check and persist; a 400 response if wrong."""
    data = make(router.rota.to_data())
    try:
        router.replace_rota(rota_from_data(data, source="api"))
    except RotaError as exc:
        return error_response(400, "invalid_rota", str(exc))
    return None


def _not_found(what: str) -> web.Response:
    return error_response(404, "not_found", f"no such {what}")


async def list_agents(request: web.Request) -> web.StreamResponse:
    router = request.app[ROUTER]
    return reply(request, {"agents": [agent_to_data(a) for a in router.rota.agents.values()]})


async def get_agent(request: web.Request) -> web.StreamResponse:
    agent = request.app[ROUTER].rota.agents.get(path_of(request, AgentId).id)
    if agent is None:
        return _not_found("agent")
    return reply(request, agent_to_data(agent))


async def _put_agent(request: web.Request, fields: AgentFields) -> web.StreamResponse:
    router = request.app[ROUTER]
    ident = path_of(request, AgentId).id
    given = fields.model_dump(exclude_unset=True)
    existing = router.rota.agents.get(ident)
    if isinstance(fields, NewAgent):
        agent = Agent(id=ident, name=given.get("name", ident), interface=fields.interface,
                      active=given.get("active", True), cleared=given.get("cleared", True),
                      ring_timeout=fields.ring_timeout, mobile=fields.mobile)
    elif existing is None:
        return _not_found("agent")
    else:
        agent = replace(existing, **given)

    def make(data: dict[str, Any]) -> dict[str, Any]:
        agents = [a for a in data["agents"] if a["id"] != ident]
        data["agents"] = [*agents, agent_to_data(agent)]
        return data

    problem = _save(router, make)
    if problem is not None:
        return problem
    return reply(request, agent_to_data(router.rota.agents[ident]),
                 status=201 if existing is None else 200)


async def replace_agent(request: web.Request) -> web.StreamResponse:
    return await _put_agent(request, body_of(request, NewAgent))


async def patch_agent(request: web.Request) -> web.StreamResponse:
    return await _put_agent(request, body_of(request, AgentFields))


async def delete_agent(request: web.Request) -> web.StreamResponse:
    router = request.app[ROUTER]
    ident = path_of(request, AgentId).id
    if ident not in router.rota.agents:
        return _not_found("agent")
    users = [line.name for line in router.rota.lines.values()
             if ident in line.rotation or ident in line.ring_timeouts
             or any(ident in e.swaps.values() for e in line.exceptions)]
    if users:
        return error_response(409, "in_use", f"agent {ident!r} is in the rota of line(s) "
                                             f"{', '.join(users)}; change those first")

    def make(data: dict[str, Any]) -> dict[str, Any]:
        data["agents"] = [a for a in data["agents"] if a["id"] != ident]
        return data

    return _save(router, make) or web.Response(status=204)


async def list_rotas(request: web.Request) -> web.StreamResponse:
    router = request.app[ROUTER]
    data = router.rota.to_data()
    data.pop("agents")
    data.setdefault("timezone", router.default_timezone)
    return reply(request, data)


async def get_rota(request: web.Request) -> web.StreamResponse:
    line = request.app[ROUTER].rota.line_for(path_of(request, LineName).line)
    if line is None:
        return _not_found("line")
    return reply(request, line_to_data(line))


async def put_rota(request: web.Request) -> web.StreamResponse:
    router = request.app[ROUTER]
    name = path_of(request, LineName).line
    body = body_of(request, LineBody).model_dump(exclude_unset=True)
    if body.get("name", name) != name:
        raise BadParameter("name", "differs from the line in the path")
    body["name"] = name
    existed = name in router.rota.lines

    def make(data: dict[str, Any]) -> dict[str, Any]:
        lines = [item for item in data["lines"] if item["name"] != name]
        data["lines"] = [*lines, body]
        return data

    problem = _save(router, make)
    if problem is not None:
        return problem
    return reply(request, line_to_data(router.rota.lines[name]),
                 status=200 if existed else 201)


async def delete_rota(request: web.Request) -> web.StreamResponse:
    router = request.app[ROUTER]
    name = path_of(request, LineName).line
    if name not in router.rota.lines:
        return _not_found("line")

    def make(data: dict[str, Any]) -> dict[str, Any]:
        data["lines"] = [item for item in data["lines"] if item["name"] != name]
        return data

    return _save(router, make) or web.Response(status=204)


async def on_duty(request: web.Request) -> web.StreamResponse:
    router = request.app[ROUTER]
    line = router.rota.line_for(path_of(request, LineName).line)
    if line is None:
        return _not_found("line")
    tz = rota_zone(router.rota, router.default_timezone)
    at = query_of(request, OnDutyQuery).at
    return reply(request, line_report(router, line, local_time(at or router.clock(), tz)))


def _op(method: str, path: str, handler: Any, summary: str, **kw: Any) -> Operation:
    """A rota route: in memory and the state directory, never the database."""
    return Operation(method, path, handler, "admin", summary, "routing", database=False, **kw)


NOT_FOUND = Reply("No such agent or line.", ErrorBody)
INVALID = Reply("The change would make the rota invalid; the message names the line, "
                "shift and key.", ErrorBody)
IN_USE = Reply("The agent is still in a line's rota.", ErrorBody)
DELETED = Reply("Deleted.")
AGENT = Reply("The agent.", AgentSchema)
LINE = Reply("The line's rota.", Line)

OPERATIONS = (
    _op("GET", "/api/v1/agents", list_agents, "Every agent of the rota.", query=NoQuery,
        responses={"200": Reply("Every agent.", AgentList)}),
    _op("GET", "/api/v1/agents/{id}", get_agent, "One agent.", query=NoQuery,
        path_params=AgentId, responses={"200": AGENT, "404": NOT_FOUND}),
    _op("PUT", "/api/v1/agents/{id}", replace_agent,
        "Create or replace an agent (interface required).", query=NoQuery,
        path_params=AgentId, body=NewAgent,
        responses={"200": AGENT, "201": Reply("The agent, created.", AgentSchema),
                   "400": INVALID}),
    _op("PATCH", "/api/v1/agents/{id}", patch_agent,
        "Change some fields, e.g. {\"cleared\": true} when a trainee is cleared.",
        query=NoQuery, path_params=AgentId, body=AgentFields,
        responses={"200": AGENT, "400": INVALID, "404": NOT_FOUND}),
    _op("DELETE", "/api/v1/agents/{id}", delete_agent,
        "Remove an agent that no line uses (409 otherwise).", query=NoQuery,
        path_params=AgentId, responses={"204": DELETED, "404": NOT_FOUND, "409": IN_USE}),
    _op("GET", "/api/v1/rotas", list_rotas, "Every line's rota, timezone and fallback.",
        query=NoQuery, responses={"200": Reply("Every line's rota.", Rotas)}),
    _op("GET", "/api/v1/rotas/{line}", get_rota, "One line's rota.", query=NoQuery,
        path_params=LineName, responses={"200": LINE, "404": NOT_FOUND}),
    _op("PUT", "/api/v1/rotas/{line}", put_rota,
        "Create or replace a line's rota (checked; 400 names the shift and key).",
        query=NoQuery, path_params=LineName, body=LineBody,
        responses={"200": LINE, "201": Reply("The line's rota, created.", Line),
                   "400": INVALID}),
    _op("DELETE", "/api/v1/rotas/{line}", delete_rota, "Remove a line.", query=NoQuery,
        path_params=LineName, responses={"204": DELETED, "404": NOT_FOUND}),
    _op("GET", "/api/v1/rotas/{line}/on-duty", on_duty,
        "Who is on duty at a moment, in the order the next call is offered.",
        query=OnDutyQuery, path_params=LineName,
        responses={"200": Reply("Who is on duty, in offer order.", OnDuty),
                   "404": NOT_FOUND}),
)
