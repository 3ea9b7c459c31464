"""One supervisor for every background task, and every part's health for /readyz.

Why one: background work used to start four ways, and a task that raised
(an OSError from the spool inside the writer) went unnoticed until
shutdown. Here every task is started by `Supervisor.spawn` (or the
`Supervisor.task` block) with a declared `Policy`:

- `RESTART`: log `lifecycle.task_failed` with the exception, mark the part
  down with the reason, wait a capped exponential backoff (reset once the
  task had run for `backoff_max`), start it again;
- `STOP`: log it, mark the part down and set `failed`: the daemon stops and
  exits non-zero.

Every task belongs to a part (`Health`, by name). A part without a task
(the database) reports through a check; a task reports finer health itself
(`health.up()` / `health.down(reason)`, e.g. the writer while batches fail).
`states()` is what /readyz shows. This module sits at the bottom of the
layers (asyncio and structlog only), so ami, store, routing and desk can
all be handed one.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import random
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import structlog

log = structlog.get_logger(__name__)

Check = Callable[[], Awaitable[str | None]]
"""A part's readiness probe: None when ready, else the reason (raising counts as a reason)."""

CHECK_TIMEOUT = 5.0


class Policy(StrEnum):
    """What happens when a task raises."""

    RESTART = "restart"
    STOP = "stop"


class PartDown(Exception):
    """An expected failure: the message is the reason /readyz shows (logged without traceback)."""


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Delay before retry number `attempt` (0-based): equal-jitter capped exponential.

    The exponential step d = min(cap, base * 2**attempt); the delay is drawn
    from [d/2, d], so it never shrinks from one retry to the next, never
    exceeds the cap, and restarting tasks do not retry in lock-step.
    """
    step = min(cap, base * (2.0 ** min(attempt, 62)))
    return step / 2 + rng.uniform(0, step / 2)


def describe(exc: BaseException) -> str:
    """`Type: first line of the message` (a PartDown is its message alone)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    if isinstance(exc, PartDown):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(frozen=True, slots=True)
class PartState:
    """One part as /readyz shows it."""

    name: str
    ready: bool
    required: bool
    reason: str | None
    detail: str | None = None


class Health:
    """One part's readiness: set by its task (or the supervisor), plus an optional check."""

    def __init__(self, name: str, *, required: bool = True, check: Check | None = None) -> None:
        self.name = name
        self.required = required
        self.check = check
        self.ready = False
        self.reason: str | None = "starting"
        self.detail: str | None = None  # shown whatever the state (e.g. a pair's role)
        self._settled = asyncio.Event()
        self._changed = asyncio.Event()

    def up(self) -> None:
        self.ready, self.reason = True, None
        self._settled.set()
        self._changed.set()

    def down(self, reason: str) -> None:
        self.ready, self.reason = False, reason
        self._settled.set()
        self._changed.set()

    async def wait_settled(self) -> None:
        """Until the part was first marked up or down (wrap in a timeout)."""
        await self._settled.wait()

    async def wait_ready(self, ready: bool = True) -> None:
        """Until the part is marked ready (or, with `ready=False`, down); wrap in a timeout."""
        while self.ready is not ready:
            self._changed.clear()
            await self._changed.wait()

    async def state(self, timeout: float = CHECK_TIMEOUT) -> PartState:  # noqa: ASYNC109
        reason = None if self.ready else (self.reason or "not ready")
        if reason is None and self.check is not None:
            try:
                async with asyncio.timeout(timeout):
                    reason = await self.check()
            except Exception as exc:  # a failing probe is a reason, never an error page
                reason = describe(exc)
        return PartState(self.name, reason is None, self.required, reason, self.detail)


class Retries:
    """A part that retries on a timer through an outage (a session every second, a tick
    every few). Its failure is to be warned of once, and again only when the error
    changes, not at every try; its end said with the tries it took. Its reason counts
    them. The caller logs (event names stay literals at the call)."""

    def __init__(self, health: Health | None = None) -> None:
        self.health = health  # None: a task whose readiness is told another way
        self.tries = 0
        self._last_error = ""

    def failed(self, error: str, reason: str = "") -> bool:
        """One more failed try (`error`: what tells one failure from another, such as the
        exception's type name); True if it is news to warn of, False if only a repeat (log
        it at debug)."""
        self.tries += 1
        if self.health is not None:
            self.health.down(f"{reason}; {self.tries} tries")
        news, self._last_error = error != self._last_error, error
        return news

    def succeeded(self) -> int:
        """The part works again: how many tries failed before (0: none, nothing to say)."""
        if self.health is not None and not self.health.ready:
            self.health.up()
        tries, self.tries, self._last_error = self.tries, 0, ""
        return tries


