"""A PostgreSQL that hangs (its sockets open, no answer ever) is an outage, not a pause.

The network cut that leaves both ends waiting (a firewall dropping packets, a
frozen VM, a server stuck on its disk) sends no error. Without a limit of its
own the writer waited on its batch for ever: nothing stored, no error counted,
`/readyz` saying ready, and SIGTERM waiting for the socket to reset.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from store_fixtures import T0, DbFactory, TcpProxy, pg_url, via_proxy
from test_store_writer import WAIT, calls_named, drained, sample, stored

from callhub.config import Settings
from callhub.metrics.collectors import CallhubMetrics
from callhub.records import CallRecord
from callhub.store import migrate
from callhub.store.db import Database
from callhub.store.spool import Spool
from callhub.store.writer import CallWriter


async def left_in_the_spool_then_stored(db: Database, settings: Settings, proxy: TcpProxy,
                                        hung: list[CallRecord], before: list[CallRecord]
                                        ) -> None:
    """The calls the hung database never took wait in the spool, in order; once it
    answers again, the next writer stores them after `before`, each once."""
    assert [r.linkedid for r in Spool(settings.spool_dir).unstored()] == [
        r.linkedid for r in hung]
    proxy.thaw()
    await drained(CallWriter(db, settings))
    assert (await stored(db))[0] == [r.linkedid for r in before + hung]


async def test_a_hung_database_fails_the_batch_and_stop_leaves_the_calls_in_the_spool(
        tmp_path: Path, pg_proxy: TcpProxy, store_settings: Settings) -> None:
    factory = DbFactory("postgresql", tmp_path)
    try:
        db = await factory.create(url=via_proxy(pg_url(), pg_proxy))
        await migrate.upgrade(db)
        metrics = CallhubMetrics()
        writer = CallWriter(db, store_settings, metrics=metrics, retry_initial=0.05,
                            retry_max=0.2, batch_timeout=0.5, stop_timeout=0.5)
        await writer.start()
        before = calls_named("a", 5, T0)
        for record in before:
            writer.submit(record)
        async with asyncio.timeout(WAIT):
            await writer.wait_written()

        pg_proxy.freeze()
        hung = calls_named("h", 20, T0 + 1000)
        for record in hung:
            writer.submit(record)
        async with asyncio.timeout(WAIT):
            await writer.wait_until(lambda w: w.failed_batches >= 1)
        assert sample(metrics, "callhub_db_write_errors_total") >= 1
        state = await writer.health.state()
        assert not state.ready and state.reason is not None and "Timeout" in state.reason

        started = time.monotonic()
        async with asyncio.timeout(WAIT):
            await writer.stop()  # SIGTERM: the database still gives no answer
        took = time.monotonic() - started
        assert took < writer.stop_timeout + writer.batch_timeout + 2.0, took
        await left_in_the_spool_then_stored(db, store_settings, pg_proxy, hung, before)
    finally:
        pg_proxy.thaw()
        await factory.cleanup()


async def test_stop_cuts_a_batch_that_hangs_at_its_deadline(
        tmp_path: Path, pg_proxy: TcpProxy, store_settings: Settings) -> None:
    """SIGTERM while a batch waits on a hung database: the stop ends at `stop_timeout`
    (and a second), not at the batch's own, longer limit; the call waits in the spool."""
    factory = DbFactory("postgresql", tmp_path)
    try:
        db = await factory.create(url=via_proxy(pg_url(), pg_proxy))
        await migrate.upgrade(db)
        writer = CallWriter(db, store_settings, batch_timeout=600.0, stop_timeout=0.2)
        await writer.start()
        first = calls_named("a", 1, T0)
        writer.submit(first[0])
        async with asyncio.timeout(WAIT):
            await writer.wait_written()  # the writer keeps its connection: the next batch
        pg_proxy.freeze()                # is sent on it, and its answer never comes
        hung = calls_named("h", 3, T0 + 1000)
        for record in hung:
            writer.submit(record)
        async with asyncio.timeout(WAIT):  # logged, and the batch sent
            await writer.wait_until(lambda w: len(w.spool) == 3)

        started = time.monotonic()
        async with asyncio.timeout(WAIT):
            await writer.stop()
        took = time.monotonic() - started
        assert took < writer.stop_timeout + 3.0, took
        assert writer.written == 1
        await left_in_the_spool_then_stored(db, store_settings, pg_proxy, hung, first)
    finally:
        pg_proxy.thaw()
        await factory.cleanup()
