"""The missed-call worklist: kept up to date from call records as they are written.

A missed or abandoned inbound call (a short abandon only when configured)
joins the open entry of its caller number and line, or opens one. An
answered call with the same outside number afterwards handles every open
entry of that number: `callback` when it was outbound, `called_again` when
the caller got through inbound. Supervisors handle (`manual`) or dismiss
entries through the API. Records may arrive out of order (a spool replay, a
stale call closed late), so a new miss also looks for an answer already
stored after it. Everything is idempotent: a call is listed once.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection

from callhub.config import Settings
from callhub.records import CallRecord
from callhub.store import bulk, rollup
from callhub.store.chunks import chunks, is_in, set_chunk
from callhub.store.errors import InvalidTransition, NotFound
from callhub.store.tables import calls, utc, worklist_calls, worklist_entries

STATUSES = ("pending", "handled", "dismissed")
HOWS = ("callback", "called_again", "manual")



def is_worklist_miss(record: CallRecord, settings: Settings) -> bool:
    """A missed or abandoned inbound call from a known number, per the short-abandon setting."""
    if record.direction != "inbound" or not record.external_number:
        return False
    if record.outcome == "missed":
        return True
    if record.outcome == "abandoned":
        return not record.short_abandon or settings.worklist_include_short_abandons
    return False


def is_reach(record: CallRecord) -> bool:
    """An answered call with an outside party: it reaches the caller of earlier misses."""
    return (record.outcome == "answered" and record.direction in ("inbound", "outbound")
            and bool(record.external_number))


@dataclass(slots=True, eq=False)
class Answer:
    """An answered call to or from an outside number: it can handle that number's misses."""

    id: int
    direction: str
    answered_at: datetime
    agent: str | None
    agent_name: str | None


@dataclass(slots=True)
class Before:
    """What a batch's worklist update needs to know of the database before the batch is written.

    `ids`: the batch's calls already stored (their attempts are replaced);
    `listed`: of those, the ones a worklist entry lists (a call is listed
    once); `answers`: the answered calls of the batch's missed numbers, by
    number, for a miss that arrives after its answer (a spool replay, a
    stale call closed late); `answer_keys` lets a call of the batch replace
    its stored self among them.
    """

    ids: dict[tuple[str, str], int] = field(default_factory=dict)
    stored_hours: set[tuple[str, int]] = field(default_factory=set)
    """(pbx, UTC hour) each of those arrived in as stored: the rollup recomputes them
    with the batch's own (a call stored again may have moved to another hour)."""
    listed: set[int] = field(default_factory=set)
    answers: dict[str, list[Answer]] = field(default_factory=dict)
    answer_keys: dict[tuple[str, str], tuple[str, Answer]] = field(default_factory=dict)


_BEFORE_COLUMNS = (calls.c.id, calls.c.pbx, calls.c.linkedid, calls.c.arrived_at,
                   calls.c.external_number, calls.c.outcome, calls.c.direction,
                   calls.c.answered_at, calls.c.agent, calls.c.agent_name,
                   worklist_calls.c.call_id.label("listed"))
"""What `read_before` reads of each call, in this order."""
_LISTED = worklist_calls.c.call_id == calls.c.id


def _answers_of(numbers: Any, since: Any) -> sa.Select[Any]:
    """The answered calls of these numbers since `since`: the misses' possible answers."""
    return (sa.select(*_BEFORE_COLUMNS)
            .select_from(calls.outerjoin(worklist_calls, _LISTED))
            .where(numbers, calls.c.outcome == "answered",
                   sa.or_(calls.c.direction == "inbound", calls.c.direction == "outbound"),
                   calls.c.answered_at >= since))