class Task:
    """One supervised task: its part's health, its policy, and how often it failed."""

    def __init__(self, supervisor: Supervisor, health: Health,
                 run: Callable[[], Awaitable[object]], policy: Policy,
                 ready_on_start: bool) -> None:
        self.name = health.name
        self.health = health
        self.policy = policy
        self.failures = 0
        self.restarts = 0
        self.last_error: BaseException | None = None
        self._supervisor = supervisor
        self._run = run
        self._ready_on_start = ready_on_start
        self._final = False
        self._failed = asyncio.Event()
        self._finishing = asyncio.Event()
        self._task = asyncio.create_task(self._supervise(), name=health.name)

    @property
    def done(self) -> bool:
        return self._task.done()

    def finish(self) -> None:
        """No more restarts: the next time the task ends (returns or raises) it stays ended.

        A task waiting to be restarted is started at once, for one last run.
        """
        self._final = True
        self._finishing.set()

    async def wait(self) -> None:
        """Until the task has ended for good (it returned, or died under STOP or `finish`)."""
        await asyncio.wait({self._task})

    async def wait_failures(self, count: int) -> None:
        """Until the task has failed `count` times in total (tests; wrap in a timeout)."""
        while self.failures < count:
            self._failed.clear()
            await self._failed.wait()

    async def stop(self) -> None:
        """Cancel the task and wait for it to end."""
        self._final = True
        self._task.cancel()
        # Not `suppress(CancelledError)` around `await self._task`: that also swallowed a
        # cancellation of this caller, which then went on as if the task had ended.
        await asyncio.wait({self._task})
        self.health.down("stopped")
        self._supervisor._forget(self)

    async def _supervise(self) -> None:
        sup = self._supervisor
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            started = loop.time()
            if self._ready_on_start:
                self.health.up()
            try:
                await self._run()
            except Exception as exc:
                self._failed_with(exc)
                if self.policy is Policy.STOP or self._final:
                    if self.policy is Policy.STOP:
                        sup._fail(self, exc)
                    return
                if loop.time() - started >= sup.backoff_max:
                    attempt = 0  # it ran a good while: a fresh failure, not a crash loop
                delay = backoff_delay(attempt, sup.backoff_base, sup.backoff_max, sup.rng)
                attempt += 1
                log.info("lifecycle.task_restarting", task=self.name, retry_in=round(delay, 3),
                         failures=self.failures)
                await wait_set(self._finishing, delay)
                self.restarts += 1
                continue
            if not self._final:
                log.info("lifecycle.task_ended", task=self.name)
            self.health.down("stopped")
            return

    def _failed_with(self, exc: Exception) -> None:
        self.failures += 1
        self.last_error = exc
        reason = describe(exc)
        self.health.down(reason)
        self._failed.set()
        log.error("lifecycle.task_failed", task=self.name, policy=str(self.policy),
                  error=reason, failures=self.failures,
                  exc_info=None if isinstance(exc, PartDown) else exc)


