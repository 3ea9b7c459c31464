"""The API's reads on PostgreSQL: a pool of asyncpg connections, without SQLAlchemy's.

A list page is one or two statements, prebuilt and run straight through asyncpg
(`callhub.store.fetch`). Through SQLAlchemy's pool each page also paid for the
pool's checkout and its return (an `AsyncConnection`, a greenlet, a task of its
own to give the connection back, shielded from cancellation): 15-17 % of the
server's CPU a page at 20 clients (bench/README.md). Here a page borrows an
asyncpg connection from asyncpg's pool and gives it back as it is: the pool's
connections are in autocommit (no transaction is ever opened on them) and
hold no session state to reset, so the reset asyncpg makes by default (a
round trip per page) is skipped.

JSON values are decoded as SQLAlchemy's dialect decodes them (the same codecs,
with orjson), so a page's values are SQLAlchemy's (`tests/test_store_fetch.py`).

A read has a time limit (`run`'s `within`): a database that hangs (its socket open, no
answer ever: a frozen VM, packets dropped) sends no error, and without one every
connection of the pool stuck on a query and every page waited until the socket reset,
minutes later. A read cut off by its limit terminates its connection rather than give
it back: asyncpg would cancel the stuck query by a CancelRequest over a new connection
to the same server, with no time limit of its own (asyncpg issue #1326), and its pool
takes the connection back only once that is done.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import orjson
import structlog
from sqlalchemy.engine import URL, Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from callhub.lifecycle import cancel_and_wait

T = TypeVar("T")
log = structlog.get_logger(__name__)

# SQLAlchemy's own options in a URL's query, not asyncpg's.
_SQLALCHEMY_OPTIONS = {"prepared_statement_cache_size", "prepared_statement_name_func",
                       "async_fallback"}


@dataclass(frozen=True, slots=True)
class PgReader:
    """A connection of the read pool: asyncpg's own, and the dialect its statements are
    compiled for (`callhub.store.fetch` takes either this or an `AsyncConnection`)."""

    driver: asyncpg.Connection
    dialect: Dialect


Reader = AsyncConnection | PgReader
"""What `Database.read` gives its work: a `PgReader` on PostgreSQL, an `AsyncConnection`
on SQLite."""


class NoAnswer(TimeoutError):
    """The database gave no answer within a read's or a ping's limit: it hangs (or is
    too slow to be of use). A TimeoutError, so an OSError: an outage wherever callhub
    tells outages from the data's faults (`callhub.store.failures.unreachable`)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no answer in {seconds:g} s")
        self.seconds = seconds


@contextlib.asynccontextmanager
async def answer_within(seconds: float | None) -> AsyncIterator[None]:
    """`async with answer_within(s):` the block within `s` seconds (None: no limit), else
    `NoAnswer`. A TimeoutError of the block's own (a driver's connect timeout) passes as
    it is."""
    limit = asyncio.timeout(seconds)
    try:
        async with limit:
            yield
    except TimeoutError:
        if seconds is not None and limit.expired():
            raise NoAnswer(seconds) from None
        raise


