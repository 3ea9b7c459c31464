"""The OpenAPI 3.1 document, generated from the Operations the app really serves."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiohttp import web

from callhub.api.base import OPERATIONS, Operation, json_response
from callhub.api.stats import figures_schema

NULLABLE_STRING = {"type": ["string", "null"]}
NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
TIME = {"type": "string", "format": "date-time"}

ATTEMPT = {"type": "object", "properties": {
    "seq": {"type": "integer"}, "interface": {"type": "string"}, "agent_name": NULLABLE_STRING,
    "offered_at": TIME, "ring_started_at": NULLABLE_TIME, "ended_at": NULLABLE_TIME,
    "result": NULLABLE_STRING, "ring_seconds": {"type": "number"}}}

CALL = {"type": "object", "required": ["id", "pbx", "linkedid", "direction", "outcome"],
        "properties": {
            "id": {"type": "integer"}, "pbx": {"type": "string"}, "linkedid": {"type": "string"},
            "direction": {"type": "string", "enum": ["inbound", "outbound", "internal"]},
            "line": NULLABLE_STRING, "called_number": NULLABLE_STRING,
            "caller_number": NULLABLE_STRING, "caller_name": NULLABLE_STRING,
            "external_number": NULLABLE_STRING,
            "arrived_at": TIME, "ring_started_at": NULLABLE_TIME, "answered_at": NULLABLE_TIME,
            "ended_at": TIME, "ring_seconds": {"type": "number"}, "rings": {"type": "integer"},
            "wait_seconds": {"type": "number"}, "talk_seconds": {"type": "number"},
            "hold_seconds": {"type": "number"}, "outcome": {"type": "string"},
            "reason": NULLABLE_STRING, "voicemail": {"type": "boolean"},
            "short_abandon": {"type": "boolean"}, "agent": NULLABLE_STRING,
            "agent_name": NULLABLE_STRING, "hangup_by": NULLABLE_STRING,
            "hangup_cause": {"type": ["integer", "null"]}, "queue": NULLABLE_STRING,
            "incomplete": {"type": "boolean"},
            "transfers": {"type": "array", "items": {"type": "object"}},
            "category": NULLABLE_STRING, "note": NULLABLE_STRING,
            "worklist": {"type": ["object", "null"]},
            "attempts": {"type": "array", "items": {"$ref": "#/components/schemas/Attempt"}},
        }}

WORKLIST_ENTRY = {"type": "object", "required": ["id", "number", "status", "calls"],
                  "properties": {
                      "id": {"type": "integer"}, "pbx": {"type": "string"},
                      "number": {"type": "string"}, "line": NULLABLE_STRING,
                      "status": {"type": "string", "enum": ["pending", "handled", "dismissed"]},
                      "first_missed_at": TIME, "last_missed_at": TIME,
                      "call_count": {"type": "integer"}, "handled_at": NULLABLE_TIME,
                      "handled_by": NULLABLE_STRING,
                      "how": {"type": ["string", "null"],
                              "enum": ["callback", "called_again", "manual", None]},
                      "handled_call_id": {"type": ["integer", "null"]},
                      "time_to_callback_seconds": {"type": ["number", "null"]},
                      "note": NULLABLE_STRING,
                      "calls": {"type": "array", "items": {"type": "object"}}}}

ERROR = {"type": "object", "required": ["error", "message"], "properties": {
    "error": {"type": "string"}, "message": {"type": "string"},
    "parameter": {"type": "string", "description": "The bad parameter (400 only)."}}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def operation_doc(op: Operation) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "operationId": f"{op.method.lower()}_{op.path.strip('/').replace('/', '_')}"
                       .replace("{", "").replace("}", "").replace("api_v1_", ""),
        "summary": op.summary,
        "tags": [op.tag],
        "parameters": [p.openapi("path") for p in op.path_params]
                      + [p.openapi("query") for p in op.query],
        "responses": dict(op.responses) or {"200": {"description": "OK", "content": {
            kind: {"schema": {"type": "string"}} for kind in op.produces}}},
    }
    if op.body is not None:
        doc["requestBody"] = {"required": False,
                              "content": {"application/json": {"schema": dict(op.body)}}}
    if op.role is None:
        doc["security"] = []
    else:
        doc["security"] = [{"bearer": []}]
        doc["description"] = f"Needs a token with the {op.role} role or above."
        doc["responses"].setdefault("401", {"$ref": "#/components/responses/Unauthorized"})
        doc["responses"].setdefault("403", {"$ref": "#/components/responses/Forbidden"})
    if op.query or op.path_params or op.body is not None or op.role is not None:
        doc["responses"].setdefault("400", {"$ref": "#/components/responses/BadRequest"})
    return doc


def build(operations: Iterable[Operation], version: str = "0.1.0") -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        paths.setdefault(op.path, {})[op.method.lower()] = operation_doc(op)
    return {
        "openapi": "3.1.0",
        "info": {"title": "callhub", "version": version,
                 "description": "Call records, the missed-call worklist and desk figures. "
                                "Caller numbers are personal data: every route but /healthz "
                                "needs a bearer token."},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Call": CALL, "Attempt": ATTEMPT, "WorklistEntry": WORKLIST_ENTRY,
                        "Figures": figures_schema(), "Error": ERROR},
            "responses": {
                "BadRequest": _error("A parameter is wrong; `parameter` names it."),
                "Unauthorized": _error("No token, or not a known one."),
                "Forbidden": _error("The token's role is too small."),
                "NotFound": _error("No such item."),
            },
        },
        "security": [{"bearer": []}],
    }


async def openapi_json(request: web.Request) -> web.StreamResponse:
    operations: tuple[Operation, ...] = request.app[OPERATIONS]
    return json_response(build(operations))


OPENAPI = Operation("GET", "/api/v1/openapi.json", openapi_json, "viewer",
                    "This document.", "meta",
                    responses={"200": {"description": "The OpenAPI 3.1 document.",
                                       "content": {"application/json": {
                                           "schema": {"type": "object"}}}}})
