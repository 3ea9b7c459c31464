"""The async engine, set up the same way for SQLite and PostgreSQL.

`Database` owns one `AsyncEngine`. SQLite gets WAL (the API reads while the
writer writes), foreign keys and a busy timeout; PostgreSQL may be pinned to
a schema (`search_path`), which tests use to isolate themselves.

On PostgreSQL, `read` runs the API's list reads on a second pool, asyncpg's own
(`callhub.store.read_pool`), in autocommit without a pre-ping: a page is then one
round trip to the server instead of six (the ping's BEGIN, `;` and ROLLBACK, then
BEGIN, the query and ROLLBACK), and round trips, not SQL, were most of a page's
cost. A read there has a time limit (`READ_TIMEOUT`): on a database that hangs it
fails (`read_pool.NoAnswer`, 503 from the API) instead of holding the pool's
connections until the socket resets.

The API's other work goes through SQLAlchemy's pool by `query` (reads that need one
transaction) and `change` (a transaction committed), under the same limit on PostgreSQL.
Each runs in a task of its own, as `ping` does, left at the limit to end alone: cut off
in the caller's task, SQLAlchemy's graceful close of the stuck connection (up to 2 s more
on a server that hangs, shielded from the cancellation) came before the answer. Left so,
the connection goes back to the pool within those 2 s, closed, and the pool opens a new
one when it is next needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from callhub.config.values import async_database_url
from callhub.store.read_pool import NoAnswer, Reader, ReadPool, answer_within

T = TypeVar("T")
log = structlog.get_logger(__name__)

READ_POOL = 4
"""Connections of the read pool (PostgreSQL). A fixed number, no overflow: a connection
opened for one request and closed after it costs more than waiting for a free one. Few:
the reads are short, one process serves at most ~700 pages a second, and more queries at
once only take the CPU the API process needs when PostgreSQL shares its host (2 cores,
20 clients: /calls p99 46-48 ms against 64-66 ms with 10, /stats 85-132 against 127-149)."""

READ_TIMEOUT = 5.0
"""Seconds a read on the read pool may take, its wait for a connection included, before
it fails (`read_pool.NoAnswer`); the same for each `query` and `change` (the API's other
work, on SQLAlchemy's pool: a call with its attempts, a page of the CSV export, a
worklist entry marked, ...). A page's reads take milliseconds (a month of /stats by
hour about 0.1 s): one with no answer in 5 s is a database that hangs (its socket open,
no answer ever), which would otherwise hold the pool's connections until the socket
resets. As the writer's `batch_timeout`, an attribute (`Database.read_timeout`), not a
setting."""

COUNT_TIMEOUT = 60.0
"""Seconds a `query` that counts calls may take (/stats by agent, or over a period the
hourly rollup cannot serve, up to 400 days), not a page's `READ_TIMEOUT`: a large site's
year of calls takes seconds to count on a healthy database (a month of 41,700 calls ~40
ms here). A database that hangs still gets its 503, a minute later. An attribute too
(`Database.count_timeout`)."""


class ChangeCutOff(NoAnswer):
    """A `change` with no answer within its limit. `commit_sent` False: cut off before its
    COMMIT went out, so nothing of it was saved (the server rolls back a transaction
    whose connection is gone). True: the COMMIT had gone out, and the server may apply
    it once it answers again (a frozen VM thawed, the packets held by the network
    delivered); nobody can tell which until it is read again."""

    def __init__(self, seconds: float, commit_sent: bool) -> None:
        super().__init__(seconds)
        self.commit_sent = commit_sent


class CommitLost(ConnectionError):
    """A `change`'s connection failed while its COMMIT was out (the server restarted,
    the network dropped): the server may have applied it before, or not. An error the
    server answered (a constraint at commit) is no such doubt: the change was not saved.
    A ConnectionError, so an outage to whoever tells outages from the data's faults."""


def _connection_lost(exc: BaseException) -> bool:
    """Whether `exc` is the connection failing, not the server answering an error."""
    return isinstance(exc, OSError) or (isinstance(exc, DBAPIError)
                                        and exc.connection_invalidated)


