"""Read queries behind the API: call search with keyset pagination, one call, the worklist.

Parameters arrive already validated (callhub/api/params.py); these functions
only build SQL. Calls come newest first, ordered by (arrived_at, id) so a
cursor is the last row's pair and pages never skip or repeat a call.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from callhub.store import fetch
from callhub.store.read_pool import Reader
from callhub.store.tables import (
    attempts,
    calls,
    sms_outbox,
    worklist_calls,
    worklist_entries,
)
from callhub.store.worklist import STATUSES


@dataclass(frozen=True, slots=True)
class CallFilter:
    """Every filter `GET /calls` takes; None means not filtered."""

    start: datetime | None = None
    end: datetime | None = None
    direction: str | None = None
    outcome: str | None = None
    reason: str | None = None
    line: str | None = None
    did: str | None = None
    agent: str | None = None
    caller_number: str | None = None
    number: str | None = None
    min_rings: int | None = None
    worklist_status: str | None = None
    pbx: str | None = None
    resolution: str | None = None  # a resolution, or NO_RESOLUTION: not set yet
    source: str | None = None


# `CallFilter.resolution` for calls whose resolution is not set yet (matters still open
# alongside `pending` ones).
NO_RESOLUTION = "none"
# Its condition key: a test (IS NULL) with no value to bind.
NO_RESOLUTION_KEY = "no_resolution"


def _param(name: str, column: Any) -> sa.BindParameter[Any]:
    return sa.bindparam(name, type_=column.type)


def _call_conditions(present: frozenset[str]) -> list[sa.ColumnElement[bool]]:
    """WHERE terms for the CallFilter fields in `present`, their values as bind parameters
    named like the fields."""
    c = calls.c
    where: list[sa.ColumnElement[bool]] = []
    if "start" in present:
        where.append(c.arrived_at >= _param("start", c.arrived_at))
    if "end" in present:
        where.append(c.arrived_at < _param("end", c.arrived_at))
    for name, column in (("direction", c.direction), ("outcome", c.outcome),
                         ("reason", c.reason), ("line", c.line),
                         ("caller_number", c.caller_number), ("number", c.external_number),
                         ("pbx", c.pbx), ("source", c.source)):
        if name in present:
            where.append(column == _param(name, column))
    if "did" in present:
        where.append(sa.and_(c.direction == "inbound",
                             c.called_number == _param("did", c.called_number)))
    if "agent" in present:
        agent = _param("agent", c.agent)
        where.append(sa.or_(c.agent == agent, c.agent_name == agent))
    if "min_rings" in present:
        where.append(c.rings >= _param("min_rings", c.rings))
    if "resolution" in present:
        where.append(c.resolution == _param("resolution", c.resolution))
    if NO_RESOLUTION_KEY in present:
        where.append(c.resolution.is_(None))
    if "worklist_status" in present:
        where.append(c.id.in_(
            sa.select(worklist_calls.c.call_id)
            .join(worklist_entries, worklist_entries.c.id == worklist_calls.c.entry_id)
            .where(worklist_entries.c.status == _param("worklist_status",
                                                       worklist_entries.c.status))))
    return where


def _worklist_of_calls() -> Any:
    """calls LEFT JOIN their worklist entry (id and status)."""
    return (calls.outerjoin(worklist_calls, worklist_calls.c.call_id == calls.c.id)
            .outerjoin(worklist_entries, worklist_entries.c.id == worklist_calls.c.entry_id))


# The latest SMS-outbox status of each call (null: none queued).
SMS_STATUS = (sa.select(sms_outbox.c.status).where(sms_outbox.c.call_id == calls.c.id)
              .order_by(sms_outbox.c.id.desc()).limit(1).correlate(calls)
              .scalar_subquery().label("sms_status"))
CALL_COLUMNS = [*calls.c, worklist_entries.c.id.label("worklist_id"),
                worklist_entries.c.status.label("worklist_status"), SMS_STATUS]
# A list's calls: no page or export shows when a row was last written (a timestamp
# decoded per row for nothing).
PAGE_COLUMNS = [c for c in calls.c if c is not calls.c.updated_at]


def _limit(rows: int) -> sa.ColumnElement[int]:
    """A page's LIMIT written into the statement, not bound: PostgreSQL then plans a
    prepared page query once (a generic plan: a parameter in LIMIT makes it plan for 10 %
    of the table, a parallel scan, so it replanned every execution, 0.3-1 ms each)."""
    return sa.literal_column(str(int(rows)), sa.Integer)


@functools.lru_cache(maxsize=512)
def _calls_page(present: frozenset[str], after: bool, limit: int) -> sa.Select[Any]:
    """The page query for one combination of filters and page size (built once: building
    is the costly part of a small query; the values are bound at execution)."""
    c = calls.c
    where = _call_conditions(present)
    if after:  # (arrived_at, id) < the cursor's, and arrived_at <= for the (x, arrived_at) indexes
        at, last_id = _param("after_at", c.arrived_at), _param("after_id", c.id)
        where += [c.arrived_at <= at, sa.tuple_(c.arrived_at, c.id) < sa.tuple_(at, last_id)]
    return (sa.select(*PAGE_COLUMNS).where(*where)
            .order_by(c.arrived_at.desc(), c.id.desc())
            .limit(_limit(limit)))


def _extras(ids: sa.ColumnElement[bool], sms_ids: sa.ColumnElement[bool]) -> Any:
    """What a list shows of its calls beyond their rows, for the calls `ids` selects: a
    row (kind 'w', call id, entry id, status) per worklist entry listing one, and (kind
    's', call id, SMS id, status) per SMS queued for one."""
    listed = (sa.select(sa.literal("w").label("kind"), worklist_calls.c.call_id,
                        worklist_entries.c.id, worklist_entries.c.status)
              .join(worklist_entries, worklist_entries.c.id == worklist_calls.c.entry_id)
              .where(ids))
    texted = sa.select(sa.literal("s"), sms_outbox.c.call_id, sms_outbox.c.id,
                       sms_outbox.c.status).where(sms_ids)
    return sa.union_all(listed, texted)


_EXTRAS = _extras(worklist_calls.c.call_id.in_(sa.bindparam("ids", expanding=True)),
                  sms_outbox.c.call_id.in_(sa.bindparam("ids", expanding=True)))
# PostgreSQL: the ids as one array parameter (as _ENTRY_CALLS_PG), so the statement is
# prepared once and keeps its plan.
_IDS_PG = sa.bindparam("ids", type_=postgresql.ARRAY(sa.Integer))
_EXTRAS_PG = _extras(worklist_calls.c.call_id == sa.any_(_IDS_PG),
                     sms_outbox.c.call_id == sa.any_(_IDS_PG))


async def _add_extras(conn: Reader, rows: list[dict[str, Any]]) -> None:
    """Each call's worklist entry (`worklist_id`, `worklist_status`) and latest SMS status
    (`sms_status`), null when it has none.

    A second statement for the page's calls, not joins in the page's own: PostgreSQL
    plans a page again on most executions (its best index depends on the values), and
    the joins made that planning 0.4-0.6 ms against 0.06-0.12 ms for the calls alone;
    this one keeps one plan. 0.3 ms less PostgreSQL CPU a page of 51 calls. Being its
    own statement, it sees the entries a moment after the page's calls (an entry
    handled in between shows handled)."""
    by_id: dict[int, dict[str, Any]] = {}
    for row in rows:
        row["worklist_id"] = row["worklist_status"] = row["sms_status"] = None
        by_id[row["id"]] = row
    if not by_id:
        return
    pg = conn.dialect.name == "postgresql"
    found = await fetch.rows(conn, _EXTRAS_PG if pg else _EXTRAS, {"ids": list(by_id)})
    latest_sms: dict[int, int] = {}
    for kind, call_id, row_id, status in found:
        row = by_id[call_id]
        if kind == "w":
            row["worklist_id"], row["worklist_status"] = row_id, status
        elif row_id > latest_sms.get(call_id, 0):
            latest_sms[call_id] = row_id
            row["sms_status"] = status


def _filter_values(f: Any) -> dict[str, Any]:
    return {name: getattr(f, name) for name in f.__slots__ if getattr(f, name) is not None}


def _call_filter_values(f: CallFilter) -> tuple[frozenset[str], dict[str, Any]]:
    """The condition keys of a CallFilter and the values they bind."""
    params = _filter_values(f)
    if params.get("resolution") == NO_RESOLUTION:
        del params["resolution"]
        return frozenset(params) | {NO_RESOLUTION_KEY}, params
    return frozenset(params), params


async def _dicts(conn: AsyncConnection, stmt: sa.Executable, params: dict[str, Any]
                 ) -> list[dict[str, Any]]:
    result = await conn.execute(stmt, params)
    keys = list(map(str, result.keys()))  # plain str: faster to JSON
    return [dict(zip(keys, row, strict=True)) for row in result.all()]


async def list_calls(conn: Reader, f: CallFilter, limit: int,
                     after: tuple[datetime, int] | None = None) -> list[dict[str, Any]]:
    """Up to `limit` calls matching `f`, newest first, after the keyset position `after`
    (their `PAGE_COLUMNS`, and `_add_extras`)."""
    present, params = _call_filter_values(f)
    stmt = _calls_page(present, after is not None, limit)
    if after is not None:
        params["after_at"], params["after_id"] = after
    rows = await fetch.dicts(conn, stmt, params)
    await _add_extras(conn, rows)
    return rows


async def get_call(conn: AsyncConnection, call_id: int) -> dict[str, Any] | None:
    """One call with its attempts in order, or None."""
    row = (await conn.execute(sa.select(*CALL_COLUMNS).select_from(_worklist_of_calls())
                              .where(calls.c.id == call_id))).mappings().first()
    if row is None:
        return None
    call = dict(row)
    call["attempts"] = [dict(a) for a in (await conn.execute(
        sa.select(attempts).where(attempts.c.call_id == call_id)
        .order_by(attempts.c.seq))).mappings().all()]
    return call


async def update_call(conn: AsyncConnection, call_id: int, values: dict[str, Any]) -> bool:
    """Set category and/or note; False when there is no such call."""
    result = await conn.execute(sa.update(calls).where(calls.c.id == call_id)
                                .values(**values, updated_at=datetime.now(UTC)))
    return bool(result.rowcount)


@dataclass(frozen=True, slots=True)
class WorklistFilter:
    status: str | None = None
    line: str | None = None
    number: str | None = None
    start: datetime | None = None
    end: datetime | None = None


@dataclass(frozen=True, slots=True)
class WorklistPosition:
    """Where a worklist page ended: the last entry's (pending-first rank, first miss, id)."""

    rank: int
    first_missed_at: datetime
    id: int


