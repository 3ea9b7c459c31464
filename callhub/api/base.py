"""What every route module shares: the Operation record, app keys and JSON helpers.

An `Operation` is a route and its documentation in one value; `app.py`
registers it (behind the role check) and `openapi.py` documents it, so the
served routes and the document cannot drift apart.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Protocol

from aiohttp import web

from callhub.api.params import BadParameter, Param, check_text
from callhub.config import Settings
from callhub.store.db import Database

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class IngestStatus(Protocol):
    """What /readyz needs from a PBX's AMI ingestion."""

    @property
    def connected(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Operation:
    """One HTTP route: method, absolute path, handler, who may call it, and its docs.

    `role` is the least role allowed (viewer < supervisor < admin); None means
    the handler needs no token from callhub's auth (it does its own or is public).
    """

    method: str
    path: str
    handler: Handler
    role: str | None
    summary: str
    tag: str
    query: tuple[Param, ...] = ()
    path_params: tuple[Param, ...] = ()
    body: Mapping[str, Any] | None = None
    responses: Mapping[str, Any] = field(default_factory=dict)
    produces: tuple[str, ...] = ("application/json",)


SETTINGS: web.AppKey[Settings] = web.AppKey("settings", Settings)
DB: web.AppKey[Database] = web.AppKey("db", Database)
INGESTS: web.AppKey[Mapping[str, IngestStatus]] = web.AppKey("ingests", Mapping)
METRICS: web.AppKey[Any] = web.AppKey("metrics", object)
OPERATIONS: web.AppKey[tuple[Operation, ...]] = web.AppKey("operations", tuple)


def _default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def dumps(data: Any) -> str:
    return json.dumps(data, default=_default, ensure_ascii=False)


def json_response(data: Any, status: int = 200, headers: Mapping[str, str] | None = None
                  ) -> web.Response:
    return web.Response(text=dumps(data), status=status, content_type="application/json",
                        headers=headers)


def error_response(status: int, error: str, message: str, **extra: Any) -> web.Response:
    return json_response({"error": error, "message": message, **extra}, status=status)


async def json_body(request: web.Request, fields: Mapping[str, type | tuple[type, ...]],
                    required: tuple[str, ...] = ()) -> dict[str, Any]:
    """A JSON object body with only `fields` (of those types); BadParameter otherwise."""
    if not request.can_read_body:
        if required:
            raise BadParameter(required[0], "required (send a JSON object body)")
        return {}
    try:
        data = json.loads(await request.text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadParameter("body", f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadParameter("body", "must be a JSON object")
    for key, value in data.items():
        if key not in fields:
            raise BadParameter(key, f"unknown field (known: {', '.join(sorted(fields))})")
        if value is not None and not isinstance(value, fields[key]):
            raise BadParameter(key, f"wrong type {type(value).__name__}")
        if isinstance(value, str):
            check_text(key, value)
    for key in required:
        if data.get(key) is None:
            raise BadParameter(key, "required")
    return data


def path_int(request: web.Request, name: str) -> int:
    """An integer path parameter (ids); BadParameter when it is not one."""
    raw = request.match_info[name]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 10 or not 1 <= int(raw) <= 2**31 - 1:
        raise BadParameter(name, f"must be an integer id between 1 and {2**31 - 1}; "
                                 f"got {raw[:40]!r}")
    return int(raw)


ID_PARAM = Param("id", "integer", "The numeric id.", minimum=1, maximum=2**31 - 1)


def offset_cursor(kind: str, offset: int) -> str:
    """An opaque page cursor for offset-paged lists; `kind` keeps lists' cursors apart."""
    return base64.urlsafe_b64encode(f"{kind}{offset}".encode()).decode().rstrip("=")


def cursor_offset(kind: str, text: str) -> int:
    """The offset in a cursor made by `offset_cursor(kind, ...)`; BadParameter otherwise."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
        if not raw.startswith(kind) or not (raw[len(kind):].isascii()
                                            and raw[len(kind):].isdigit()):
            raise ValueError(raw)
        return int(raw[len(kind):])
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadParameter("cursor", "not a cursor this API returned") from None