class _Commit:
    """Whether a `change`'s COMMIT has been sent (set by its task, read at the limit)."""

    __slots__ = ("sent",)

    def __init__(self) -> None:
        self.sent = False


class Database:
    """One database: its URL, engine and dialect name."""

    def __init__(self, engine: AsyncEngine, schema: str | None = None,
                 read_url: str | None = None, connect_timeout: float = 5.0,
                 session: dict[str, str] | None = None) -> None:
        self.engine = engine
        self.schema = schema
        self.session = session  # PostgreSQL settings of every connection
        self.connect_timeout = connect_timeout
        self.read_url = read_url  # a read replica for `read` (PostgreSQL); None: this one
        # each try of `read`, each `query` and `change`, on PostgreSQL
        self.read_timeout = READ_TIMEOUT
        self.count_timeout = COUNT_TIMEOUT  # a `query` that counts calls
        self._reads: ReadPool | None = None

    @classmethod
    def connect(cls, url: str, *, schema: str | None = None, busy_timeout: float = 5.0,
                pre_ping: bool = True, session: dict[str, str] | None = None,
                read_url: str | None = None, **engine_args: Any) -> Database:
        """Create the engine (no connection is opened until first use). `pre_ping=False`
        saves a round trip per checkout for a caller that handles a dead connection;
        `session` sets PostgreSQL settings on every connection (e.g. synchronous_commit);
        `read_url`: a read replica of this PostgreSQL database that `read` reads from."""
        url = _async_url(url)
        read_url = None if read_url is None else _async_url(read_url)
        parsed = make_url(url)
        connect_args: dict[str, Any] = {}
        if parsed.get_backend_name() == "sqlite":
            connect_args["timeout"] = busy_timeout
            _create_private(parsed.database)
        elif parsed.get_backend_name() == "postgresql":
            connect_args["timeout"] = busy_timeout  # connect timeout (asyncpg)
            server_settings = dict(session or {})
            if schema:
                server_settings["search_path"] = schema
            if server_settings:
                connect_args["server_settings"] = server_settings
        engine = create_async_engine(url, connect_args=connect_args, pool_pre_ping=pre_ping,
                                     **engine_args)
        if parsed.get_backend_name() == "sqlite":
            sa.event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        if read_url is not None and (
                parsed.get_backend_name() != "postgresql"
                or make_url(read_url).get_backend_name() != "postgresql"):
            raise ValueError("read_database_url: a read replica needs database_url and "
                             "read_database_url both on PostgreSQL")
        return cls(engine, schema, read_url, busy_timeout, session)

    def connect_again(self, url: str | None = None, **options: Any) -> Database:
        """Another engine, with a pool of its own, on the same database, schema and session
        settings (or on `url`, a replica of it)."""
        options.setdefault("session", self.session)
        return Database.connect(url or self.engine.url.render_as_string(hide_password=False),
                                schema=self.schema, **options)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @property
    def url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def begin(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """`async with db.begin() as conn`: one transaction."""
        return self.engine.begin()

    def connection(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """`async with db.connection() as conn`: reads (autobegin, rolled back on exit)."""
        return self.engine.connect()

    async def read(self, work: Callable[[Reader], Awaitable[T]]) -> T:
        """`work(conn)` for reads that need no transaction: each statement sees its own
        snapshot, so what must be consistent goes in one statement. `work` reads through
        `callhub.store.fetch`, which takes either kind of connection.

        On PostgreSQL the connection is a `PgReader` from a pool of its own
        (`callhub.store.read_pool`) in autocommit with no pre-ping, so a statement is one
        round trip (JSON columns parsed by orjson: the same values, faster). A pooled
        connection found dead (the server restarted) is dropped, with the pool's others,
        and `work` runs once more on a new one, as the ping would have done; a second
        failure is the caller's (503). A try with no answer in `read_timeout` seconds
        raises `read_pool.NoAnswer` (503 too), not tried again: the database hangs, and its
        connection is dropped. With `read_url` the pool is on that read replica: what was
        just written may show a moment later (the replica's lag). SQLite: an
        `AsyncConnection` of the one engine, which answers within its busy timeout.
        """
        if self.dialect != "postgresql":
            async with self.engine.connect() as conn:
                return await work(conn)
        reads = self._read_pool()
        for attempt in (1, 2):
            try:
                return await reads.run(work, self.read_timeout)
            except DBAPIError as exc:
                if attempt == 2 or not exc.connection_invalidated:
                    raise
                await reads.renew()  # the server went away: the others are as dead
        raise AssertionError("unreachable")

    async def query(self, work: Callable[[AsyncConnection], Awaitable[T]],
                    counting: bool = False) -> T:
        """`work(conn)` on a connection of SQLAlchemy's pool, in a transaction rolled back
        after it: for reads the read pool does not serve (one call with its attempts, the
        follow-up and SMS lists, a page of the CSV export, /stats counted from the calls
        with its own sort memory). On PostgreSQL within `read_timeout` seconds, its wait for
        a connection and SQLAlchemy's pre-ping included, else `read_pool.NoAnswer`; `work`
        is then left in its task to end alone (see the module's docstring), so it must
        not touch what its caller goes on with. `counting`: work that counts calls,
        long on a healthy database, within `count_timeout` instead. SQLite: in the
        caller's task, which its busy timeout bounds."""
        if self.dialect != "postgresql":
            async with self.engine.connect() as conn:
                return await work(conn)
        return await _alone(self._connected(work, None),
                            self.count_timeout if counting else self.read_timeout)

    async def change(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """`work(conn)` in one transaction, committed when it returns (rolled back if it
        raises): the API's writes. On PostgreSQL within `read_timeout` seconds, the
        COMMIT's answer included, else `ChangeCutOff`, which says whether the COMMIT had
        gone out (then the change may yet be applied); `work` is left to end alone, as
        `query`'s."""
        if self.dialect != "postgresql":
            async with self.engine.begin() as conn:
                return await work(conn)
        commit = _Commit()
        try:
            return await _alone(self._connected(work, commit), self.read_timeout)
        except NoAnswer as exc:
            raise ChangeCutOff(exc.seconds, commit.sent) from None

    async def _connected(self, work: Callable[[AsyncConnection], Awaitable[T]],
                         commit: _Commit | None) -> T:
        """`work` on a connection of the engine; committed after it with `commit` (which
        records that the COMMIT is being sent), else rolled back. Cut off (cancelled),
        its connection is dropped, not given back (`_drop`)."""
        async with self.engine.connect() as conn:
            try:
                result = await work(conn)
                if commit is not None:
                    commit.sent = True
                    await conn.commit()
            except asyncio.CancelledError:
                await _drop(conn)
                raise
            except (DBAPIError, OSError) as exc:
                if commit is not None and commit.sent and _connection_lost(exc):
                    raise CommitLost() from exc
                raise
            return result

    def _read_pool(self) -> ReadPool:
        if self._reads is None:
            url = make_url(self.read_url) if self.read_url else self.engine.url
            self._reads = ReadPool(url, self.engine.dialect, READ_POOL, schema=self.schema,
                                   connect_timeout=self.connect_timeout)
        return self._reads

    async def open_reads(self) -> None:
        """Open the read pool's connections now (PostgreSQL): the first burst of requests
        after a start would otherwise wait for them. A database not reachable yet is left
        for later; the reason is logged (`db.pool_not_opened`). One that hangs holds the
        start no longer than `connect_timeout`: asyncpg's connect timeout covers the whole
        handshake, and the pool's set-up of a new connection asks the server nothing (the
        json and jsonb codecs are pg_catalog's, known to asyncpg without a query)."""
        if self.dialect != "postgresql":
            return
        opened, failure = await self._read_pool().open()
        if failure is not None:
            log.warning("db.pool_not_opened", pool="read", opened=opened,
                        error=type(failure).__name__)

    async def ping(self, within: float | None = None) -> None:
        """Raise unless the database answers a trivial query; within `within` seconds,
        else `read_pool.NoAnswer` ("no answer in 2 s"): a database that hangs sends no
        error, and the ping would wait until the socket resets.

        The query runs in a task of its own, left at the limit to end alone: cut off,
        SQLAlchemy closes its connection gracefully (up to 2 s more on a server that
        hangs) before the cancellation returns, which made a ping "within 2 s" take 4."""
        if within is None:
            return await self._ping()
        await _alone(self._ping(), within)

    async def _ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def drop_idle(self, within: float = 1.0) -> None:
        """End the pool's idle connections after a failure, so that none is handed out
        dead. Each is closed (its session on the server ends) unless the server takes
        longer than `within` seconds for them all; then they are dropped unclosed (a
        server that is gone has no session to end). Dropped unclosed always, a database
        that answered but refused kept a session open per retry until the garbage
        collector happened to find its connection."""
        try:
            async with asyncio.timeout(within):
                await self.engine.dispose()
        except TimeoutError:
            await self.engine.dispose(close=False)

    async def close(self) -> None:
        if self._reads is not None:
            await self._reads.close()
            self._reads = None
        await self.engine.dispose()


async def driver_connection(conn: AsyncConnection) -> Any:
    """The asyncpg connection under `conn` (PostgreSQL), for what SQLAlchemy's execution
    would slow down or cannot do (COPY, a statement run thousands of times)."""
    driver = (await conn.get_raw_connection()).driver_connection
    assert driver is not None
    return driver


async def _alone(step: Coroutine[Any, Any, T], within: float) -> T:
    """`step`'s result within `within` seconds, else `NoAnswer`. It runs in a task of its
    own, cancelled and left to end alone when the caller stops waiting (the limit, or the
    caller cancelled): SQLAlchemy closes a connection cut off in a query gracefully, up to
    2 s more on a server that hangs and shielded from the cancellation, and the caller
    would wait for that."""
    task = asyncio.ensure_future(step)
    task.add_done_callback(_retrieved)
    try:
        async with answer_within(within):
            return await asyncio.shield(task)
    except BaseException:  # no answer in time, or this caller cancelled
        task.cancel()
        raise


async def _drop(conn: AsyncConnection) -> None:
    """Terminate the driver's connection under `conn` and invalidate it, after its work was
    cut off. A statement run straight through asyncpg (`callhub.store.fetch`) is not
    SQLAlchemy's: cancelled, it left the connection busy with a query on the hung server
    and a cancel request on its way there, and SQLAlchemy gave it back to its pool as it
    was. Terminated, the query is dropped unsent or unanswered, no cancel request goes
    out, and SQLAlchemy's own close of the connection (graceful, 2 s on a server that
    hangs) ends at once. One that SQLAlchemy already invalidated is left to it."""
    with contextlib.suppress(Exception):
        driver = (await conn.get_raw_connection()).driver_connection
        if driver is not None:
            driver.terminate()
        await conn.invalidate()


def _retrieved(task: asyncio.Future[Any]) -> None:
    """A step left to end alone: its failure is the caller's NoAnswer, not asyncio's
    "exception was never retrieved"."""
    if not task.cancelled():
        task.exception()


def _create_private(path: str | None) -> None:
    """Create a SQLite file readable by its owner only (it holds personal data); SQLite
    gives its -wal and -shm files the same mode. An existing file is left as it is."""
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    # There already, or a bad path that SQLite reports when it connects.
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()



async def settle_sqlite_workers(within: float = 2.0) -> None:
    """Wait for aiosqlite's worker threads to finish (up to `within` seconds each).

    A failed SQLite connect (a missing directory) leaves its worker thread posting
    the failure back to the loop; if `asyncio.run` closes the loop first, the thread
    dies with "Event loop is closed" on stderr. One-shot commands call this before
    their loop ends, after disposing of the engine.
    """
    workers = [t for t in threading.enumerate()
               if t.name.endswith("(_connection_worker_thread)")]
    if workers:
        await asyncio.to_thread(_join_all, workers, within)


def _join_all(threads: list[threading.Thread], timeout: float) -> None:
    for thread in threads:
        thread.join(timeout)


def _async_url(url: str) -> str:
    """The URL on callhub's async driver (`postgresql://...` as libpq writes it, too); an
    ArgumentError naming what is taken for any other (printed as one line by `run_db`)."""
    try:
        return async_database_url(url)
    except ValueError as exc:
        raise ArgumentError(str(exc)) from None
