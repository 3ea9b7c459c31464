"""Bearer tokens with roles: viewer (stats) < supervisor (calls, worklist) < admin (all).

Tokens come from the settings; comparison is constant-time. A missing or
unknown token gets 401, a known token with too small a role 403; neither
response carries data.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from aiohttp import web

from callhub.api.base import Handler, error_response
from callhub.config import ApiToken

RANK = {"viewer": 0, "supervisor": 1, "admin": 2}
ROLE: web.RequestKey[str] = web.RequestKey("role", str)


def role_of(header: str | None, tokens: Sequence[ApiToken]) -> str | None:
    """The role of an `Authorization: Bearer ...` header value, None when unknown."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    found: str | None = None
    given = token.encode("utf-8", "surrogateescape")
    for item in tokens:
        # Check every token (no early exit) so timing does not tell which matched.
        if hmac.compare_digest(given, item.token.encode("utf-8")):
            found = item.role if found is None or RANK[item.role] > RANK[found] else found
    return found


def require(role: str, tokens: Sequence[ApiToken], handler: Handler) -> Handler:
    """Wrap `handler` so that only a token of `role` or above reaches it."""
    needed = RANK[role]

    async def guarded(request: web.Request) -> web.StreamResponse:
        have = role_of(request.headers.get("Authorization"), tokens)
        if have is None:
            response = error_response(401, "unauthorized",
                                      "send 'Authorization: Bearer <token>' with a valid token")
            response.headers["WWW-Authenticate"] = 'Bearer realm="callhub"'
            return response
        if RANK[have] < needed:
            return error_response(403, "forbidden",
                                  f"this needs the {role} role; the token is {have}")
        request[ROLE] = have
        return await handler(request)

    guarded.__name__ = getattr(handler, "__name__", "guarded")
    guarded.__doc__ = handler.__doc__
    return guarded