class ReadPool:
    """`size` asyncpg connections to `url` (a SQLAlchemy URL), opened as they are first
    asked for or all at once by `open`, kept open."""

    def __init__(self, url: URL, dialect: Dialect, size: int, *, schema: str | None,
                 connect_timeout: float) -> None:
        options: dict[str, Any] = dict(dialect.create_connect_args(url)[1])
        for name in _SQLALCHEMY_OPTIONS:
            options.pop(name, None)
        if schema:
            options["server_settings"] = {"search_path": schema}
        options["timeout"] = connect_timeout
        self._options = options
        self._dialect = dialect
        self.size = size
        self._pool: asyncpg.Pool | None = None
        self._creating = asyncio.Lock()
        # Reads wait for a connection in turn. asyncpg's pool does not keep their order: a
        # connection given back goes to whoever asks next, and the read woken for it waits
        # again at the back (20 clients on 5 connections: p99 64-98 against 53-54 ms in
        # turns). asyncio's Semaphore is first come, first served.
        self._turns = asyncio.Semaphore(size)

    async def _the_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._creating:
                if self._pool is None:  # min_size 0: creating it opens no connection
                    # Connections are kept, however long idle and however many queries
                    # they ran (asyncpg's default: replaced after 50,000, every 2 minutes
                    # at 700 pages a second, each then opened and its statements prepared
                    # again).
                    self._pool = await asyncpg.create_pool(
                        min_size=0, max_size=self.size, max_inactive_connection_lifetime=0,
                        max_queries=1 << 62, init=_json_codecs, reset=_kept_as_it_is,
                        **self._options)
        return self._pool

    async def run(self, work: Callable[[PgReader], Awaitable[T]],
                  within: float | None = None) -> T:
        """`work` on a connection of the pool. Failing to connect is a `DBAPIError` (as
        from SQLAlchemy's pool; the API answers 503), not tried again at once.

        `within`: seconds for it all (the wait for a turn, a connection opened, `work`),
        else `NoAnswer`; its connection, if it had one, is terminated, and the next read
        opens a new one."""
        limit = asyncio.timeout(within)  # answer_within's, inline: 4 us less a read
        try:
            async with limit, self._turns:
                pool = await self._the_pool()
                try:
                    connection = await pool.acquire()
                except (OSError, TimeoutError, asyncpg.PostgresError,
                        asyncpg.InterfaceError) as exc:
                    raise DBAPIError("connect", None, exc) from exc
                try:
                    return await work(PgReader(connection, self._dialect))
                finally:
                    await _give_back(pool, connection, limit)
        except TimeoutError:
            if within is not None and limit.expired():
                raise NoAnswer(within) from None
            raise

    async def renew(self) -> None:
        """Drop every connection as it is next given back or asked for (the server went
        away: the others are as dead as the one found so)."""
        if self._pool is not None:
            await self._pool.expire_connections()

    async def open(self) -> tuple[int, BaseException | None]:
        """Open all `size` connections now, at once: how many are open, and why one
        could not be (None: all are). Each is taken until all are, so that none is
        taken twice; cancelled meanwhile, those taken go back all the same (a gather
        dropped them: taken for good, and `close` waited for them in vain)."""
        pool = await self._the_pool()
        taken = [asyncio.ensure_future(pool.acquire()) for _ in range(self.size)]
        try:
            await asyncio.wait(taken)
        finally:
            await cancel_and_wait(taken)  # those still opening, when this was cancelled
            opened = [t.result() for t in taken if not t.cancelled() and t.exception() is None]
            for connection in opened:
                await pool.release(connection)
        failed = [t.exception() for t in taken if not t.cancelled() and t.exception()]
        return len(opened), failed[0] if failed else None

    async def close(self, within: float = 5.0) -> None:
        """Close the connections once given back; any still out after `within` seconds
        are closed as they are."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                async with asyncio.timeout(within):
                    await pool.close()
            except TimeoutError:
                pool.terminate()


async def _give_back(pool: asyncpg.Pool, connection: asyncpg.Connection,
                     limit: asyncio.Timeout) -> None:
    """`connection` back to `pool`; terminated instead when the read's limit ran out
    first (its query may still wait on a server that hangs: asyncpg would cancel it over
    a new connection with no limit, and the release would wait for that). A read
    cancelled from outside (a stop) releases as asyncpg does, cancelling its query on a
    server that answers; if that is still waiting when the limit runs out, the
    connection is terminated then, not left to the pool's release."""
    try:
        if limit.expired():
            connection.terminate()  # the pool takes a closed connection back at once
        await pool.release(connection)
    except asyncio.CancelledError:
        if limit.expired():
            with contextlib.suppress(asyncpg.InterfaceError):  # given back meanwhile
                connection.terminate()
        raise


async def _json_codecs(connection: asyncpg.Connection) -> None:
    """json and jsonb decoded as SQLAlchemy's asyncpg dialect decodes them (its
    `setup_asyncpg_json_codec`), by orjson."""
    await connection.set_type_codec(
        "json", encoder=str.encode, decoder=orjson.loads,
        schema="pg_catalog", format="binary")
    await connection.set_type_codec(
        "jsonb", encoder=lambda text: b"\x01" + text.encode(),
        decoder=lambda raw: orjson.loads(raw[1:]), schema="pg_catalog", format="binary")


async def _kept_as_it_is(_connection: asyncpg.Connection) -> None:
    """A connection given back needs no reset: the reads open no transaction, take no
    lock, LISTEN to nothing and SET nothing."""