@functools.lru_cache(maxsize=4)
def _before_pg(with_keys: bool, with_numbers: bool) -> sa.Select[Any]:
    """`read_before`'s one statement on PostgreSQL, built once per shape: the batch's
    keys (two arrays, joined on the unique index) and its misses' numbers (an array) are
    its parameters."""
    arms: list[sa.Select[Any]] = []
    if with_keys:
        pairs = sa.func.unnest(
            sa.bindparam("key_pbxs", type_=ARRAY(calls.c.pbx.type)),
            sa.bindparam("key_linkedids", type_=ARRAY(calls.c.linkedid.type)),
        ).table_valued("pbx", "linkedid").render_derived(name="batch_keys")
        arms.append(sa.select(*_BEFORE_COLUMNS).select_from(
            calls.join(pairs, sa.and_(calls.c.pbx == pairs.c.pbx,
                                      calls.c.linkedid == pairs.c.linkedid))
            .outerjoin(worklist_calls, _LISTED)))
    if with_numbers:
        arms.append(_answers_of(
            calls.c.external_number == sa.any_(
                sa.bindparam("numbers", type_=ARRAY(calls.c.external_number.type))),
            sa.bindparam("since", type_=calls.c.answered_at.type)))
    if len(arms) == 1:
        return arms[0]
    both = sa.union_all(*arms).subquery("before")
    return sa.select(*both.c)


async def read_before(conn: AsyncConnection, records: Sequence[CallRecord],
                      settings: Settings) -> Before:
    """One read (per few hundred calls) before the batch is written: see `Before`."""
    before = Before()
    keys = {(r.pbx, r.linkedid) for r in records}
    misses = [r for r in records if is_worklist_miss(r, settings)]
    numbers = sorted({r.external_number or "" for r in misses})
    wanted_numbers = set(numbers)
    since = utc(min(r.arrived_at for r in misses)) if misses else None
    seen: set[int] = set()
    if bulk.used(conn):  # one statement, built once (building it was most of its cost)
        some = sorted(keys)
        params: dict[str, Any] = {"key_pbxs": [k[0] for k in some],
                                  "key_linkedids": [k[1] for k in some]}
        if numbers:
            params.update(numbers=numbers, since=since)
        # Through SQLAlchemy: the batch's transaction begins here, and a connection found
        # dead is reported as such (the writer renews it).
        rows = (await conn.execute(_before_pg(bool(keys), bool(numbers)), params)).all()
        _take(before, rows, seen, keys, wanted_numbers, since)
        return before
    pbxs = sorted({pbx for pbx, _ in keys})
    linkedids = sorted({linkedid for _, linkedid in keys})
    size = set_chunk(conn, lists=2)
    for start in range(0, max(len(linkedids), len(numbers)), size):
        some_linkedids = linkedids[start:start + size]
        some_numbers = numbers[start:start + size]
        arms = []
        if some_linkedids:
            arms.append(sa.select(*_BEFORE_COLUMNS)
                        .select_from(calls.outerjoin(worklist_calls, _LISTED))
                        .where(calls.c.pbx.in_(pbxs), calls.c.linkedid.in_(some_linkedids)))
        if some_numbers:
            arms.append(_answers_of(is_in(conn, calls.c.external_number, some_numbers),
                                    since))
        rows = (await conn.execute(arms[0] if len(arms) == 1 else sa.union_all(*arms))).all()
        _take(before, rows, seen, keys, wanted_numbers, since)
    return before


def _take(before: Before, rows: Sequence[Sequence[Any]], seen: set[int],
          keys: set[tuple[str, str]], wanted_numbers: set[str], since: datetime | None
          ) -> None:
    """Add `read_before`'s rows (`_BEFORE_COLUMNS`) to `before`; a call read twice (a key
    of the batch and an answer: `seen`) counts once."""
    for (call_id, pbx, linkedid, arrived_at, external_number, outcome, direction,
         answered_at, agent, agent_name, listed) in rows:
        if call_id in seen:
            continue
        seen.add(call_id)
        key = (pbx, linkedid)
        if key in keys:
            before.ids[key] = call_id
            before.stored_hours.add((pbx, rollup.hour_of(arrived_at)))
            if listed is not None:
                before.listed.add(call_id)
        if (since is not None and outcome == "answered"
                and direction in ("inbound", "outbound")
                and external_number in wanted_numbers and answered_at is not None
                and answered_at >= since):
            answer = Answer(call_id, direction, answered_at, agent, agent_name)
            before.answers.setdefault(external_number, []).append(answer)
            if key in keys:
                before.answer_keys[key] = (external_number, answer)


