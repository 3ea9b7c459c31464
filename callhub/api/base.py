"""What every route module shares: the Operation record, app keys and JSON replies.

An `Operation` is a route and its documentation in one value: its query,
path and body models validate the request before the handler runs, and its
`responses` name the model each status answers with; `app.py` registers it
(behind the role check) and `openapi.py` documents it from the same models,
so the served routes, what they accept and what they answer cannot drift
from the document.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Protocol, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, TypeAdapter

from callhub.config import Settings
from callhub.store.db import Database

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
M = TypeVar("M", bound=BaseModel)


class IngestStatus(Protocol):
    """What /readyz needs from a PBX's AMI ingestion."""

    @property
    def connected(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Reply:
    """One documented response: its sentence and the model of its JSON body.

    `model` None: no body (204). `csv`: the same route may answer text/csv too.
    """

    description: str
    model: Any = None
    csv: bool = False


@dataclass(frozen=True, slots=True)
class Operation:
    """One HTTP route: method, absolute path, handler, who may call it, and its docs.

    `role` is the least role allowed (viewer < supervisor < admin); None means
    the handler needs no token from callhub's auth (it does its own or is public).
    `query`, `path_params` and `body` are the pydantic models the app validates
    the request against before the handler runs (`query` None: not checked by
    the app; every /api/v1 operation declares one, `NoQuery` for none).
    `responses` maps a status to a `Reply` (or to a literal OpenAPI response).
    `database`: the handler reads or writes the database, so it answers 503 while
    the daemon still waits for it at start (`make_app(database_ready=...)`); the
    health checks, /metrics, the OpenAPI document and the rota's routes (in memory)
    answer meanwhile (the desk's pages are not operations: always served).
    """

    method: str
    path: str
    handler: Handler
    role: str | None
    summary: str
    tag: str
    query: type[BaseModel] | None = None
    path_params: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    responses: Mapping[str, Reply | Mapping[str, Any]] = field(default_factory=dict)
    produces: tuple[str, ...] = ("application/json",)
    database: bool = True


@dataclass(frozen=True, slots=True)
class Inputs:
    """A request's validated input, for its handler."""

    operation: Operation
    query: BaseModel | None = None
    path: BaseModel | None = None
    body: BaseModel | None = None


SETTINGS: web.AppKey[Settings] = web.AppKey("settings", Settings)
DB: web.AppKey[Database] = web.AppKey("db", Database)
INGESTS: web.AppKey[Mapping[str, IngestStatus]] = web.AppKey("ingests", Mapping)
METRICS: web.AppKey[Any] = web.AppKey("metrics", object)
OPERATIONS: web.AppKey[tuple[Operation, ...]] = web.AppKey("operations", tuple)
INPUTS: web.RequestKey[Inputs] = web.RequestKey("inputs", Inputs)
VALIDATE: web.AppKey[bool] = web.AppKey("validate_responses", bool)

VALIDATE_ENV = "CALLHUB_API_VALIDATE_RESPONSES"
"""Set to 1 (the test suite does) to check every JSON answer against its documented model."""


def validate_by_default() -> bool:
    """Whether apps check their answers unless told: only when VALIDATE_ENV is set."""
    return os.environ.get(VALIDATE_ENV, "").strip().lower() in ("1", "true", "yes")


def _input(request: web.Request, which: str, model: type[M]) -> M:
    value = getattr(request[INPUTS], which)
    if not isinstance(value, model):
        raise TypeError(f"{request.method} {request.path}: the operation's {which} model is "
                        f"{type(value).__name__}, not {model.__name__}")
    return value


def query_of(request: web.Request, model: type[M]) -> M:
    """The request's query string, validated as `model` (the operation's `query`)."""
    return _input(request, "query", model)


def path_of(request: web.Request, model: type[M]) -> M:
    """The request's path parameters, validated as `model` (the operation's `path_params`)."""
    return _input(request, "path", model)


def body_of(request: web.Request, model: type[M]) -> M:
    """The request's JSON body, validated as `model` (the operation's `body`)."""
    return _input(request, "body", model)


@functools.cache
def adapter(model: Any) -> TypeAdapter[Any]:
    """The (cached) pydantic adapter of a response model."""
    return TypeAdapter(model)


def _orjson_default(value: Any) -> Any:
    if isinstance(value, Decimal):  # numeric columns some drivers hand back
        return float(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def encode(data: Any) -> bytes:
    """`data` as UTF-8 JSON: datetimes as ISO 8601 with their offset (as `isoformat`).

    Keys that are not exactly `str` (SQLAlchemy's column names are a subclass of it) need
    orjson's OPT_NON_STR_KEYS, which checks every key's type: a worklist page encoded
    30-40 % slower with it. So it is the second try, for the answers that need it."""
    try:
        return orjson.dumps(data, default=_orjson_default)
    except orjson.JSONEncodeError:
        return orjson.dumps(data, default=_orjson_default, option=orjson.OPT_NON_STR_KEYS)


def reply(request: web.Request, data: Any, status: int = 200,
          headers: Mapping[str, str] | None = None) -> web.Response:
    """`data` as the JSON body the operation documents for `status`.

    Encoded by orjson straight from the handler's dicts: validating every row
    through pydantic cost more than the whole encoding. With the app's
    VALIDATE on (the test suite, CALLHUB_API_VALIDATE_RESPONSES=1), the bytes
    sent are checked against that model strictly (an int where a float is
    documented passes, 3.0 for an int does not); a mismatch raises, which the
    app logs as a 500.
    """
    return reply_encoded(request, encode(data), status, headers)


def reply_encoded(request: web.Request, body: bytes, status: int = 200,
                  headers: Mapping[str, str] | None = None) -> web.Response:
    """`reply` of data already encoded (`encode`), such as an answer kept by a cache."""
    op = request[INPUTS].operation
    doc = op.responses.get(str(status))
    if not isinstance(doc, Reply) or doc.model is None:
        raise LookupError(f"{op.method} {op.path} documents no JSON body for {status}")
    if request.app.get(VALIDATE, False):
        adapter(doc.model).validate_json(body, strict=True)
    return web.Response(body=body, status=status, content_type="application/json",
                        charset="utf-8", headers=headers)


def _default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def dumps(data: Any) -> str:
    return json.dumps(data, default=_default, ensure_ascii=False)


def json_response(data: Any, status: int = 200, headers: Mapping[str, str] | None = None
                  ) -> web.Response:
    """Plain JSON, for routes outside the documented API (the desk's session check)."""
    return web.Response(text=dumps(data), status=status, content_type="application/json",
                        headers=headers)


def error_response(status: int, error: str, message: str, **extra: Any) -> web.Response:
    return json_response({"error": error, "message": message, **extra}, status=status)
