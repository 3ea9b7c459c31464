"""The supervisor's desk: a web page under /desk/ and the follow-up keeper behind it.

Hook-up, next to the API (the follow-up routes are API operations, so they
go through `make_app` and appear in the OpenAPI document):

    app = make_app(settings, db, metrics=metrics, supervisor=supervisor,
                   extra_operations=(..., *desk_operations()))
    keeper = setup_desk(app, writer=writer)
    await keeper.start()        # a supervised task (part `keeper`) on the app's supervisor
    ...
    await keeper.stop()

`setup_desk` mounts /desk/ (and the redirect from /) and makes the
`FollowupKeeper` (it sets `callhub_followups_overdue` on the metrics'
registry and is woken by the writer whenever calls are stored); whoever
runs the app runs the keeper, like every other background task.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web

from callhub.api.base import DB, METRICS, SETTINGS, Operation
from callhub.api.followups import FOLLOWUP_CLOCK, OPERATIONS
from callhub.api.health import SUPERVISOR
from callhub.desk.keeper import FollowupKeeper
from callhub.desk.pages import add_routes

KEEPER: web.AppKey[FollowupKeeper] = web.AppKey("followup_keeper", FollowupKeeper)

__all__ = ["KEEPER", "FollowupKeeper", "desk_operations", "setup_desk"]


def setup_desk(app: web.Application, *, writer: Any = None,
               clock: Callable[[], float] = time.time,
               keeper_interval: float = 5.0) -> FollowupKeeper:
    """Mount the desk on an app made by `make_app`; its keeper (not started) is returned."""
    metrics = app[METRICS]
    keeper = FollowupKeeper(app[DB], app[SETTINGS],
                            registry=getattr(metrics, "registry", None), clock=clock,
                            interval=keeper_interval, supervisor=app[SUPERVISOR])
    app[KEEPER] = keeper
    app[FOLLOWUP_CLOCK] = clock
    add_routes(app)
    if writer is not None:
        writer.listeners.append(lambda _batch, _saved: keeper.wake())
    return keeper


def desk_operations() -> Sequence[Operation]:
    """The follow-up API operations, for `make_app(extra_operations=...)`."""
    return OPERATIONS