@dataclass(slots=True, eq=False)
class _Entry:
    """A worklist entry as the batch leaves it."""

    id: int | None  # None: opened by this batch
    pbx: str
    number: str
    line: str
    first_missed_at: datetime
    last_missed_at: datetime
    call_count: int = 1
    added: int = 0  # calls this batch joined to a stored entry
    status: str = "pending"
    handled_at: datetime | None = None
    handled_by: str | None = None
    how: str | None = None
    handled_call_id: int | None = None
    time_to_callback_seconds: float | None = None
    changed: bool = False
    loaded_first_missed_at: datetime | None = None  # as stored, for a stored entry


class _Batch:
    """The worklist decisions for one batch, made in memory, written back at the end."""

    def __init__(self, before: Before, loaded: list[_Entry]) -> None:
        self.answers = {number: list(found) for number, found in before.answers.items()}
        self.stale = dict(before.answer_keys)
        self.listed = set(before.listed)
        self.loaded = loaded
        self.open: dict[str, dict[str, _Entry]] = {}
        for entry in loaded:
            self.open.setdefault(entry.number, {})[entry.line] = entry
        self.opened: list[_Entry] = []
        self.links: list[tuple[_Entry, int]] = []
        self.seconds: list[float] = []

    def stored(self, call_id: int, record: CallRecord) -> None:
        """The call is now stored as `record`: it replaces its earlier self as an answer."""
        old = self.stale.pop((record.pbx, record.linkedid), None)
        if old is not None:
            self.answers[old[0]].remove(old[1])
        if is_reach(record) and record.answered_at is not None:
            answered_at = utc(record.answered_at)
            assert answered_at is not None
            self.answers.setdefault(record.external_number or "", []).append(Answer(
                call_id, record.direction, answered_at, record.agent, record.agent_name))

    def miss(self, call_id: int, record: CallRecord) -> None:
        if call_id in self.listed:
            return
        self.listed.add(call_id)
        number = record.external_number or ""
        line = record.line or ""
        missed_at = utc(record.arrived_at)
        assert missed_at is not None
        entry = self.open.get(number, {}).get(line)
        if entry is None:
            entry = _Entry(None, record.pbx, number, line, missed_at, missed_at)
            self.opened.append(entry)
            self.open.setdefault(number, {})[line] = entry
        else:
            entry.first_missed_at = min(entry.first_missed_at, missed_at)
            entry.last_missed_at = max(entry.last_missed_at, missed_at)
            entry.call_count += 1
            entry.added += 1
            entry.changed = True
        self.links.append((entry, call_id))
        # Out of order: an answer to or from this number already stored after the miss.
        after = [a for a in self.answers.get(number, ()) if a.answered_at >= entry.last_missed_at]
        if after:
            self.handle([entry], min(after, key=lambda a: (a.answered_at, a.id)))

    def reach(self, call_id: int, record: CallRecord) -> None:
        answered_at = utc(record.answered_at if record.answered_at is not None
                          else record.arrived_at)
        assert answered_at is not None
        number = record.external_number or ""
        entries = [e for e in self.open.get(number, {}).values()
                   if e.last_missed_at <= answered_at]
        if entries:
            self.handle(entries, Answer(call_id, record.direction, answered_at, record.agent,
                                        record.agent_name))

    def handle(self, entries: list[_Entry], answer: Answer) -> None:
        """Mark open entries handled by an answered call."""
        how = "callback" if answer.direction == "outbound" else "called_again"
        for entry in entries:
            took = max((answer.answered_at - entry.first_missed_at).total_seconds(), 0.0)
            self.seconds.append(took)
            entry.status = "handled"
            entry.how = how
            entry.handled_at = answer.answered_at
            entry.handled_by = answer.agent_name or answer.agent
            entry.handled_call_id = answer.id
            entry.time_to_callback_seconds = took
            entry.changed = True
            del self.open[entry.number][entry.line]


