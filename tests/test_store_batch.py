"""A batch written at once leaves the database exactly as writing its calls one by one.

`save_calls` decides a whole batch's worklist changes in memory and writes
them with a handful of statements. The oracle here is the straightforward
per-call algorithm it replaced (an upsert, attempts, agent and worklist
statements for each call in turn, as DESIGN.md words the rules). Seeded
random histories — the same few numbers, lines and linkedids again and
again, misses, abandons, answers and callbacks in and out of order, calls
written twice within one batch and across batches, agents with and without
a name — are written both ways, each in the same batches, and the stored
calls, attempts, agents and worklist (entries, their calls, who handled
them, how and when) and the times to callback must be the same.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection
from store_fixtures import T0, DbFactory, make_call

from callhub.config import Settings
from callhub.records import CallRecord
from callhub.store import bulk, migrate
from callhub.store.db import Database, driver_connection
from callhub.store.save import call_row, insert, save_calls
from callhub.store.tables import agents, attempts, calls, utc, worklist_calls, worklist_entries
from callhub.store.worklist import is_reach, is_worklist_miss
from callhub.store.writer import CallWriter

# -- the oracle: one call at a time ------------------------------------------------------------


async def oracle_save(conn: AsyncConnection, records: list[CallRecord],
                      settings: Settings) -> list[float]:
    now = datetime.now(UTC)
    seconds: list[float] = []
    for record in records:
        row = call_row(record, now)
        stmt = insert(conn, calls).values(**row)
        stmt = stmt.on_conflict_do_update(
            index_elements=["pbx", "linkedid"],
            set_={k: stmt.excluded[k] for k in row if k not in ("pbx", "linkedid")},
        ).returning(calls.c.id)
        call_id: int = (await conn.execute(stmt)).scalar_one()
        await conn.execute(sa.delete(attempts).where(attempts.c.call_id == call_id))
        for seq, a in enumerate(record.attempts, start=1):
            await conn.execute(sa.insert(attempts).values(
                call_id=call_id, seq=seq, interface=a.interface, agent_name=a.agent_name,
                offered_at=utc(a.offered_at), ring_started_at=utc(a.ring_started_at),
                ended_at=utc(a.ended_at), result=a.result, ring_seconds=a.ring_seconds))
        if record.agent:
            agent = insert(conn, agents).values(pbx=record.pbx, interface=record.agent,
                                                name=record.agent_name, updated_at=now)
            set_: dict[str, Any] = {"updated_at": agent.excluded.updated_at}
            if record.agent_name is not None:
                set_["name"] = agent.excluded.name
            await conn.execute(agent.on_conflict_do_update(
                index_elements=["pbx", "interface"], set_=set_))
        if is_worklist_miss(record, settings):
            seconds += await _oracle_miss(conn, call_id, record)
        elif is_reach(record):
            seconds += await _oracle_reach(conn, call_id, record)
    return seconds


async def _oracle_miss(conn: AsyncConnection, call_id: int, record: CallRecord) -> list[float]:
    t = worklist_entries
    if await conn.scalar(sa.select(worklist_calls.c.entry_id)
                         .where(worklist_calls.c.call_id == call_id)) is not None:
        return []
    number, line, missed_at = record.external_number or "", record.line or "", \
        utc(record.arrived_at)
    assert missed_at is not None
    entry = (await conn.execute(sa.select(t.c.id, t.c.first_missed_at, t.c.last_missed_at)
                                .where(t.c.number == number, t.c.line == line,
                                       t.c.status == "pending"))).first()
    if entry is None:
        entry_id: int = (await conn.execute(sa.insert(t).values(
            pbx=record.pbx, number=number, line=line, status="pending",
            first_missed_at=missed_at, last_missed_at=missed_at, call_count=1,
            updated_at=missed_at).returning(t.c.id))).scalar_one()
        last = missed_at
    else:
        entry_id, last = entry.id, max(entry.last_missed_at, missed_at)
        await conn.execute(sa.update(t).where(t.c.id == entry_id).values(
            first_missed_at=min(entry.first_missed_at, missed_at), last_missed_at=last,
            call_count=t.c.call_count + 1))
    await conn.execute(sa.insert(worklist_calls).values(entry_id=entry_id, call_id=call_id))
    answer = (await conn.execute(
        sa.select(calls.c.id, calls.c.direction, calls.c.answered_at, calls.c.agent,
                  calls.c.agent_name)
        .where(calls.c.external_number == number, calls.c.outcome == "answered",
               calls.c.direction.in_(("inbound", "outbound")), calls.c.answered_at >= last)
        .order_by(calls.c.answered_at, calls.c.id).limit(1))).first()
    return [] if answer is None else await _oracle_handle(conn, [entry_id], answer._mapping)


async def _oracle_reach(conn: AsyncConnection, call_id: int, record: CallRecord) -> list[float]:
    t = worklist_entries
    answered_at = utc(record.answered_at if record.answered_at is not None
                      else record.arrived_at)
    ids = list((await conn.scalars(sa.select(t.c.id).where(
        t.c.number == record.external_number, t.c.status == "pending",
        t.c.last_missed_at <= answered_at))).all())
    if not ids:
        return []
    return await _oracle_handle(conn, ids, {
        "id": call_id, "direction": record.direction, "answered_at": answered_at,
        "agent": record.agent, "agent_name": record.agent_name})


async def _oracle_handle(conn: AsyncConnection, ids: list[int], call: Any) -> list[float]:
    t = worklist_entries
    seconds = []
    for row in (await conn.execute(sa.select(t.c.id, t.c.first_missed_at)
                                   .where(t.c.id.in_(ids)))).all():
        took = max((call["answered_at"] - row.first_missed_at).total_seconds(), 0.0)
        seconds.append(took)
        await conn.execute(sa.update(t).where(t.c.id == row.id).values(
            status="handled", how="callback" if call["direction"] == "outbound"
            else "called_again", handled_at=call["answered_at"],
            handled_by=call["agent_name"] or call["agent"], handled_call_id=call["id"],
            time_to_callback_seconds=took))
    return seconds


# -- random histories --------------------------------------------------------------------------

NUMBERS = ("+8613800000001", "+8613800000002", "+4930123456")
LINES = ("4008001000", "4008002000", None)


def random_call(rng: random.Random, n: int) -> CallRecord:
    """One call of a small world: 8 linkedids, 3 numbers, 3 lines, a 10-minute grid."""
    at = T0 + 30 * rng.randrange(20)
    kind = rng.choice(["answered", "answered", "missed", "abandoned", "short", "outbound",
                       "outbound_unanswered", "internal"])
    number = rng.choice(NUMBERS)
    fields: dict[str, Any] = {"line": rng.choice(LINES), "caller_number": number,
                              "caller_name": rng.choice(["张三", "Müller", None])}
    if kind == "answered":
        fields.update(ring_seconds=float(rng.choice([0, 5, 29])))
    elif kind in ("missed", "abandoned", "short"):
        fields.update(outcome="missed" if kind == "missed" else "abandoned",
                      short_abandon=kind == "short")
    elif kind.startswith("outbound"):
        fields.update(direction="outbound", called_number=number, caller_number="1001",
                      outcome="answered" if kind == "outbound" else "unanswered")
        if kind != "outbound":
            fields.update(reason=None, agent="PJSIP/1001")
    else:
        fields.update(direction="internal", caller_number="1002")
    record = make_call(f"{rng.randrange(8)}.1", at=at, **fields)
    if record.answered_at is not None:  # often exactly when another call arrives
        record.answered_at = at + rng.choice([1.0, 8.0, 30.0, 60.0])
    if record.agent:
        record.agent = rng.choice(["PJSIP/1001", "PJSIP/1002"])
        record.agent_name = rng.choice(["Li Na", "王芳", None])
    record.attempts = record.attempts[:rng.randrange(len(record.attempts) + 1)]
    return record


async def state(db: Database) -> dict[str, Any]:
    """Everything stored, by natural keys (ids and write times differ between databases)."""
    async with db.connection() as conn:
        key_of = {r.id: (r.pbx, r.linkedid)
                  for r in await conn.execute(sa.select(calls.c.id, calls.c.pbx,
                                                        calls.c.linkedid))}
        call_rows = {key_of[r.id]: {k: v for k, v in r._mapping.items()
                                    if k not in ("id", "updated_at")}
                     for r in await conn.execute(sa.select(calls))}
        attempt_rows = sorted(
            (key_of[r.call_id], *[v for k, v in r._mapping.items() if k not in ("id", "call_id")])
            for r in await conn.execute(sa.select(attempts)))
        agent_rows = sorted((r.pbx, r.interface, r.name)
                            for r in await conn.execute(sa.select(agents)))
        links: dict[int, list[tuple[str, str]]] = {}
        for r in await conn.execute(sa.select(worklist_calls)):
            links.setdefault(r.entry_id, []).append(key_of[r.call_id])
        entries = sorted(
            (r.pbx, r.number, r.line, r.status, r.first_missed_at, r.last_missed_at,
             r.call_count, r.handled_at, r.handled_by, r.how,
             key_of.get(r.handled_call_id), round(r.time_to_callback_seconds or -1, 3),
             sorted(links.get(r.id, [])))
            for r in await conn.execute(sa.select(worklist_entries)))
    return {"calls": call_rows, "attempts": attempt_rows, "agents": agent_rows,
            "worklist": entries}


async def clear(db: Database) -> None:
    async with db.begin() as conn:
        for table in (worklist_calls, worklist_entries, attempts, calls, agents):
            await conn.execute(sa.delete(table))


async def migrated_pair(db_factory: DbFactory, *names: str) -> list[Database]:
    """A migrated database for each name (SQLite: a file each; PostgreSQL: a schema each)."""
    dbs = []
    for name in names:
        url = None
        if db_factory.kind == "sqlite":
            url = f"sqlite+aiosqlite:///{db_factory.tmp_path / name}.db"
        db = await db_factory.create(url)
        await migrate.upgrade(db)
        dbs.append(db)
    return dbs


async def test_batches_store_what_one_by_one_stores(db_factory: DbFactory,
                                                    store_settings: Settings) -> None:
    oracle_db, batched_db = await migrated_pair(db_factory, "oracle", "batched")
    rng = random.Random(20261129)
    scenarios = 25 if db_factory.kind == "postgresql" else 60
    handled = listed_twice = 0
    for scenario in range(scenarios):
        settings = replace(store_settings,
                           worklist_include_short_abandons=rng.random() < 0.3)
        history = [random_call(rng, n) for n in range(rng.randrange(1, 30))]
        cuts = [*sorted(rng.sample(range(1, len(history)), k=min(2, len(history) - 1))),
                len(history)]
        batches = [history[a:b] for a, b in zip([0, *cuts[:-1]], cuts, strict=True)]
        expected_seconds: list[float] = []
        got_seconds: list[float] = []
        for batch in batches:
            async with oracle_db.begin() as conn:
                expected_seconds += await oracle_save(conn, batch, settings)
            async with batched_db.begin() as conn:
                # retried: as the writer stores (calls found new are inserted, not merged)
                saved = await save_calls(conn, batch, settings, retried=rng.random() < 0.5)
            got_seconds += saved.callback_seconds
            assert len(saved.ids) == len(batch)
            listed_twice += len(batch) - len({(r.pbx, r.linkedid) for r in batch})
        expected, got = await state(oracle_db), await state(batched_db)
        assert got == expected, f"scenario {scenario}: {history}"
        assert sorted(got_seconds) == sorted(expected_seconds)
        handled += sum(1 for e in got["worklist"] if e[3] == "handled")
        await clear(oracle_db)
        await clear(batched_db)
    # The histories did exercise what matters: callbacks and calls written twice.
    assert handled > scenarios and listed_twice > scenarios


async def test_a_writers_batches_of_new_and_stored_calls_store_what_one_by_one_stores(
        db_factory: DbFactory, store_settings: Settings) -> None:
    """Batches as the writer sends them (`retried`), big enough for COPY: the first all
    new calls (inserted, their ids matched to the records by order), the second new ones
    and calls of the first again (merged). Every call with its own attempts and worklist
    links, as one by one."""
    oracle_db, batched_db = await migrated_pair(db_factory, "oracle", "batched")
    rng = random.Random(20261202)
    size = 3 * bulk.COPY_FROM
    history = [replace(random_call(rng, n), linkedid=f"{n}.7") for n in range(2 * size)]
    first = history[:size]
    second = history[size:] + [replace(r, caller_name="again") for r in rng.sample(first, 8)]
    assert sum(len(r.attempts) for r in first) > size // 4
    for batch in (first, second):
        async with oracle_db.begin() as conn:
            await oracle_save(conn, batch, store_settings)
        async with batched_db.begin() as conn:
            saved = await save_calls(conn, batch, store_settings, retried=True)
        assert len(saved.ids) == len(batch)
    assert await state(batched_db) == await state(oracle_db)


def busy_hour(prefix: str, n: int) -> list[CallRecord]:
    """`n` calls of a busy desk: misses of a few dozen numbers, their callbacks, answers."""
    records = []
    for k in range(n):
        number = f"+86{n:03d}{k // 3 % 40:08d}"
        at = T0 + 10 * k
        if k % 3 == 0:
            records.append(make_call(f"{prefix}{k}", at=at, outcome="missed",
                                     caller_number=number, caller_name="张三"))
        elif k % 3 == 1:
            records.append(make_call(f"{prefix}{k}", at=at, direction="outbound",
                                     called_number=number, agent=f"PJSIP/10{k % 7:02d}"))
        else:
            records.append(make_call(f"{prefix}{k}", at=at, caller_number=number))
    return records


async def test_statements_per_batch_do_not_grow_with_the_batch(any_db: Database,
                                                               store_settings: Settings) -> None:
    """The point of batching: thirty calls or three hundred cost the same few statements
    (on PostgreSQL both go by COPY; a batch of fewer than bulk.COPY_FROM by upsert)."""
    assert bulk.COPY_FROM <= 30
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    sa.event.listen(any_db.engine.sync_engine, "before_cursor_execute", count)
    per_batch = {}
    for n in (30, 300):
        statements.clear()
        async with any_db.begin() as conn:
            saved = await save_calls(conn, busy_hour(f"{n}-", n), store_settings)
        assert len(set(saved.ids)) == n
        if any_db.dialect == "sqlite":
            # SQLAlchemy cannot rely on SQLite's RETURNING order, so it inserts new worklist
            # entries one by one to learn their ids (cheap: SQLite is in-process).
            statements = [s for s in statements
                          if not s.startswith("INSERT INTO worklist_entries")]
        per_batch[n] = len(statements)
    assert per_batch[300] <= per_batch[30] <= 10, per_batch
    async with any_db.connection() as conn:
        handled = await conn.scalar(sa.select(sa.func.count()).select_from(worklist_entries)
                                    .where(worklist_entries.c.how == "callback"))
    assert handled == 10 + 100  # every miss was called back


async def test_writer_keeps_one_connection_through_a_backlog_and_skips_known_agents(
        any_db: Database, store_settings: Settings) -> None:
    checkouts: list[object] = []
    agent_writes: list[str] = []
    writer = CallWriter(any_db, store_settings, batch_size=10, keep_idle=0.0)
    engine = writer.writes.engine.sync_engine  # the writer's own (callhub.store.db_loop)
    sa.event.listen(engine, "checkout", lambda *args: checkouts.append(1))
    sa.event.listen(engine, "before_cursor_execute",
                    lambda _c, _cur, statement, *_a: agent_writes.append(statement)
                    if statement.startswith("INSERT INTO agents") else None)
    backlog = busy_hour("b-", 60)  # six batches, agents PJSIP/1000..1006 named "Li Na"
    for record in backlog:
        writer.submit(record)
    await writer.start()
    async with asyncio.timeout(30):
        await writer.wait_written()
    assert writer.written == 60 and writer.failed_batches == 0
    assert len(checkouts) == 1  # one connection for the whole backlog
    assert len(agent_writes) < 6  # agents stored once, not again in every batch

    # A known agent seen without a name keeps it; a new name is written.
    agent_writes.clear()
    writer.submit(make_call("n-1", agent="PJSIP/1001", agent_name=None))
    async with asyncio.timeout(30):
        await writer.wait_written()
    assert agent_writes == []
    writer.submit(make_call("n-2", agent="PJSIP/1001", agent_name="王芳"))
    async with asyncio.timeout(30):
        await writer.wait_written()
    await writer.stop()
    assert len(checkouts) == 3  # idle past keep_idle: the connection went back to the pool
    async with any_db.connection() as conn:
        names = dict((await conn.execute(sa.select(agents.c.interface, agents.c.name))).all())
    assert names["PJSIP/1001"] == "王芳" and names["PJSIP/1002"] == "Li Na" and len(names) == 7


async def test_writer_keeps_its_connection_between_calls_that_trickle_in(
        any_db: Database, store_settings: Settings) -> None:
    """Lone calls a moment apart take the connection the last one used: no checkout (and
    no ping) per call."""
    checkouts: list[object] = []
    writer = CallWriter(any_db, store_settings, keep_idle=60.0)
    sa.event.listen(writer.writes.engine.sync_engine, "checkout",
                    lambda *args: checkouts.append(1))
    await writer.start()
    for n in range(5):
        writer.submit(make_call(f"t-{n}", at=T0 + n))
        async with asyncio.timeout(30):
            await writer.wait_written()
    await writer.stop()
    assert writer.written == 5 and writer.failed_batches == 0
    assert len(checkouts) == 1


async def test_a_kept_connection_found_dead_is_renewed_not_an_outage(
        pg_db: Database, store_settings: Settings) -> None:
    """The server ends the writer's idle connection (a restart, an admin's kill): the next
    call is stored on a new one at once, with no failed batch or backoff."""
    writer = CallWriter(pg_db, store_settings, keep_idle=60.0, retry_initial=60.0)
    await writer.start()
    writer.submit(make_call("d-1"))
    async with asyncio.timeout(30):
        await writer.wait_written()
    assert writer._conn is not None  # kept
    pid = (await driver_connection(writer._conn)).get_server_pid()
    async with pg_db.connection() as conn:
        assert await conn.scalar(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    writer.submit(make_call("d-2", at=T0 + 60))
    async with asyncio.timeout(30):  # a backoff of retry_initial would take 60 s
        await writer.wait_written()
    await writer.stop()
    assert writer.written == 2 and writer.failed_batches == 0
    async with pg_db.connection() as conn:
        assert await conn.scalar(sa.select(sa.func.count()).select_from(calls)) == 2


def test_the_row_columns_are_the_tables_columns_in_order() -> None:
    """The COPY and the executemany path send `rows.CALL_COLUMNS`: every column the writer
    sets, in table order; the others are the supervisors' (`KEPT_COLUMNS`). A column added
    to the table must be added to one of them."""
    from callhub.store.rows import ATTEMPT_COLUMNS, CALL_COLUMNS, KEPT_COLUMNS

    assert tuple(c.name for c in calls.columns
                 if c.name != "id" and c.name not in KEPT_COLUMNS) == CALL_COLUMNS
    assert {c.name for c in calls.columns} == {"id", *CALL_COLUMNS, *KEPT_COLUMNS}
    assert tuple(c.name for c in attempts.columns if c.name != "id") == ATTEMPT_COLUMNS


async def test_copy_path_after_a_rollback_stages_nothing_and_numbers_calls_in_order(
        any_db: Database, store_settings: Settings) -> None:
    """PostgreSQL's COPY path (callhub.store.bulk): its staging table, created in a batch
    that rolled back, is there again for the next one on the same connection; it is
    empty after each commit, and new calls get their ids in record order."""
    first, second = busy_hour("r-", 30), busy_hour("s-", 40)
    async with any_db.connection() as conn:
        transaction = await conn.begin()
        await save_calls(conn, first, store_settings)
        await transaction.rollback()
        async with conn.begin():
            saved = await save_calls(conn, second, store_settings)
        if any_db.dialect == "postgresql":
            assert await conn.scalar(sa.text("SELECT count(*) FROM callhub_stage_calls")) == 0
            await conn.rollback()
    assert saved.ids == sorted(saved.ids) and len(set(saved.ids)) == len(second)
    async with any_db.connection() as conn:
        stored = (await conn.execute(sa.select(calls.c.linkedid).order_by(calls.c.id)))
        assert list(stored.scalars()) == [r.linkedid for r in second]


async def test_a_copy_batch_plans_its_statements_for_their_values_to_the_end(
        any_db: Database, store_settings: Settings) -> None:
    """A COPY batch plans its own statements for their arrays (`bulk.begin_batch`) while
    each COPY's foreign-key checks keep PostgreSQL's cached plans (`bulk.copy_rows`):
    after the attempts and the worklist's links, the batch's later statements (the
    rollup's) are still planned for their values."""
    if any_db.dialect != "postgresql":
        return
    async with any_db.connection() as conn, conn.begin():
        saved = await save_calls(conn, busy_hour("p-", 60), store_settings)
        mode = await conn.scalar(sa.text("SHOW plan_cache_mode"))
    assert len(saved.ids) == 60 and mode == "force_custom_plan"
    async with any_db.connection() as conn:  # both COPYs ran (bulk.COPY_FROM rows or more)
        links = await conn.scalar(sa.select(sa.func.count()).select_from(worklist_calls))
        assert links is not None and links >= bulk.COPY_FROM


async def test_a_copy_batch_stores_every_time_to_the_microsecond(
        db_factory: DbFactory, store_settings: Settings) -> None:
    """The COPY path stages a call's times as POSIX seconds and PostgreSQL makes them
    timestamps (`bulk._exact_time`): to the microsecond what one call at a time (a
    datetime from Python) stores, halves of a microsecond rounded to even as Python
    rounds them, before 1970 too."""
    rng = random.Random(20261202)
    times = [T0 + 0.5e-6, T0 + 1.5e-6, T0 + 2.5e-6, 1.5e-6, -1.5, -0.5e-6,
             *(T0 + rng.randrange(10**8) / 10**6 for _ in range(20)),
             *(T0 + (rng.randrange(10**8) + 0.5) / 10**6 for _ in range(20)),
             *(rng.uniform(-2e9, 4e9) for _ in range(20))]
    batch = []
    for n, at in enumerate(times):
        record = make_call(f"t{n}", at=at, outcome="missed", caller_number=f"+86{n:09d}")
        batch.append(replace(record, ring_started_at=at + rng.random(),
                             ended_at=at + 100 * rng.random()))
    dbs = await migrated_pair(db_factory, "one-by-one", "batched")
    for record in batch:
        async with dbs[0].begin() as conn:
            await save_calls(conn, [record], store_settings)
    async with dbs[1].begin() as conn:
        await save_calls(conn, batch, store_settings)
    stored = []
    for db in dbs:
        async with db.connection() as conn:
            rows = await conn.execute(sa.select(calls.c.linkedid, calls.c.arrived_at,
                                                calls.c.ring_started_at, calls.c.answered_at,
                                                calls.c.ended_at).order_by(calls.c.linkedid))
            stored.append([tuple(row) for row in rows])
    want = sorted((r.linkedid, utc(r.arrived_at), utc(r.ring_started_at), None,
                   utc(r.ended_at)) for r in batch)
    assert stored[0] == want
    assert stored[1] == want


async def test_a_call_another_writer_stores_meanwhile_is_stored_once_by_the_writer(
        pg_db: Database, store_settings: Settings) -> None:
    """The writer inserts the calls its batch found new (no merge, `bulk.merge_calls`):
    one that another transaction stores meanwhile fails the batch when that one commits;
    the writer stores it again in parts, the merge taking that call. Every call is
    stored once, the writer's version of the contested one last, none quarantined."""
    import time

    records = busy_hour("race-", 40)
    contested = records[10]
    other = await pg_db.engine.connect()
    transaction = await other.begin()
    await save_calls(other, [replace(contested, caller_name="earlier")], store_settings)
    writer = CallWriter(pg_db, store_settings)
    for record in records:
        writer.submit(record)
    await writer.start()

    async def writer_waits() -> bool:  # its INSERT queues behind the other's row
        async with pg_db.connection() as conn:
            return bool(await conn.scalar(sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO calls%' "
                # this schema's calls (other workers' writers wait in theirs)
                "AND pid IN (SELECT pid FROM pg_locks WHERE relation = 'calls'::regclass)")))

    deadline = time.monotonic() + 30
    while not await writer_waits():
        assert time.monotonic() < deadline
    await transaction.commit()
    await other.close()
    async with asyncio.timeout(30):
        await writer.wait_written()
    await writer.stop()
    assert writer.written == 40 and writer.quarantined == 0
    async with pg_db.connection() as conn:
        names = dict((await conn.execute(sa.select(calls.c.linkedid, calls.c.caller_name))).all())
        n_attempts = await conn.scalar(sa.select(sa.func.count()).select_from(attempts))
    assert sorted(names) == sorted(r.linkedid for r in records)
    assert names[contested.linkedid] == contested.caller_name
    assert n_attempts == sum(len(r.attempts) for r in records)
