"""Write finished call records in batches: a fixed handful of statements per batch.

Everything here runs inside the caller's transaction, so a batch is all or
nothing and writing the same batch again (a spool replayed after a crash)
changes nothing: `(pbx, linkedid)` is the key, attempts are replaced, and
the worklist skips calls it already lists.

A batch costs about ten round trips however many calls it holds (the
calls upserted at once, their attempts deleted and inserted at once, the
agents, the worklist's reads and writes), not a few per call: the
database, not the per-statement latency, sets the pace. On PostgreSQL the
calls and attempts go by COPY and a set-based merge (callhub.store.bulk);
on SQLite as multi-row VALUES. A call written twice in one batch splits the
batch there, so the result is the same as writing the records one by one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from callhub.config import Settings
from callhub.records import CallRecord
from callhub.store import bulk, rollup, worklist
from callhub.store.chunks import chunks, in_chunk
from callhub.store.rows import ATTEMPT_COLUMNS, attempt_tails, call_row, with_ids
from callhub.store.sms_queue import ContactLookup, queue_sms
from callhub.store.tables import agents, attempts, calls
from callhub.store.upsert import insert, insert_for

CALL_KEY = ("pbx", "linkedid")
T = TypeVar("T")


async def upsert_calls(conn: AsyncConnection, records: Sequence[CallRecord], now: datetime,
                       stored: Collection[int] | None, meanwhile: Callable[[], T],
                       retried: bool = False) -> tuple[list[int], T]:
    """Insert or update calls by (pbx, linkedid) and replace their attempts; their ids, and
    what `meanwhile` returned: Python work with no statement, done while PostgreSQL
    merges the calls on the COPY path (before it otherwise). `retried`: see `save_calls`.

    The keys must be distinct (PostgreSQL refuses to update a row twice in
    one statement). PostgreSQL gets them by COPY and one merge
    (callhub.store.bulk) from `bulk.COPY_FROM` calls on; smaller batches and
    SQLite as multi-row VALUES, split below the parameter limit. `stored`: the ids of those calls
    that were stored before (only they can have attempts to delete); None
    when not known.
    """
    if not records:
        return [], meanwhile()
    copies = bulk.copies(conn, len(records))
    if copies:
        ids, (tails, done) = await bulk.merge_calls(
            conn, records, now, meanwhile=lambda: (attempt_tails(records), meanwhile()),
            new=retried and stored is not None and not stored)
    else:
        done = meanwhile()
        rows = [call_row(r, now) for r in records]
        result = await conn.execute(_upsert(conn.dialect.name, tuple(rows[0])), rows)
        by_key = {(row.pbx, row.linkedid): row.id for row in result}
        ids = [by_key[(r.pbx, r.linkedid)] for r in records]
        tails = attempt_tails(records)
    replaced = ids if stored is None else sorted(stored)
    attempt_rows = with_ids(ids, tails)
    if copies:
        await bulk.replace_attempts(conn, replaced, attempt_rows)
        return ids, done
    for part in chunks(replaced, in_chunk(conn)):
        await conn.execute(sa.delete(attempts).where(attempts.c.call_id.in_(part)))
    if attempt_rows:
        await conn.execute(sa.insert(attempts),
                           [dict(zip(ATTEMPT_COLUMNS, row, strict=True)) for row in attempt_rows])
    return ids, done


@functools.lru_cache(maxsize=8)
def _upsert(dialect: str, columns: tuple[str, ...]) -> Any:
    """The upsert of calls by (pbx, linkedid), returning their ids. Built once: its
    `excluded` columns cost ~0.9 ms to make, a fifth of a lone call's Python."""
    stmt = insert_for(dialect, calls)
    return stmt.on_conflict_do_update(
        index_elements=list(CALL_KEY),
        set_={k: stmt.excluded[k] for k in columns if k not in CALL_KEY},
    ).returning(calls.c.id, calls.c.pbx, calls.c.linkedid)


AgentNames = dict[tuple[str, str], str | None]


async def upsert_agents(conn: AsyncConnection, seen: Sequence[tuple[str, str, str | None]],
                        now: datetime, known: Mapping[tuple[str, str], str | None] | None = None
                        ) -> AgentNames:
    """Remember agent devices `(pbx, interface, name)`; a name of None keeps the stored one.

    One statement for all of them; of a device seen twice the last name given wins.
    Devices `known` to be stored with that name (or whose name is not given)
    are skipped. Returns what it wrote, `(pbx, interface) -> name`.
    """
    names: AgentNames = {}
    for pbx, interface, name in seen:
        if name is not None or (pbx, interface) not in names:
            names[(pbx, interface)] = name
    if known:
        names = {key: name for key, name in names.items()
                 if key not in known or (name is not None and known[key] != name)}
    if not names:
        return names
    stmt = insert(conn, agents)
    stmt = stmt.on_conflict_do_update(
        index_elements=["pbx", "interface"],
        set_={"updated_at": stmt.excluded.updated_at,
              "name": sa.func.coalesce(stmt.excluded.name, agents.c.name)})
    await conn.execute(stmt, [{"pbx": pbx, "interface": interface, "name": name,
                               "updated_at": now}
                              for (pbx, interface), name in names.items()])
    return names


