"""The database schema as SQLAlchemy Core tables (the migrations create exactly these).

One row per call, keyed by `(pbx, linkedid)`; its attempts in their own table;
worklist entries with a link table to the calls they list; follow-up calls. Times are
timezone-aware (UTC) timestamps on every database: `UtcDateTime` stores
naive UTC on SQLite, which has no time zone type, and hands back aware values.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Dialect

from callhub.records import FIELD_LIMITS as LIMITS

metadata = sa.MetaData()


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("UtcDateTime needs a timezone-aware datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.__class__ is datetime and value.tzinfo is UTC:  # asyncpg's timestamptz
            return value
        if isinstance(value, str):  # SQLite text from a raw query
            value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]
        return value.astimezone(UTC)  # type: ignore[no-any-return]


def _id() -> sa.Column[int]:
    return sa.Column("id", sa.Integer, primary_key=True, autoincrement=True)


calls = sa.Table(
    "calls", metadata,
    _id(),
    sa.Column("pbx", sa.String(64), nullable=False),
    sa.Column("linkedid", sa.String(64), nullable=False),
    sa.Column("direction", sa.String(16), nullable=False),
    sa.Column("line", sa.String(LIMITS["line"])),
    sa.Column("called_number", sa.String(LIMITS["called_number"])),
    sa.Column("caller_number", sa.String(LIMITS["caller_number"])),
    sa.Column("caller_name", sa.String(LIMITS["caller_name"])),
    # The outside party's number (caller inbound, dialled number outbound):
    # what the worklist matches on and the API's `number` filter.
    sa.Column("external_number", sa.String(64)),
    sa.Column("arrived_at", UtcDateTime(), nullable=False),
    sa.Column("ring_started_at", UtcDateTime()),
    sa.Column("answered_at", UtcDateTime()),
    sa.Column("ended_at", UtcDateTime(), nullable=False),
    sa.Column("ring_seconds", sa.Float, nullable=False),
    sa.Column("rings", sa.Integer, nullable=False),
    sa.Column("wait_seconds", sa.Float, nullable=False),
    sa.Column("talk_seconds", sa.Float, nullable=False),
    sa.Column("hold_seconds", sa.Float, nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(32)),
    sa.Column("voicemail", sa.Boolean, nullable=False),
    sa.Column("short_abandon", sa.Boolean, nullable=False),
    sa.Column("agent", sa.String(128)),
    sa.Column("agent_name", sa.String(LIMITS["agent_name"])),
    sa.Column("hangup_by", sa.String(16)),
    sa.Column("hangup_cause", sa.Integer),
    sa.Column("queue", sa.String(LIMITS["queue"])),
    sa.Column("incomplete", sa.Boolean, nullable=False),
    # A value from the PBX was cut to its column (records.bounded).
    sa.Column("truncated", sa.Boolean, nullable=False, server_default=sa.false()),
    # "ami" or "cel" (rebuilt from Asterisk's CEL table for a gap); CEL rings are estimated.
    sa.Column("source", sa.String(8), nullable=False, server_default="ami"),
    sa.Column("rings_estimated", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("transfers", sa.JSON, nullable=False),
    # Set by supervisors through the API; a rewrite of the call keeps them.
    sa.Column("category", sa.String(64)),
    sa.Column("note", sa.Text),
    # The caller's matter (issue 13), set by supervisors like category and note, with who
    # and when (callhub/store/resolution.py): resolved / referred (to `resolution_department`)
    # / pending / unresolved; null: none set yet. The writer's upsert never touches them.
    sa.Column("resolution", sa.String(16)),
    sa.Column("resolution_department", sa.String(128)),
    sa.Column("resolution_at", UtcDateTime()),
    sa.Column("resolution_by", sa.String(256)),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    sa.UniqueConstraint("pbx", "linkedid", name="uq_calls_pbx_linkedid"),
)
sa.Index("ix_calls_arrived", calls.c.arrived_at, calls.c.id)
sa.Index("ix_calls_outcome_arrived", calls.c.outcome, calls.c.arrived_at)
sa.Index("ix_calls_direction_arrived", calls.c.direction, calls.c.arrived_at)
sa.Index("ix_calls_line_arrived", calls.c.line, calls.c.arrived_at)
sa.Index("ix_calls_caller_number", calls.c.caller_number)
sa.Index("ix_calls_external_number", calls.c.external_number, calls.c.answered_at)
sa.Index("ix_calls_agent_arrived", calls.c.agent, calls.c.arrived_at)

attempts = sa.Table(
    "attempts", metadata,
    _id(),
    # The call's id. No foreign key: its check ran once per attempt COPYed (more than
    # half of an attempt's cost); the writer writes attempts only in the transaction that
    # merged their call, under the id it returned. Deleting calls deletes their attempts
    # by a trigger (migration 0012_attempts_cascade).
    sa.Column("call_id", sa.Integer, nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("interface", sa.String(128), nullable=False),
    sa.Column("agent_name", sa.String(LIMITS["agent_name"])),
    sa.Column("offered_at", UtcDateTime(), nullable=False),
    sa.Column("ring_started_at", UtcDateTime()),
    sa.Column("ended_at", UtcDateTime()),
    sa.Column("result", sa.String(16)),
    sa.Column("ring_seconds", sa.Float, nullable=False),
    sa.UniqueConstraint("call_id", "seq", name="uq_attempts_call_seq"),
)

agents = sa.Table(
    "agents", metadata,
    _id(),
    sa.Column("pbx", sa.String(64), nullable=False),
    sa.Column("interface", sa.String(128), nullable=False),
    sa.Column("name", sa.String(256)),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    sa.UniqueConstraint("pbx", "interface", name="uq_agents_pbx_interface"),
)

worklist_entries = sa.Table(
    "worklist_entries", metadata,
    _id(),
    sa.Column("pbx", sa.String(64), nullable=False),
    sa.Column("number", sa.String(64), nullable=False),
    sa.Column("line", sa.String(128), nullable=False),  # '' when the call had none
    sa.Column("status", sa.String(16), nullable=False),  # pending / handled / dismissed
    sa.Column("first_missed_at", UtcDateTime(), nullable=False),
    sa.Column("last_missed_at", UtcDateTime(), nullable=False),
    sa.Column("call_count", sa.Integer, nullable=False),
    sa.Column("handled_at", UtcDateTime()),
    sa.Column("handled_by", sa.String(256)),
    sa.Column("how", sa.String(16)),  # callback / called_again / manual
    sa.Column("handled_call_id", sa.Integer,
              sa.ForeignKey("calls.id", ondelete="SET NULL")),
    sa.Column("time_to_callback_seconds", sa.Float),
    sa.Column("note", sa.Text),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
)
# One open entry per caller number and line.
sa.Index("uq_worklist_open", worklist_entries.c.number, worklist_entries.c.line, unique=True,
         sqlite_where=worklist_entries.c.status == "pending",
         postgresql_where=worklist_entries.c.status == "pending")
sa.Index("ix_worklist_status_first_id", worklist_entries.c.status,
         worklist_entries.c.first_missed_at, worklist_entries.c.id)
sa.Index("ix_worklist_number_status", worklist_entries.c.number, worklist_entries.c.status)
sa.Index("ix_worklist_first_missed", worklist_entries.c.first_missed_at)

worklist_calls = sa.Table(
    "worklist_calls", metadata,
    sa.Column("entry_id", sa.Integer,
              sa.ForeignKey("worklist_entries.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("call_id", sa.Integer, sa.ForeignKey("calls.id", ondelete="CASCADE"),
              primary_key=True),
    sa.UniqueConstraint("call_id", name="uq_worklist_calls_call"),
)

# Calls the database refused for a reason of their own (not an outage), kept for an admin
# (`callhub db quarantine`) instead of blocking every later call. Free-size columns: the
# record that did not fit must fit here. `record_key` (a hash of the record) makes a
# second quarantine of the same record after a crash a no-op.
quarantine = sa.Table(
    "quarantine", metadata,
    _id(),
    sa.Column("record_key", sa.String(64), nullable=False),
    sa.Column("pbx", sa.Text, nullable=False),
    sa.Column("linkedid", sa.Text, nullable=False),
    sa.Column("record", sa.Text, nullable=False),  # CallRecord.to_dict() as JSON
    sa.Column("error", sa.Text, nullable=False),
    sa.Column("quarantined_at", UtcDateTime(), nullable=False),
    sa.UniqueConstraint("record_key", name="uq_quarantine_record_key"),
)


# Follow-up calls (callhub/store/followups.py keeps their logic).
followups = sa.Table(
    "followups", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("call_id", sa.Integer, sa.ForeignKey("calls.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("pbx", sa.String(64), nullable=False),
    sa.Column("number", sa.String(64), nullable=False),
    sa.Column("due_at", UtcDateTime(), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # open / done / cancelled
    sa.Column("source", sa.String(16), nullable=False),  # rule / manual
    sa.Column("category", sa.String(64)),  # the rule's category (source=rule)
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("created_by", sa.String(256)),
    sa.Column("closed_at", UtcDateTime()),
    sa.Column("closed_by", sa.String(256)),
    sa.Column("how", sa.String(16)),
    sa.Column("closed_call_id", sa.Integer, sa.ForeignKey("calls.id", ondelete="SET NULL")),
    sa.Column("note", sa.Text),
    # What the follow-up call found (issue 13), recorded when it is done: the matter's
    # state as the caller tells it (resolved / referred / pending / unresolved) and their
    # satisfaction (satisfied / fair / dissatisfied / unreachable), with who and when.
    sa.Column("outcome", sa.String(16)),
    sa.Column("satisfaction", sa.String(16)),
    sa.Column("rated_at", UtcDateTime()),
    sa.Column("rated_by", sa.String(256)),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
)
sa.Index("ix_followups_status_due", followups.c.status, followups.c.due_at)
sa.Index("ix_followups_call", followups.c.call_id)
sa.Index("ix_followups_number_status", followups.c.number, followups.c.status)
# A rule's follow-up exists once, even if the keeper and a request apply the rule at once.
sa.Index("uq_followups_rule", followups.c.call_id, followups.c.category, followups.c.due_at,
         unique=True, sqlite_where=followups.c.source == "rule",
         postgresql_where=followups.c.source == "rule")


def utc(ts: float | None) -> datetime | None:
    """POSIX seconds to an aware UTC datetime."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC)



