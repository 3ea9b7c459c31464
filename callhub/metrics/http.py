"""GET /metrics for aiohttp: the registry in Prometheus (or OpenMetrics) text format.

The metrics carry no personal data, so the endpoint is open unless
`api.metrics_token` (CALLHUB_METRICS_TOKEN) is set; then Prometheus must send
`Authorization: Bearer <token>` (its `authorization` scrape option). It is a
plain handler so that the API app mounts it with one line:
`add_metrics_route(app, metrics.registry, settings.metrics_token)`.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
METRICS_PATH = "/metrics"


def token_matches(request: web.Request, token: str) -> bool:
    """Constant-time check of `Authorization: Bearer <token>`."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode())


def metrics_handler(registry: CollectorRegistry, token: str | None = None) -> Handler:
    """A handler serving `registry`; `token` (if any) is required as a bearer token."""

    async def handle(request: web.Request) -> web.StreamResponse:
        if token and not token_matches(request, token):
            return web.json_response(
                {"error": "a metrics token is configured: send Authorization: Bearer <token>"},
                status=401, headers={"WWW-Authenticate": 'Bearer realm="callhub metrics"'})
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(registry), headers={"Content-Type": content_type})

    return handle


def add_metrics_route(app: web.Application, registry: CollectorRegistry,
                      token: str | None = None, path: str = METRICS_PATH) -> None:
    """Mount GET `path` (HEAD too) on `app`."""
    app.router.add_get(path, metrics_handler(registry, token))