def worklist_rank(status: str) -> int:
    """0 for pending entries (listed first), 1 for the rest."""
    return 0 if status == "pending" else 1


def worklist_position(entry: dict[str, Any]) -> WorklistPosition:
    return WorklistPosition(worklist_rank(entry["status"]), entry["first_missed_at"],
                            entry["id"])


_ENTRY_CALL_COLUMNS = (calls.c.id, calls.c.linkedid, calls.c.arrived_at, calls.c.outcome,
                       calls.c.reason, calls.c.ring_seconds, calls.c.wait_seconds,
                       calls.c.caller_name, calls.c.called_number)
"""What a worklist entry shows of each of its calls."""
# Plain str: SQLAlchemy's column names are a subclass of it, which JSON encodes slower.
_ENTRY_KEYS = tuple(str(col.name) for col in worklist_entries.c if col.name != "updated_at")
"""What a worklist page shows of an entry (when its row was last written: not shown)."""
_CALL_KEYS = tuple(str(col.name) for col in _ENTRY_CALL_COLUMNS)


@functools.lru_cache(maxsize=256)
def _worklist_page(statuses: tuple[str, ...], present: frozenset[str],
                   after_rank: int | None, rows: int) -> sa.Select[Any] | None:
    """One index range per status, each in page order and cut at the limit, merged; then
    each entry of the page joined to its calls (a row per call, in page order), so the
    page and its calls are one statement and one snapshot."""
    w = worklist_entries.c
    where: list[sa.ColumnElement[bool]] = []
    for name, column in (("line", w.line), ("number", w.number)):
        if name in present:
            where.append(column == _param(name, column))
    if "start" in present:
        where.append(w.first_missed_at >= _param("start", w.first_missed_at))
    if "end" in present:
        where.append(w.first_missed_at < _param("end", w.first_missed_at))
    limit = _limit(rows)
    parts = []
    for status in statuses:
        rank = worklist_rank(status)
        if after_rank is not None and rank < after_rank:
            continue
        cond = [w.status == status, *where]
        if rank == after_rank:
            at, last_id = _param("after_at", w.first_missed_at), _param("after_id", w.id)
            cond += [w.first_missed_at >= at,
                     sa.tuple_(w.first_missed_at, w.id) > sa.tuple_(at, last_id)]
        part = (sa.select(worklist_entries, sa.literal(rank, sa.Integer).label("rank"))
                .where(*cond).order_by(w.first_missed_at, w.id).limit(limit).subquery())
        parts.append(sa.select(part))
    if not parts:
        return None
    merged = (parts[0] if len(parts) == 1 else sa.union_all(*parts)).subquery("merged")
    page = (sa.select(merged).order_by(merged.c.rank, merged.c.first_missed_at, merged.c.id)
            .limit(limit).subquery("page"))
    return (sa.select(*(page.c[name] for name in _ENTRY_KEYS),
                      *(col.label(f"call_{col.name}") for col in _ENTRY_CALL_COLUMNS))
            .select_from(page.outerjoin(worklist_calls, worklist_calls.c.entry_id == page.c.id)
                         .outerjoin(calls, calls.c.id == worklist_calls.c.call_id))
            .order_by(page.c.rank, page.c.first_missed_at, page.c.id, calls.c.arrived_at,
                      calls.c.id))


