"""The aiohttp application: every Operation registered behind its role check.

`make_app` is the one place routes are mounted. Each request is checked
against its operation's models (query, path, body) before the handler runs.
Other parts add theirs with `extra_operations` (e.g. GET /metrics, which
does its own token check and so has `role=None`); they are served and
documented like the built-in ones. With a `router`, the rota routes
(/api/v1/agents, /api/v1/rotas) are served too, over that router.
/readyz reports the parts of the `supervisor` handed in (the daemon's),
plus the database and each PBX's AMI.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import structlog
from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

from callhub.api import auth, calls, health, rota, sms, stats, worklist
from callhub.api.base import (
    DB,
    INGESTS,
    INPUTS,
    METRICS,
    OPERATIONS,
    SETTINGS,
    VALIDATE,
    Handler,
    IngestStatus,
    Inputs,
    Operation,
    error_response,
    json_response,
    validate_by_default,
)
from callhub.api.openapi import OPENAPI
from callhub.api.params import BadParameter, parse_body, parse_path, parse_query
from callhub.config import Settings
from callhub.lifecycle import Supervisor
from callhub.routing.chooser import Router
from callhub.store.db import ChangeCutOff, CommitLost, Database
from callhub.store.errors import InvalidTransition, NotApplicable, NotFound
from callhub.store.read_pool import NoAnswer

log = structlog.get_logger(__name__)

BUILTIN_OPERATIONS: tuple[Operation, ...] = (
    *calls.OPERATIONS,
    *worklist.OPERATIONS,
    *stats.OPERATIONS,
    *sms.OPERATIONS,
    *health.OPERATIONS,
    OPENAPI,
)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error as JSON: 400 naming the parameter, 404/409 for what the store refuses,
    503 when the database is down or gives no answer within the limit of a read or a
    change (it hangs: `Database.read`, `query`, `change`)."""
    try:
        return await handler(request)
    except BadParameter as exc:
        return error_response(400, "bad_parameter", f"{exc.name}: {exc.why}",
                              parameter=exc.name)
    except NotFound as exc:
        return error_response(404, "not_found", str(exc))
    except InvalidTransition as exc:
        return error_response(409, "conflict", str(exc))
    except NotApplicable as exc:
        return error_response(400, "bad_request", str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        log.warning("api.database_error", method=request.method, path=request.path,
                    error=type(exc).__name__,
                    detail=str(exc).splitlines()[0] if str(exc) else "")
        return error_response(503, "database_unavailable", unavailable(exc))
    except Exception:
        log.exception("api.request_failed", method=request.method, path=request.path)
        return error_response(500, "internal_error", "internal error (logged)")


def unavailable(exc: BaseException) -> str:
    """The 503's sentence for a database failure. A change cut off after its COMMIT went
    out may yet be applied when the database answers again: the client is told to read
    it again before trying, lest it be made twice (a follow-up added twice)."""
    if isinstance(exc, ChangeCutOff) and exc.commit_sent:
        return (f"the database gave no answer in {exc.seconds:g} s to the change sent: it "
                "may or may not have been saved; reload to see which before trying again")
    if isinstance(exc, ChangeCutOff):
        return (f"the database gave no answer in {exc.seconds:g} s; the change was not "
                "saved; try again shortly")
    if isinstance(exc, CommitLost):
        return ("the connection to the database was lost with the change sent: it may or "
                "may not have been saved; reload to see which before trying again")
    if isinstance(exc, NoAnswer):
        return f"the database gave no answer in {exc.seconds:g} s; try again shortly"
    return "the database cannot be reached; try again shortly"


def checked(op: Operation, settings: Settings) -> Handler:
    """`op`'s handler behind the validation of its query, path parameters and body."""

    async def handler(request: web.Request) -> web.StreamResponse:
        tz = settings.tz
        request[INPUTS] = Inputs(
            op,
            query=parse_query(request.query, op.query, tz) if op.query is not None else None,
            path=parse_path(request.match_info, op.path_params) if op.path_params else None,
            body=parse_body(await request.read(), op.body, tz) if op.body else None)
        return await op.handler(request)

    handler.__name__ = getattr(op.handler, "__name__", "handler")
    handler.__doc__ = op.handler.__doc__
    return handler


async def _open_reads(app: web.Application) -> None:
    """The read pool open before the first request (callhub/store/db.py)."""
    await app[DB].open_reads()


STARTING_RETRY_SECONDS = 5


def after_database(ready: asyncio.Event, handler: Handler) -> Handler:
    """`handler` once `ready` is set; before, 503 `starting` (the daemon listens while it
    waits for its database at start, so that /healthz and /readyz answer meanwhile)."""

    async def gated(request: web.Request) -> web.StreamResponse:
        if not ready.is_set():
            return json_response(
                {"error": "starting", "message": "callhub is starting and waits for its "
                 "database (GET /readyz says why); try again shortly"},
                status=503, headers={"Retry-After": str(STARTING_RETRY_SECONDS)})
        return await handler(request)

    gated.__name__ = getattr(handler, "__name__", "handler")
    return gated


def make_app(settings: Settings, db: Database, *,
             ingests: Mapping[str, IngestStatus] | None = None,
             metrics: Any = None,
             extra_operations: Sequence[Operation] = (),
             supervisor: Supervisor | None = None,
             router: Router | None = None,
             validate_responses: bool | None = None,
             database_ready: asyncio.Event | None = None) -> web.Application:
    """The API application for `settings` reading `db`; `ingests` by PBX name for /readyz;
    the rota routes over `router` when one is given. `validate_responses`: check every
    JSON answer against its documented model (None: when CALLHUB_API_VALIDATE_RESPONSES
    says so; the test suite does).

    `database_ready`: the app serves before the database is ready (the daemon at
    start); routes that need it answer 503 until the event is set, and the read pool
    is left to the caller to open then (`Database.open_reads`)."""
    app = web.Application(middlewares=[json_errors], client_max_size=256 * 1024)
    app[SETTINGS] = settings
    app[DB] = db
    app[INGESTS] = ingests if ingests is not None else {}
    app[health.SUPERVISOR] = supervisor if supervisor is not None else Supervisor()
    health.add_default_parts(app[health.SUPERVISOR], settings, db, app[INGESTS])
    app[METRICS] = metrics
    app[VALIDATE] = validate_by_default() if validate_responses is None else validate_responses
    operations = (*BUILTIN_OPERATIONS, *extra_operations)
    if router is not None:
        app[rota.ROUTER] = router
        operations = (*operations, *rota.OPERATIONS)
    app[OPERATIONS] = operations
    if database_ready is None:
        app.on_startup.append(_open_reads)
    for op in operations:
        handler = checked(op, settings)
        if database_ready is not None and op.database:
            handler = after_database(database_ready, handler)
        if op.role is not None:
            handler = auth.require(op.role, settings.api_tokens, handler)
        app.router.add_route(op.method, op.path, handler)
    return app