def _state(entry: _Entry, now: datetime) -> dict[str, Any]:
    return {"status": entry.status, "first_missed_at": entry.first_missed_at,
            "last_missed_at": entry.last_missed_at, "handled_at": entry.handled_at,
            "handled_by": entry.handled_by, "how": entry.how,
            "handled_call_id": entry.handled_call_id,
            "time_to_callback_seconds": entry.time_to_callback_seconds, "updated_at": now}


def _b(column: sa.Column[Any]) -> sa.BindParameter[Any]:
    """A bound parameter for an executemany UPDATE of `column` (named apart from it)."""
    return sa.bindparam(f"b_{column.name}", type_=column.type)


async def _lock_numbers(conn: AsyncConnection, numbers: Sequence[str]) -> None:
    """On PostgreSQL, lock the batch's numbers until the transaction ends, in sorted order.

    Several `callhub run` processes may share one database (docs/scaling.md), and
    their PBXs the same callers: without the lock two writers could both find no open
    entry for a number and both insert one, and the second's batch failed on the
    open-entry index and its call went to the quarantine. With it, the second waits
    for the first's commit and then reads its entry. Sorted: two batches never wait
    for each other in a cycle. SQLite has one writer at a time anyway.
    """
    if conn.dialect.name != "postgresql":
        return
    await conn.execute(_LOCK_NUMBERS, {"numbers": list(numbers)})


_LOCK_NUMBERS = sa.text("SELECT count(pg_advisory_xact_lock(hashtext("
                        "'callhub.worklist:' || current_schema() || ':' || n))) "
                        "FROM unnest(CAST(:numbers AS text[])) AS n")
_OPEN_COLUMNS = (worklist_entries.c.id, worklist_entries.c.pbx, worklist_entries.c.number,
                 worklist_entries.c.line, worklist_entries.c.first_missed_at,
                 worklist_entries.c.last_missed_at, worklist_entries.c.call_count)
_OPEN_PG = sa.select(*_OPEN_COLUMNS).where(
    worklist_entries.c.status == "pending",
    worklist_entries.c.number == sa.any_(
        sa.bindparam("numbers", type_=ARRAY(worklist_entries.c.number.type))))
"""The open entries of a batch's numbers (PostgreSQL: one array, built once)."""


@dataclass(slots=True)
class Applied:
    """What a batch did to the worklist: the time to callback of every entry it handled,
    and the (pbx, UTC hour) of the first miss of every entry it wrote (/stats counts
    entries by it: the stats cache must see those hours change)."""

    seconds: list[float] = field(default_factory=list)
    hours: set[tuple[str, int]] = field(default_factory=set)