class Supervisor:
    """Owns every background task of one process and every part's health.

    TaskGroup-like: `aclose()` cancels whatever is still running. Unlike a
    TaskGroup, one task's failure does not cancel the others; its policy says
    what happens.
    """

    def __init__(self, *, backoff_base: float = 0.5, backoff_max: float = 30.0,
                 rng: random.Random | None = None) -> None:
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.rng = rng or random.Random()
        self.parts: dict[str, Health] = {}
        self.tasks: dict[str, Task] = {}
        self.failed = asyncio.Event()
        self.failure: tuple[str, BaseException] | None = None

    def part(self, name: str, *, required: bool = True, check: Check | None = None,
             ready: bool = False) -> Health:
        """Register (or return) the part `name`; `ready=True` for a check-only part."""
        health = self.parts.get(name)
        if health is None:
            health = self.parts[name] = Health(name, required=required, check=check)
            if ready:
                health.up()
        return health

    def spawn(self, name: str, run: Callable[[], Awaitable[object]], *,
              policy: Policy = Policy.RESTART, required: bool = True,
              check: Check | None = None, ready_on_start: bool = True) -> Task:
        """Start `run()` as the task of part `name` under `policy`.

        `ready_on_start=False` leaves the part "starting" until the task calls
        `health.up()` itself (e.g. once it listens).
        """
        if name in self.tasks and not self.tasks[name].done:
            raise RuntimeError(f"task {name!r} is already running")
        health = self.part(name, required=required, check=check)
        task = Task(self, health, run, policy, ready_on_start)
        self.tasks[name] = task
        return task

    @asynccontextmanager
    async def task(self, name: str, run: Callable[[], Awaitable[object]], *,
                   policy: Policy = Policy.RESTART, required: bool = True,
                   check: Check | None = None,
                   ready_on_start: bool = True) -> AsyncIterator[Task]:
        """`spawn` for the life of the block; stopped (cancelled) on the way out."""
        task = self.spawn(name, run, policy=policy, required=required, check=check,
                          ready_on_start=ready_on_start)
        try:
            yield task
        finally:
            await task.stop()

    async def states(self, timeout: float = CHECK_TIMEOUT) -> list[PartState]:  # noqa: ASYNC109
        """Every part, in registration order (checks run concurrently)."""
        return list(await asyncio.gather(*(h.state(timeout) for h in self.parts.values())))

    async def aclose(self) -> None:
        """Stop every task still running (the last in first)."""
        for task in reversed(list(self.tasks.values())):
            await task.stop()

    def _forget(self, task: Task) -> None:
        if self.tasks.get(task.name) is task:
            del self.tasks[task.name]

    def _fail(self, task: Task, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = (task.name, exc)
        self.failed.set()


async def wait_set(event: asyncio.Event, seconds: float) -> None:
    """Until `event` is set or `seconds` have passed, whichever comes first.

    With `asyncio.timeout`, not `wait_for`: on Python 3.11 wait_for returns the wait's
    result and drops a cancellation that arrives as the event is set (CPython
    gh-86296), and a task woken as the daemon stopped ran on while the stop waited for
    it for ever."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()


async def wait_first(*waits: Awaitable[Any], seconds: float | None = None) -> None:
    """Until the first of `waits` ends (or `seconds` have passed); the others are
    cancelled. For a task that waits on one of several events, such as its work and
    the stop."""
    futures = {asyncio.ensure_future(wait) for wait in waits}
    try:
        await asyncio.wait(futures, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future in futures:
            future.cancel()


async def cancel_and_wait(tasks: Collection[asyncio.Task[Any]]) -> None:
    """Cancel `tasks` and wait until each has ended (whatever it raised): nothing of
    theirs still runs once this returns."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _hangup() -> None:
    log.warning("daemon.sighup_ignored",
                hint="callhub does not reload its configuration on SIGHUP (the rota file is "
                     "read again when it changes): restart it to apply a new configuration")


@contextmanager
def stopped_by_signals(stop: asyncio.Event) -> Iterator[None]:
    """While inside, SIGTERM and SIGINT set `stop` (on the running loop, where it can
    take signal handlers). Handled so, not left to KeyboardInterrupt: a process started
    in the background by a script inherits SIGINT ignored, and a service manager sends
    SIGTERM. SIGHUP, which killed the process on the spot (an admin's habit of
    `kill -HUP` to reload, a closed terminal), is logged and changes nothing."""
    loop = asyncio.get_running_loop()
    handlers: list[tuple[signal.Signals, Callable[[], None]]] = [
        *((sig, stop.set) for sig in STOP_SIGNALS), (signal.SIGHUP, _hangup)]
    for sig, handler in handlers:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, handler)
    try:
        yield
    finally:
        for sig, _ in handlers:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)


YOUNG_COLLECTION_EVERY = 10_000
"""Allocations between two young-generation collections (Python's default: 700)."""


def settle_heap() -> None:
    """Once a server process has built what it keeps (settings, app, engines, metadata):
    put those objects out of the cyclic collector's way and collect the young less often.

    The collector's full collections walked every object the process holds (SQLAlchemy's
    and pydantic's structures among them), ~65 ms each with the event loop stopped: ten
    of them in 8,000 API list requests, and every request in flight waited, which was
    most of the lists' p99. Young collections ran every 700 allocations, ~1,300 times for
    the same requests (~0.5 ms each). After this: about 40 young collections, no full one
    (bench/api.py). Only for a process's own entry point (the daemon's command, an API
    worker, the bench's server): it changes the whole interpreter. It also keeps the C
    heap's top (`keep_heap_top`).
    """
    gc.collect()
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, middle, old)
    keep_heap_top()


HEAP_TOP_PAD = 4 * 1024 * 1024
"""Bytes of free memory glibc keeps at the top of the heap instead of giving it back."""
_M_TOP_PAD = -2  # glibc's malloc.h


def keep_heap_top() -> bool:
    """Have glibc keep `HEAP_TOP_PAD` free bytes at the top of its heap (`mallopt`);
    False where the C library has no such setting (not glibc).

    By default it gives back what is free at the top past 128 KiB, and takes it
    again at the next allocation, page by page: every read from a socket (tens of
    kilobytes) and the objects made from it paid page faults, 2.5 us each on a VM.
    Ingesting 300,000 AMI events took 84,000 of them, ~15 % of its time; with the
    top kept, 640 (bench/README.md). The process keeps up to 4 MiB more."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # TypeError: Windows opens no process
        return False
    return bool(mallopt(_M_TOP_PAD, HEAP_TOP_PAD))
