"""A call record as the rows of `calls` and `attempts`, for both ways of writing them.

The values come as tuples in column order (what a COPY sends) and, for the
executemany path, as dicts built from the same tuples, so the two ways
cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from callhub.records import CallRecord, iso
from callhub.store.tables import utc

# The columns of `calls` the writer sets, in table order (not the id, nor the
# supervisors' category and note: a rewrite of the call keeps those).
CALL_COLUMNS = (
    "pbx", "linkedid", "direction", "line", "called_number", "caller_number", "caller_name",
    "external_number", "arrived_at", "ring_started_at", "answered_at", "ended_at",
    "ring_seconds", "rings", "wait_seconds", "talk_seconds", "hold_seconds", "outcome",
    "reason", "voicemail", "short_abandon", "agent", "agent_name", "hangup_by",
    "hangup_cause", "queue", "incomplete", "truncated", "source", "rings_estimated",
    "transfers", "updated_at",
)
TRANSFERS = CALL_COLUMNS.index("transfers")
# The times among them (at these positions), and the last one, set by the batch.
TIME_COLUMNS = ("arrived_at", "ring_started_at", "answered_at", "ended_at")
ARRIVED = CALL_COLUMNS.index("arrived_at")
assert CALL_COLUMNS[ARRIVED:ARRIVED + len(TIME_COLUMNS)] == TIME_COLUMNS
assert CALL_COLUMNS[-1] == "updated_at"
# The other columns of `calls`, set by supervisors: a rewrite of the call keeps them.
KEPT_COLUMNS = ("category", "note", "resolution", "resolution_department", "resolution_at",
                "resolution_by")
ATTEMPT_COLUMNS = ("call_id", "seq", "interface", "agent_name", "offered_at",
                   "ring_started_at", "ended_at", "result", "ring_seconds")


def call_plain(r: CallRecord) -> tuple[Any, ...]:
    """A CallRecord as the values of `CALL_COLUMNS` but the last (`updated_at`), its times
    (`TIME_COLUMNS`) as POSIX seconds, transfers as a list of dicts."""
    return (
        r.pbx, r.linkedid, r.direction, r.line, r.called_number, r.caller_number,
        r.caller_name, r.external_number, r.arrived_at, r.ring_started_at,
        r.answered_at, r.ended_at, r.ring_seconds, r.rings, r.wait_seconds,
        r.talk_seconds, r.hold_seconds, r.outcome, r.reason, r.voicemail, r.short_abandon,
        r.agent, r.agent_name, r.hangup_by, r.hangup_cause, r.queue, r.incomplete,
        r.truncated, r.source, r.rings_estimated,
        [{"type": t.type, "to": t.to, "at": iso(t.at)} for t in r.transfers],
    )


def call_values(r: CallRecord, now: datetime) -> tuple[Any, ...]:
    """A CallRecord as the values of `CALL_COLUMNS` (transfers as a list of dicts)."""
    v = call_plain(r)
    return (*v[:ARRIVED], utc(r.arrived_at), utc(r.ring_started_at), utc(r.answered_at),
            utc(r.ended_at), *v[ARRIVED + len(TIME_COLUMNS):], now)


def call_row(record: CallRecord, now: datetime) -> dict[str, Any]:
    """A CallRecord as a `calls` row (no id, no supervisor fields)."""
    return dict(zip(CALL_COLUMNS, call_values(record, now), strict=True))


def attempt_tails(records: Sequence[CallRecord]) -> list[tuple[Any, ...]]:
    """The records' attempts as values of `ATTEMPT_COLUMNS` with, for the call's id (not
    known before the call is stored), the record's index in `records`. (One flat list:
    a list a call, alive through a batch, was a tenth of what a backlog promoted to the
    collector's oldest generation.)"""
    return [(n, seq, a.interface, a.agent_name, utc(a.offered_at), utc(a.ring_started_at),
             utc(a.ended_at), a.result, a.ring_seconds)
            for n, record in enumerate(records)
            for seq, a in enumerate(record.attempts, start=1)]


def with_ids(ids: Sequence[int], tails: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """`attempt_tails` of records stored as `ids`: values of `ATTEMPT_COLUMNS`."""
    return [(ids[tail[0]], *tail[1:]) for tail in tails]