def _entries_of(rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    """The entries of a page's rows (an entry's columns, then one of its calls' or nulls),
    each with its calls in order."""
    width = len(_ENTRY_KEYS)
    entries: list[dict[str, Any]] = []
    calls_of_entry: list[dict[str, Any]] = []
    last_id = None
    # ~2 us a row: no slice, strict zip or lookup more than needed (the statement's
    # columns are the entry's keys, then the call's, by construction).
    for row in rows:
        if row[0] != last_id or not entries:
            last_id = row[0]
            entry = dict(zip(_ENTRY_KEYS, row, strict=False))  # stops at the entry's columns
            calls_of_entry = entry["calls"] = []
            entries.append(entry)
        if row[width] is not None:
            calls_of_entry.append(dict(zip(_CALL_KEYS, row[width:], strict=False)))
    return entries


async def list_worklist(conn: Reader, f: WorklistFilter, limit: int,
                        after: WorklistPosition | None = None) -> list[dict[str, Any]]:
    """Entries, pending first, then oldest first (by first miss, then id); each with its calls.

    One index range per status (status, first_missed_at, id), each in order and
    cut at `limit`, merged: `pending first` needs no sort of the whole table,
    and a page starts where the last one ended (keyset). One statement: the
    entries and their calls come from the same snapshot.
    """
    params = _filter_values(f)
    status = params.pop("status", None)
    stmt = _worklist_page((status,) if status is not None else STATUSES, frozenset(params),
                          None if after is None else after.rank, limit)
    if stmt is None:
        return []
    if after is not None:
        params["after_at"], params["after_id"] = after.first_missed_at, after.id
    return _entries_of(await fetch.rows(conn, stmt, params))


async def get_entry(conn: AsyncConnection, entry_id: int) -> dict[str, Any] | None:
    row = (await conn.execute(sa.select(worklist_entries)
                              .where(worklist_entries.c.id == entry_id))).mappings().first()
    if row is None:
        return None
    entries = [dict(row)]
    await _attach_calls(conn, entries)
    return entries[0]


_ENTRY_CALLS_OF = (
    sa.select(worklist_calls.c.entry_id, *_ENTRY_CALL_COLUMNS)
    .join(calls, calls.c.id == worklist_calls.c.call_id)
    .order_by(calls.c.arrived_at, calls.c.id))
_ENTRY_CALLS = _ENTRY_CALLS_OF.where(
    worklist_calls.c.entry_id.in_(sa.bindparam("ids", expanding=True)))
# PostgreSQL: the ids as one array parameter; an expanding IN is re-rendered with a
# parameter per id on every execution (3 ms of Python for a page of 100 entries).
_ENTRY_CALLS_PG = _ENTRY_CALLS_OF.where(
    worklist_calls.c.entry_id == sa.any_(sa.bindparam("ids", type_=postgresql.ARRAY(sa.Integer))))


async def _attach_calls(conn: AsyncConnection, entries: Sequence[dict[str, Any]]) -> None:
    by_id = {e["id"]: e for e in entries}
    for e in entries:
        e["calls"] = []
    if not by_id:
        return
    stmt = _ENTRY_CALLS_PG if conn.dialect.name == "postgresql" else _ENTRY_CALLS
    for call in await _dicts(conn, stmt, {"ids": list(by_id)}):
        by_id[call.pop("entry_id")]["calls"].append(call)


async def pbx_has_calls(conn: AsyncConnection, pbx: str) -> bool:
    """Whether any call of `pbx` is stored (one probe of the (pbx, linkedid) index)."""
    found = await conn.execute(sa.select(calls.c.id).where(calls.c.pbx == pbx).limit(1))
    return found.first() is not None


async def stored_pbxs(conn: AsyncConnection) -> list[str]:
    """The PBXs with stored calls, in name order (a scan: for an error message, not a page)."""
    found = await conn.execute(sa.select(calls.c.pbx).distinct().order_by(calls.c.pbx))
    return [str(name) for (name,) in found]