@dataclass(slots=True)
class Saved:
    """What a batch did: the call ids (in record order; a CEL record left alone has its
    stored call's id), the times to callback it settled, the agent devices it wrote."""

    ids: list[int] = field(default_factory=list)
    skipped: int = 0  # calls rebuilt from CEL that were stored already, left alone
    callback_seconds: list[float] = field(default_factory=list)
    agents: AgentNames = field(default_factory=dict)
    sms_queued: int = 0  # SMS queued in the outbox with these calls ([sms])
    sms_skipped: list[tuple[str | None, str]] = field(default_factory=list)  # (line, reason)
    worklist_hours: set[tuple[str, int]] = field(default_factory=set)  # (pbx, UTC hour)


def distinct_runs(records: Sequence[CallRecord]) -> Iterator[Sequence[CallRecord]]:
    """Consecutive slices of `records` in which no (pbx, linkedid) repeats."""
    start = 0
    keys: set[tuple[str, str]] = set()
    for n, record in enumerate(records):
        key = (record.pbx, record.linkedid)
        if key in keys:
            yield records[start:n]
            start = n
            keys.clear()
        keys.add(key)
    if start < len(records):
        yield records[start:]


async def save_calls(conn: AsyncConnection, records: Sequence[CallRecord], settings: Settings,
                     known_agents: Mapping[tuple[str, str], str | None] | None = None,
                     contacts: ContactLookup | None = None, retried: bool = False) -> Saved:
    """Store a batch of records in the current transaction, as if one after another.

    A record with `source == "cel"` (a call rebuilt from Asterisk's CEL table
    for a gap) is stored only if its call is not stored yet; an AMI record of
    the call later replaces it as usual.

    `known_agents`: agent devices already stored, with their names (the
    writer remembers what it committed), not written again.

    With `settings.sms` set, the SMS after each call is queued in the outbox in
    this same transaction (callhub.store.sms_queue); `contacts` gives the
    answering agent's name and mobile by interface (the daemon's rota).

    `retried`: the caller stores a batch refused for its data again in parts
    (CallWriter splits it), so calls found new may be inserted rather than merged
    (`bulk.merge_calls`): one stored by another writer meanwhile fails the batch.
    """
    now = datetime.now(UTC)
    saved = Saved()
    if bulk.copies(conn, len(records)):
        await bulk.begin_batch(conn)
    restored: set[tuple[str, str]] = set()  # the batch's calls that were stored before
    stored_hours: set[tuple[str, int]] = set()  # where they were
    runs = list(distinct_runs(records))
    planned: rollup.Plan | None = None  # the rollup's Python half, made during the merge
    for whole in runs:
        # The run's calls and its misses' answers as they were stored before it.
        before = await worklist.read_before(conn, whole, settings)
        stored_ids = before.ids
        restored.update(stored_ids)
        stored_hours |= before.stored_hours
        # A call rebuilt from CEL never overwrites one stored already (from AMI or CEL).
        run = [r for r in whole if r.source != "cel" or (r.pbx, r.linkedid) not in stored_ids]
        if len(run) != len(whole):
            saved.skipped += len(whole) - len(run)
            if not run:
                saved.ids += [stored_ids[(r.pbx, r.linkedid)] for r in whole]
                continue
            before = await worklist.read_before(conn, run, settings)
        # With one run, what the rollup needs is known before the merge.
        ids, planned = await upsert_calls(
            conn, run, now, before.ids.values(),
            functools.partial(rollup.plan, records, restored, stored_hours)
            if len(runs) == 1 else lambda: None, retried)
        await after_merge(conn, run, ids, before, settings, now, saved, known_agents, contacts)
        written = {(r.pbx, r.linkedid): call_id for r, call_id in zip(run, ids, strict=True)}
        saved.ids += [written[key] if key in written else stored_ids[key]
                      for key in ((r.pbx, r.linkedid) for r in whole)]
    # /stats' hourly rollup, in this same transaction
    if planned is None:
        planned = rollup.plan(records, restored, stored_hours)
    await rollup.apply(conn, planned, also_changed=saved.worklist_hours)
    return saved


async def after_merge(conn: AsyncConnection, run: Sequence[CallRecord], ids: Sequence[int],
                      before: worklist.Before, settings: Settings, now: datetime, saved: Saved,
                      known_agents: Mapping[tuple[str, str], str | None] | None,
                      contacts: ContactLookup | None) -> None:
    """What follows from calls just merged (`run`, stored as `ids`), in their transaction.

    The one place for work that must commit with the calls or not at all:
    the agent devices, the worklist, the SMS outbox (the hourly rollup
    follows once per batch, in `save_calls`). Called once per run of distinct
    calls of a batch, in record order; `before` is what the batch's calls
    and numbers were before the merge.
    """
    saved.agents |= await upsert_agents(
        conn, [(r.pbx, r.agent, r.agent_name) for r in run if r.agent], now,
        {**(known_agents or {}), **saved.agents})
    applied = await worklist.apply_batch(conn, run, ids, settings, before, now)
    saved.callback_seconds += applied.seconds
    saved.worklist_hours |= applied.hours
    if settings.sms is not None:
        queued = await queue_sms(conn, run, ids, settings.sms, contacts)
        saved.sms_queued += queued.queued
        saved.sms_skipped += queued.skipped


async def sync_agents(conn: AsyncConnection, settings: Settings) -> None:
    """Copy the configured agents of every PBX into the agents table."""
    await upsert_agents(conn, [(pbx.name, interface, name) for pbx in settings.pbxs
                               for interface, name in pbx.agents.items()],
                        datetime.now(UTC))
