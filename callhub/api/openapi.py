"""The OpenAPI 3.1 document, generated from the Operations the app really serves.

Parameters, request bodies and response bodies are the JSON schemas of the
operations' pydantic models (the ones that validate requests and responses),
shared definitions under components/schemas.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web
from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import JsonSchemaMode

from callhub.api.base import OPERATIONS, Operation, Reply, adapter, reply
from callhub.api.params import NoQuery
from callhub.api.schemas import ErrorBody

REF = "#/components/schemas/{model}"
ERROR_REF = {"$ref": REF.format(model="ErrorBody")}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ERROR_REF}}}


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query or path parameter's schema without the `null` an optional field allows (a
    query string cannot carry null) and without pydantic's titles."""
    out = {k: v for k, v in schema.items() if k not in ("title", "description")}
    branches = [b for b in out.pop("anyOf", []) if b != {"type": "null"}]
    if len(branches) == 1:
        out.update(branches[0])
    elif branches:
        out["anyOf"] = branches
    if out.get("default", 0) is None:
        del out["default"]
    return out


def parameters(model: type[BaseModel] | None, location: str) -> list[dict[str, Any]]:
    """The OpenAPI parameters of a query or path model, one per field."""
    if model is None:
        return []
    schema = model.model_json_schema(mode="validation")
    required = set(schema.get("required", ()))
    return [{"name": name, "in": location, "required": location == "path" or name in required,
             "description": prop.get("description", ""), "schema": _not_null(prop)}
            for name, prop in schema.get("properties", {}).items()]


def _content(doc: Reply, refs: Mapping[Any, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"description": doc.description}
    if doc.model is not None:
        out["content"] = {"application/json": {"schema": refs[doc.model, "serialization"]}}
        if doc.csv:
            out["content"]["text/csv"] = {"schema": {"type": "string"}}
    return out


def operation_doc(op: Operation, refs: Mapping[Any, Any]) -> dict[str, Any]:
    responses: dict[str, Any] = {
        status: _content(doc, refs) if isinstance(doc, Reply) else dict(doc)
        for status, doc in op.responses.items()}
    doc: dict[str, Any] = {
        "operationId": f"{op.method.lower()}_{op.path.strip('/').replace('/', '_')}"
                       .replace("{", "").replace("}", "").replace("api_v1_", "")
                       .replace("-", "_"),
        "summary": op.summary,
        "tags": [op.tag],
        "parameters": parameters(op.path_params, "path") + parameters(op.query, "query"),
        "responses": responses or {"200": {"description": "OK", "content": {
            kind: {"schema": {"type": "string"}} for kind in op.produces}}},
    }
    if op.body is not None:
        required = bool(op.body.model_json_schema().get("required"))
        doc["requestBody"] = {"required": required, "content": {
            "application/json": {"schema": refs[op.body, "validation"]}}}
    if op.role is None:
        doc["security"] = []
    else:
        doc["security"] = [{"bearer": []}]
        doc["description"] = f"Needs a token with the {op.role} role or above."
        doc["responses"].setdefault("401", {"$ref": "#/components/responses/Unauthorized"})
        doc["responses"].setdefault("403", {"$ref": "#/components/responses/Forbidden"})
        doc["responses"].setdefault("503", {"$ref": "#/components/responses/Unavailable"})
    if op.query or op.path_params or op.body is not None or op.role is not None:
        doc["responses"].setdefault("400", {"$ref": "#/components/responses/BadRequest"})
    return doc


def _models(operations: Iterable[Operation]) -> list[tuple[Any, JsonSchemaMode]]:
    """Every body and response model of `operations`, once, with the mode it is used in."""
    found: dict[tuple[Any, JsonSchemaMode], None] = {(ErrorBody, "serialization"): None}
    for op in operations:
        if op.body is not None:
            found[op.body, "validation"] = None
        for doc in op.responses.values():
            if isinstance(doc, Reply) and doc.model is not None:
                found[doc.model, "serialization"] = None
    return list(found)


def build(operations: Iterable[Operation], version: str = "0.1.0") -> dict[str, Any]:
    operations = tuple(operations)
    models = _models(operations)
    refs, definitions = TypeAdapter.json_schemas(
        [(model, mode, adapter(model)) for model, mode in models], ref_template=REF)
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        paths.setdefault(op.path, {})[op.method.lower()] = operation_doc(op, refs)
    return {
        "openapi": "3.1.0",
        "info": {"title": "callhub", "version": version,
                 "description": "Call records, the missed-call worklist and desk figures. "
                                "Caller numbers are personal data: every route but /healthz "
                                "needs a bearer token."},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": definitions.get("$defs", {}),
            "responses": {
                "BadRequest": _error("A parameter is wrong; `parameter` names it."),
                "Unauthorized": _error("No token, or not a known one."),
                "Forbidden": _error("The token's role is too small."),
                "NotFound": _error("No such item."),
                "Unavailable": _error("The database cannot be reached or gave no answer in "
                                      "time (5 s), or callhub is starting and waits for it "
                                      "(/readyz says which); try again shortly. A change "
                                      "it gave no answer to after its COMMIT went out may "
                                      "or may not have been saved (the message says so): "
                                      "read it again before trying again."),
            },
        },
        "security": [{"bearer": []}],
    }


async def openapi_json(request: web.Request) -> web.StreamResponse:
    operations: tuple[Operation, ...] = request.app[OPERATIONS]
    return reply(request, build(operations))


OPENAPI = Operation("GET", "/api/v1/openapi.json", openapi_json, "viewer",
                    "This document.", "meta", query=NoQuery,
                    responses={"200": Reply("The OpenAPI 3.1 document.", dict[str, Any])},
                    database=False)