async def apply_batch(conn: AsyncConnection, records: Sequence[CallRecord], ids: Sequence[int],
                      settings: Settings, before: Before, now: datetime) -> Applied:
    """Update the worklist for stored calls (inside the writer's transaction), set-based.

    `records` (distinct keys) were just stored with `ids`; `before` is what
    `read_before` read before. The open entries of the batch's numbers are
    read in one query, the records applied to them in order in memory (as
    if written one by one), and the result written back: changed entries,
    new entries, their calls. Returns the time to callback of every entry
    the batch handled, and the hours of the entries it wrote.
    """
    numbers = sorted({r.external_number or "" for r in records
                      if is_worklist_miss(r, settings) or is_reach(r)})
    if not numbers:
        return Applied()
    await _lock_numbers(conn, numbers)
    loaded: list[_Entry] = []
    for part in chunks(numbers, set_chunk(conn)):
        if bulk.used(conn):
            rows = await conn.execute(_OPEN_PG, {"numbers": list(part)})
        else:
            rows = await conn.execute(sa.select(*_OPEN_COLUMNS).where(
                worklist_entries.c.status == "pending",
                is_in(conn, worklist_entries.c.number, part)))
        loaded += [_Entry(row.id, row.pbx, row.number, row.line, row.first_missed_at,
                          row.last_missed_at, row.call_count,
                          loaded_first_missed_at=row.first_missed_at) for row in rows]
    batch = _Batch(before, loaded)
    for record, call_id in zip(records, ids, strict=True):
        batch.stored(call_id, record)
        if is_worklist_miss(record, settings):
            batch.miss(call_id, record)
        elif is_reach(record):
            batch.reach(call_id, record)
    await _write(conn, batch, now)
    hours = {(e.pbx, rollup.hour_of(at))
             for e in (*batch.opened, *(e for e in loaded if e.changed))
             for at in (e.first_missed_at, e.loaded_first_missed_at) if at is not None}
    return Applied(batch.seconds, hours)


async def _write(conn: AsyncConnection, batch: _Batch, now: datetime) -> None:
    """Changed entries first (one handled frees its number and line), then new ones, then links.

    A stored entry that only gained calls keeps its status as the database
    has it (a supervisor may have closed it meanwhile); one this batch
    handled gets the whole outcome. One executemany UPDATE per kind.
    """
    t = worklist_entries
    joined = ("first_missed_at", "last_missed_at", "updated_at")
    for handled in (False, True):
        changed = [e for e in batch.loaded if e.changed and (e.status == "handled") == handled]
        if not changed:
            continue
        names = list(_state(changed[0], now)) if handled else joined
        await conn.execute(
            sa.update(t).where(t.c.id == sa.bindparam("b_id", type_=t.c.id.type)).values(
                {t.c[name]: _b(t.c[name]) for name in names}
                | {t.c.call_count: t.c.call_count + sa.bindparam("b_added", type_=sa.Integer)}),
            [{"b_id": e.id, "b_added": e.added}
             | {f"b_{k}": v for k, v in _state(e, now).items() if k in names}
             for e in changed])
    if batch.opened and bulk.used(conn):
        for entry, entry_id in zip(batch.opened, await _insert_pg(conn, batch.opened, now),
                                   strict=True):
            entry.id = entry_id
    elif batch.opened:
        result = await conn.execute(
            sa.insert(t).returning(t.c.id, sort_by_parameter_order=True),
            [{"pbx": e.pbx, "number": e.number, "line": e.line, "call_count": e.call_count}
             | _state(e, now) for e in batch.opened])
        for entry, entry_id in zip(batch.opened, result.scalars(), strict=True):
            entry.id = entry_id
    if batch.links and bulk.copies(conn, len(batch.links)):
        await bulk.copy_rows(conn, "worklist_calls", ("entry_id", "call_id"),
                             [(e.id, c) for e, c in batch.links])
    elif batch.links:
        await conn.execute(sa.insert(worklist_calls),
                           [{"entry_id": e.id, "call_id": c} for e, c in batch.links])


_ENTRY_ARRAYS = (("pbx", "text"), ("number", "text"), ("line", "text"),
                 ("call_count", "integer"), ("status", "text"),
                 ("first_missed_at", "timestamptz"), ("last_missed_at", "timestamptz"),
                 ("handled_at", "timestamptz"), ("handled_by", "text"), ("how", "text"),
                 ("handled_call_id", "integer"), ("time_to_callback_seconds", "float8"))
