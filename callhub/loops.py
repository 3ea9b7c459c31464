"""The event loop callhub runs on: uvloop where it is installed, asyncio's own otherwise.

uvloop (libuv underneath) takes less CPU per connection and per read than
asyncio's selector loop. Measured in turns with `bench/route.py` (bench/README.md):
the FastAGI server's p99 at 20 concurrent sessions 2.7-3.5 ms on uvloop against
5.5-6.6 ms on asyncio's, 85-95 against 115-125 µs of server CPU a call (the
shared rotation position gathers its groups for uvloop's quicker turns:
callhub/routing/shared.py). `event_loop =
"asyncio"` in the configuration (or CALLHUB_EVENT_LOOP) keeps asyncio's loop,
should uvloop ever misbehave on a site; `"uvloop"` insists on it.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import structlog

T = TypeVar("T")
log = structlog.get_logger(__name__)
EVENT_LOOPS = ("auto", "uvloop", "asyncio")
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def uvloop_installed() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def resolve(choice: str) -> str:
    """The loop `choice` (one of EVENT_LOOPS) means here: auto is uvloop if installed."""
    if choice not in EVENT_LOOPS:
        raise ValueError(f"event loop {choice!r}: expected one of {', '.join(EVENT_LOOPS)}")
    if choice == "auto":
        return "uvloop" if uvloop_installed() else "asyncio"
    return choice


def loop_factory(choice: str = "auto") -> LoopFactory:
    """How to make a loop for `choice` (one of EVENT_LOOPS), with `quiet_abandoned_closes`."""
    if resolve(choice) == "asyncio":
        make: LoopFactory = asyncio.new_event_loop
    else:
        import uvloop  # "uvloop" without it installed: ImportError says so
        make = uvloop.new_event_loop

    def made() -> asyncio.AbstractEventLoop:
        loop = make()
        loop.set_exception_handler(quiet_abandoned_closes)
        return loop

    return made


# What asyncpg's TLS probe (its `SSLRequest`, sent first by every connection it opens
# with the default sslmode `prefer`) sets on its answer's future when the socket goes.
_PROBE_LOST = ("unexpected connection_lost() call",)


def quiet_abandoned_closes(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The loop's exception handler: what asyncpg and SQLAlchemy leave behind of a
    connection whose caller gave up on a database that hangs, at debug; the rest as
    asyncio logs it.

    - SQLAlchemy closes a broken connection in a shielded task (2 s limit); a caller
      cancelled meanwhile (a batch cut off at stop, a database that hangs) leaves that
      task to fail alone: asyncio logged "Task exception was never retrieved" with a
      traceback at error, for a connection already dropped by force.
    - asyncpg opening a connection waits for the answer to its TLS probe on a future of
      its own; cut off there by callhub's limit (a read, a ping at a server that hangs),
      the socket is closed and that future fails with nobody waiting: "Future exception
      was never retrieved" at error, for every connection tried during the outage, which
      /readyz and the 503s report already."""
    future = context.get("future")
    exc = context.get("exception")
    if (isinstance(future, asyncio.Task) and isinstance(exc, (TimeoutError, OSError))
            and getattr(future.get_coro(), "__name__", "") == "_terminate_graceful_close"):
        log.debug("db.close_abandoned", error=type(exc).__name__)
        return
    if (isinstance(future, asyncio.Future) and not isinstance(future, asyncio.Task)
            and type(exc) is ConnectionError and exc.args == _PROBE_LOST):
        log.debug("db.connect_abandoned", error="ConnectionError")
        return
    loop.default_exception_handler(context)


def run(main: Coroutine[Any, Any, T], choice: str = "auto") -> T:
    """`asyncio.run(main)` on the chosen loop."""
    with asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        return runner.run(main)


def kind(loop: asyncio.AbstractEventLoop) -> str:
    """"uvloop" or "asyncio": what `loop` is (the daemon's start line says it)."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def new_loop_like(loop: asyncio.AbstractEventLoop) -> asyncio.AbstractEventLoop:
    """A new loop of the same kind as `loop`: a thread's loop beside the daemon's runs on
    what the daemon runs on (the tests' asyncio loop, the daemon's uvloop)."""
    return loop_factory(kind(loop))()
