"""The writer's statements run on a loop of their own (callhub.store.db_loop)."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading

import pytest
import sqlalchemy as sa
import structlog
from store_fixtures import TcpProxy, make_call, pg_url, via_proxy

from callhub.config import Settings
from callhub.store.db import Database
from callhub.store.db_loop import DbLoop
from callhub.store.writer import CallWriter


async def test_run_answers_from_the_thread_raises_its_errors_and_close_ends_it() -> None:
    loop = DbLoop("test-db-loop")

    async def where() -> int:
        await asyncio.sleep(0)
        return threading.get_ident()

    async def fails() -> None:
        raise ValueError("from there")

    there = await loop.run(where())
    assert there != threading.get_ident()
    with pytest.raises(ValueError, match="from there"):
        await loop.run(fails())
    thread = next(t for t in threading.enumerate() if t.name == "test-db-loop")
    await loop.close()
    assert not thread.is_alive() and not loop.running


async def test_a_loop_whose_thread_ended_is_started_again() -> None:
    loop = DbLoop("test-db-loop-again")

    async def which() -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    old = await loop.run(which())
    # Found before it is stopped: once stopped, it may end before it is looked for.
    thread = next(t for t in threading.enumerate() if t.name == "test-db-loop-again")
    old.call_soon_threadsafe(old.stop)  # the thread's run_forever returns: the thread ends
    await asyncio.to_thread(thread.join, 10)
    assert not thread.is_alive()
    async with asyncio.timeout(10):  # sent to the stopped loop, it would never answer
        new = await loop.run(which())
    assert new is not old and new.is_running()
    await loop.close()


async def test_cancelling_the_waiter_cancels_the_coroutine_there() -> None:
    loop = DbLoop("test-db-loop-cancel")
    started, cancelled = threading.Event(), threading.Event()

    async def forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    waiter = asyncio.ensure_future(loop.run(forever()))
    await asyncio.to_thread(started.wait, 10)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert await asyncio.to_thread(cancelled.wait, 10)
    await loop.close()


async def test_close_cancels_what_still_runs_there_and_ends_the_thread() -> None:
    loop = DbLoop("test-db-loop-close")
    started = threading.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    waiter = asyncio.ensure_future(loop.run(forever()))
    await asyncio.to_thread(started.wait, 10)
    thread = next(t for t in threading.enumerate() if t.name == "test-db-loop-close")
    await loop.close()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(10):  # a coroutine left pending there would never end
            await waiter
    assert not thread.is_alive() and not loop.running


async def test_the_writers_statements_run_off_the_callers_thread(
        any_db: Database, store_settings: Settings) -> None:
    threads: set[int] = set()
    writer = CallWriter(any_db, store_settings)
    sa.event.listen(writer.writes.engine.sync_engine, "before_cursor_execute",
                    lambda *_a: threads.add(threading.get_ident()))
    await writer.start()
    for n in range(3):
        writer.submit(make_call(f"w-{n}"))
    async with asyncio.timeout(30):
        await writer.wait_written()
    await writer.stop()
    assert writer.written == 3
    assert threads and threading.get_ident() not in threads
    assert not any(t.name == "callhub-writer-db" for t in threading.enumerate())


async def test_a_graceful_close_left_behind_on_a_hung_database_is_not_an_error(
        pg_proxy: TcpProxy, caplog: pytest.LogCaptureFixture) -> None:
    """SQLAlchemy closes an invalidated asyncpg connection in a shielded task; when its
    caller is cancelled (a batch cut off at stop), the task fails alone 2 s later on a
    database that hangs. asyncio logged that as "Task exception was never retrieved", an
    error with a traceback; callhub's loops log it at debug."""
    loop = DbLoop("test-db-loop-close")
    db = Database.connect(via_proxy(pg_url(), pg_proxy))

    async def abandon_a_close() -> None:
        async with db.engine.connect() as conn:
            adapter = (await conn.get_raw_connection()).dbapi_connection
            pg_proxy.freeze()
            close = asyncio.ensure_future(adapter._terminate_graceful_close())  # type: ignore[union-attr]
            await asyncio.wait({close})  # ended, its exception not retrieved
            del close
            gc.collect()  # asyncio reports an unretrieved exception when the task goes
            await conn.invalidate()

    try:
        with structlog.testing.capture_logs() as logs, caplog.at_level(logging.ERROR):
            await loop.run(abandon_a_close())
    finally:
        pg_proxy.thaw()
        await loop.close()
        await db.close()
    assert [e["error"] for e in logs if e["event"] == "db.close_abandoned"] == ["TimeoutError"]
    assert not [r for r in caplog.records if r.name == "asyncio"]


async def test_a_connect_probe_left_failed_on_a_hung_database_is_not_an_error(
        caplog: pytest.LogCaptureFixture) -> None:
    """asyncpg opening a connection first waits for the answer to its TLS probe on a
    future of its own; when the socket goes with that future still pending, asyncpg fails
    it with "unexpected connection_lost() call", and with nobody waiting asyncio logged
    "Future exception was never retrieved" at error (seen in CI, in the API's tests of a
    database that hangs, a few times a run). callhub's loops log it at debug; a future
    failed with any other ConnectionError is still asyncio's error."""
    loop = DbLoop("test-db-loop-probe")

    async def leave_failed(message: str) -> None:
        probe = asyncio.get_running_loop().create_future()
        probe.set_exception(ConnectionError(message))
        del probe
        gc.collect()  # asyncio reports an unretrieved exception when the future goes

    try:
        with structlog.testing.capture_logs() as logs, caplog.at_level(logging.ERROR):
            await loop.run(leave_failed("unexpected connection_lost() call"))
        assert [e["error"] for e in logs if e["event"] == "db.connect_abandoned"] == [
            "ConnectionError"]
        assert not [r for r in caplog.records if r.name == "asyncio"]
        with caplog.at_level(logging.ERROR):
            await loop.run(leave_failed("reset by peer"))
        [reported] = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
        assert reported.startswith("Future exception was never retrieved")
        assert "reset by peer" in reported
    finally:
        await loop.close()