_INSERT_PG = (
    f"INSERT INTO worklist_entries ({', '.join(n for n, _ in _ENTRY_ARRAYS)}, updated_at) "
    f"SELECT {', '.join(n for n, _ in _ENTRY_ARRAYS)}, ${len(_ENTRY_ARRAYS) + 1}::timestamptz "
    "FROM unnest(" + ", ".join(f"${k}::{kind}[]" for k, (_, kind) in
                               enumerate(_ENTRY_ARRAYS, start=1))
    + f") WITH ORDINALITY AS e({', '.join(n for n, _ in _ENTRY_ARRAYS)}, ord) "
    "ORDER BY ord RETURNING id")
"""New entries in one statement of fixed text, a column an array: the multi-row VALUES
of SQLAlchemy had a parameter per value, a new statement (prepared, and under the batch's
custom plans planned) for every number of rows: ~6 ms for 170 entries."""


async def _insert_pg(conn: AsyncConnection, opened: Sequence[_Entry], now: datetime
                     ) -> list[int]:
    """Insert `opened` (PostgreSQL); their ids in their order. The sequence numbers the
    rows in the SELECT's order (`ord`), so the ids sorted are the entries' in order (as
    SQLAlchemy's `sort_by_parameter_order` does it on PostgreSQL)."""
    columns: tuple[list[Any], ...] = tuple([] for _ in _ENTRY_ARRAYS)
    for e in opened:
        for column, value in zip(columns, (
                e.pbx, e.number, e.line, e.call_count, e.status, e.first_missed_at,
                e.last_missed_at, e.handled_at, e.handled_by, e.how, e.handled_call_id,
                e.time_to_callback_seconds), strict=True):
            column.append(value)
    pg = await bulk.driver(conn)
    return sorted(row[0] for row in await pg.fetch(_INSERT_PG, *columns, now))


async def mark(conn: AsyncConnection, entry_id: int, status: str, who: str | None,
               note: str | None, now: datetime | None = None) -> float | None:
    """A supervisor marks an open entry handled (how=manual) or dismissed.

    Returns the time to callback of a handled entry.
    """
    now = now or datetime.now(UTC)
    row = (await conn.execute(
        sa.select(worklist_entries.c.status, worklist_entries.c.first_missed_at,
                  worklist_entries.c.pbx)
        .where(worklist_entries.c.id == entry_id))).first()
    if row is None:
        raise NotFound(f"no worklist entry {entry_id}")
    if row.status != "pending":
        raise InvalidTransition(f"worklist entry {entry_id} is already {row.status}")
    values: dict[str, Any] = {"status": status, "handled_at": now, "handled_by": who,
                              "note": note, "updated_at": now}
    took = None
    if status == "handled":
        took = max((now - row.first_missed_at).total_seconds(), 0.0)
        values["how"] = "manual"
        values["time_to_callback_seconds"] = took
    # The status guard makes the close atomic: of two supervisors closing one entry at
    # once (or a supervisor and the writer's callback), the second updates nothing.
    done = await conn.execute(sa.update(worklist_entries)
                              .where(worklist_entries.c.id == entry_id,
                                     worklist_entries.c.status == "pending")
                              .values(**values))
    if done.rowcount != 1:
        raise InvalidTransition(f"worklist entry {entry_id} was closed meanwhile")
    # /stats counts the entry in the hour of its first miss: its cached figures are stale.
    await rollup.touch(conn, {(row.pbx, rollup.hour_of(row.first_missed_at))})
    return took


async def pending_summary(conn: AsyncConnection) -> tuple[int, datetime | None]:
    """How many entries are pending and the arrival of the oldest one (for the metrics)."""
    row = (await conn.execute(
        sa.select(sa.func.count(), sa.func.min(worklist_entries.c.first_missed_at))
        .where(worklist_entries.c.status == "pending"))).one()
    oldest = row[1]
    if isinstance(oldest, str):  # SQLite's MIN() loses the column type
        oldest = datetime.fromisoformat(oldest)
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=UTC)
    return int(row[0]), oldest