# The scheduled report mails (callhub/store/mailings.py): one row per period mailed, claimed
# before sending, so two daemons or a restart never mail a period twice.
report_mailings = sa.Table(
    "report_mailings", metadata,
    sa.Column("period_kind", sa.String(8), primary_key=True),  # day / week / month
    sa.Column("period_start", sa.Date, primary_key=True),  # the period's first local date
    sa.Column("claimed_at", UtcDateTime(), nullable=False),
    sa.Column("sent_at", UtcDateTime()),  # None while the claim's send is under way
    sa.Column("recipients", sa.Text, nullable=False),  # comma-separated addresses
)


# The SMS after the call (issue 13): the outbox written in the call's transaction and
# drained by callhub.sms.SmsWorker (callhub/store/sms_outbox.py), and the opt-out list.
# status: queued -> sending (leased until lease_until) -> sent | failed | expired;
# a retry goes back to queued. `idempotency_key` (per call and kind) makes a replayed
# call queue nothing twice and is sent with every attempt.
PROVIDER_ID_LENGTH = 128  # the gateway's id of a message sent; longer ones are cut
sms_outbox = sa.Table(
    "sms_outbox", metadata,
    _id(),
    sa.Column("idempotency_key", sa.String(64), nullable=False),
    sa.Column("pbx", sa.String(64), nullable=False),
    sa.Column("linkedid", sa.String(64), nullable=False),
    sa.Column("call_id", sa.Integer, sa.ForeignKey("calls.id", ondelete="SET NULL")),
    sa.Column("kind", sa.String(16), nullable=False),  # answered / missed
    sa.Column("line", sa.String(128)),
    sa.Column("to_number", sa.String(64), nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("params", sa.JSON, nullable=False),
    sa.Column("template_code", sa.String(64)),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", UtcDateTime(), nullable=False),
    sa.Column("lease_until", UtcDateTime()),
    sa.Column("last_error", sa.Text),
    sa.Column("provider_id", sa.String(PROVIDER_ID_LENGTH)),
    sa.Column("call_ended_at", UtcDateTime(), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("sent_at", UtcDateTime()),
    sa.UniqueConstraint("idempotency_key", name="uq_sms_outbox_idempotency_key"),
)
sa.Index("ix_sms_outbox_status_due", sms_outbox.c.status, sms_outbox.c.next_attempt_at)
sa.Index("ix_sms_outbox_to_created", sms_outbox.c.to_number, sms_outbox.c.created_at)
sa.Index("ix_sms_outbox_call", sms_outbox.c.call_id)
sa.Index("ix_sms_outbox_created", sms_outbox.c.created_at)

sms_optouts = sa.Table(
    "sms_optouts", metadata,
    sa.Column("number", sa.String(64), primary_key=True),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("by", sa.String(256)),
)

# The rotation position of each rota line (issue 11): the agent offered the line's last
# call and that agent's rotation index, shared by both instances of a pair. Routing also
# keeps it in a local file, which answers while the database is down.
rotation_positions = sa.Table(
    "rotation_positions", metadata,
    sa.Column("line", sa.String(128), primary_key=True),
    sa.Column("agent", sa.String(128), nullable=False),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("moved_at", UtcDateTime(), nullable=False),
)

# Issue 15: the calls of each (pbx, line, UTC hour) counted and binned, kept by the writer in
# the transaction that stores them (callhub/store/rollup.py), so /stats over a month reads
# a few thousand rows instead of tens of thousands of calls. `rings_le` counts the answered
# inbound calls by rings, cumulatively; the *_bins columns are their binned wait and ring
# time, sorted, comma-separated: a histogram spelled out. The resolution and satisfaction
# counts are those callhub/store/resolution_stats.py gives.
# The values a call's resolution and a follow-up's satisfaction take (callhub/store/resolution.py).
RESOLUTIONS = ("resolved", "referred", "pending", "unresolved")
SATISFACTIONS = ("satisfied", "fair", "dissatisfied", "unreachable")
# The name of each resolution's count, in the rollup and in /stats (each satisfaction's is its
# own name).
RESOLUTION_COUNTS = {"resolved": "resolved", "referred": "referred",
                     "pending": "resolution_pending", "unresolved": "unresolved"}
ROLLUP_COUNTS = (*RESOLUTION_COUNTS.values(), *SATISFACTIONS)
INT_LIST = sa.JSON().with_variant(ARRAY(sa.Integer), "postgresql")
call_hours = sa.Table(
    "call_hours", metadata,
    sa.Column("pbx", sa.String(64), nullable=False),
    sa.Column("line", sa.String(LIMITS["line"])),
    sa.Column("hour", sa.BigInteger, nullable=False),  # floor(POSIX seconds / 3600), UTC
    sa.Column("outbound", sa.Integer, nullable=False),
    sa.Column("short_abandons", sa.Integer, nullable=False),
    sa.Column("answered", sa.Integer, nullable=False),
    sa.Column("abandoned", sa.Integer, nullable=False),  # short abandons not included
    sa.Column("missed", sa.Integer, nullable=False),
    sa.Column("other_inbound", sa.Integer, nullable=False),  # inbound, any other outcome
    sa.Column("hangup_known", sa.Integer, nullable=False),  # answered, hangup_by known
    sa.Column("agent_hung_up_first", sa.Integer, nullable=False),
    sa.Column("ring_sum", sa.Float, nullable=False),  # answered
    sa.Column("wait_sum", sa.Float, nullable=False),  # answered
    sa.Column("rings_le", INT_LIST, nullable=False),  # [n-1]: answered with rings <= n
    sa.Column("wait_bins", sa.Text, nullable=False),  # ceil(wait_seconds), 86401: more
    sa.Column("ring_bins", sa.Text, nullable=False),  # ceil(ring_seconds * 10)
    *(sa.Column(name, sa.Integer, nullable=False) for name in ROLLUP_COUNTS),
    sa.Column("changed_at", UtcDateTime(), nullable=False),
)
sa.Index("ix_call_hours_hour_pbx", call_hours.c.hour, call_hours.c.pbx, call_hours.c.changed_at)
# What the stats cache checks of a period's worklist (callhub/store/stats_cache.py) and
# what /stats counts of it (callhub/store/stats.py), read from the index alone.
sa.Index("ix_worklist_first_missed_figures", worklist_entries.c.first_missed_at,
         worklist_entries.c.updated_at, worklist_entries.c.pbx, worklist_entries.c.status,
         postgresql_include=["time_to_callback_seconds"])
