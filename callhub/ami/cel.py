"""The CEL interpreter: rows of Asterisk's CEL table in, call records out.

For calls no AMI session saw (callhub was down or reconnecting), Asterisk's
Channel Event Logging still has them: cel_pgsql writes one row per channel
event (columns `eventtime` in UTC, `eventtype` the event's name, `channame`,
`uniqueid`, `linkedid`, `context`, `exten`, `appname`, `appdata`, `cid_num`,
`cid_name`, `peer`, `extra` JSON, ...). Like the correlator this is pure and
deterministic: rows in (ordered by eventtime, then id), records out, no I/O.

A call is the rows sharing one `linkedid`; it is finished at its LINKEDID_END
and then interpreted as a whole, by DESIGN.md's definitions:

- the *origin* is the call's first channel (uniqueid = linkedid) with its Local
  other half; its CHAN_START context gives the direction;
- a *leg* is any other channel (a Local pair is one leg). A channel dialled by
  Dial inherits the dialling channel's extension, which is how a device leg
  (`PJSIP/1001`) is told to belong to the Local ring-group member that dialled
  it (`Local/1001@ext-local`): the attempt is the device's, as on AMI;
- an agent leg is answered at its ANSWER; its other results come from the
  HANGUP `extra` (hangupcause, and the dialling channel's dialstatus:
  CANCEL means the caller left while it rang). PICKUP moves the picker's
  channel into the picked call, answered at the pickup;
- a channel whose rows come to carry an older open call's linkedid (a SIP
  attended transfer's consulted agent, a phone retrieving a parked call) moves
  into that call with its earlier rows, as on AMI (`CelInterpreter`);
- CEL has no ringing event: an offer rings from its leg's CHAN_START to its
  ANSWER or its end (an offer that ends busy or unavailable never rang), and
  every record from here says so with `rings_estimated`;
- hangup_by comes from the first HANGUP after the answer, its `hangupsource`
  naming the channel whose side hung up; hold time from the music-on-hold
  STREAM_BEGIN/STREAM_END on the caller's channel.

What CEL cannot carry (the dialplan's routing result, ringing indications)
is documented beside the trace tests in tests/test_cel.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from callhub.ami.callrules import (
    ANSWERED_ELSEWHERE_CAUSE,
    BUSY_CAUSES,
    UNAVAILABLE_CAUSES,
    clean,
    ring_span,
    rings_for,
    start_direction,
    unanswered_outcome,
    waiting_reason,
)
from callhub.ami.correlator import base_of, interface_of
from callhub.config import PbxConfig
from callhub.records import (
    Attempt,
    AttemptResult,
    CallRecord,
    Direction,
    HangupBy,
    Outcome,
    Transfer,
)

CelRow = Mapping[str, Any]

# cel_pgsql's columns (Asterisk's documented `cel` table plus `extra`), in its order.
CEL_COLUMNS = (
    "eventtype", "eventtime", "userdeftype", "cid_name", "cid_num", "cid_ani", "cid_rdnis",
    "cid_dnid", "exten", "context", "channame", "appname", "appdata", "amaflags",
    "accountcode", "peeraccount", "uniqueid", "linkedid", "userfield", "peer", "extra",
)
# Rows this close together describe one moment (a hangup and the hangups it causes).
SAME_MOMENT = 0.5
FINISHED_MEMORY = 4096
_FAILED_DIALS = frozenset({"BUSY", "NOANSWER", "CHANUNAVAIL", "CONGESTION"})
_SYSTEM_HANGUP = "dialplan/builtin"


def row_time(value: Any) -> float:
    """A row's `eventtime` as POSIX seconds; a time without zone is UTC (usegmtime=yes)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value.strip())
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return float(value.timestamp())
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise ValueError(f"eventtime {value!r} is not a time")


@dataclass(frozen=True, slots=True)
class _Row:
    """One CEL row, the fields the interpreter reads."""

    seq: int
    at: float
    type: str
    channel: str
    uniqueid: str
    linkedid: str
    context: str
    exten: str
    app: str
    appdata: str
    cid_num: str
    cid_name: str
    extra: Mapping[str, Any]

    @property
    def base(self) -> str:
        return base_of(self.channel)


def _parse(row: CelRow, seq: int) -> _Row:
    def text(key: str) -> str:
        value = row.get(key)
        return "" if value is None else str(value)

    linkedid, uniqueid = text("linkedid"), text("uniqueid")
    if not linkedid or not uniqueid:
        raise ValueError("a CEL row without linkedid or uniqueid")
    extra: Mapping[str, Any] = {}
    if text("extra"):
        try:
            loaded = json.loads(text("extra"))
        except ValueError:
            loaded = None
        extra = loaded if isinstance(loaded, dict) else {}
    return _Row(seq=seq, at=row_time(row.get("eventtime")), type=text("eventtype"),
                channel=text("channame"), uniqueid=uniqueid, linkedid=linkedid,
                context=text("context"), exten=text("exten"), app=text("appname"),
                appdata=text("appdata"), cid_num=text("cid_num"), cid_name=text("cid_name"),
                extra=extra)


@dataclass(slots=True)
class _Adrift:
    """A channel still up when its call's linkedid ended: it carries another linkedid now
    (Asterisk gave it an older call's in a bridge) and its next row tells which."""

    home: str  # the linkedid it left
    rows: list[_Row]  # its rows there
    own: bool  # it started that call (a phone that retrieved a parked call)


class CelInterpreter:
    """Groups CEL rows into calls; `feed` returns the calls a row finished.

    A channel whose rows come to carry another open call's linkedid moves into that call,
    as the correlator's does (`Correlator._move`): a SIP phone's attended transfer to the
    agent it consulted, a phone retrieving a parked call. Its earlier rows go with it (the
    consult call's offer and answer of the agent become the caller's call's), and the call it
    left records without it; a call whose own first channel moved (the retriever's) is no
    record of its own. The caller's channel of an inbound call never moves: its rows stay
    with its call, which then ends when that channel does. CEL writes no row for the change
    of linkedid; the bridging row still carries the old one, and a linkedid whose last
    channel changed it ends (`LINKEDID_END`) while that channel is up."""

    def __init__(self, pbx: PbxConfig) -> None:
        self.pbx = pbx
        self._calls: dict[str, list[_Row]] = {}
        self._moved: dict[str, str] = {}  # uniqueid -> linkedid of the call it was picked into
        self._home: dict[str, str] = {}  # uniqueid of a live channel -> the call its rows go to
        self._gone: dict[str, set[str]] = {}  # linkedid -> its uniqueids moved into another
        self._joined: dict[str, set[str]] = {}  # linkedid -> channels that left calls of their own
        self._origins: dict[str, tuple[str, bool]] = {}  # linkedid -> (origin's base, inbound)
        self._outliving: set[str] = set()  # inbound calls whose linkedid ended, caller still up
        self._adrift: dict[str, _Adrift] = {}  # uniqueid -> the call it left, not yet arrived
        self._pending: dict[str, tuple[list[_Row], _Row]] = {}  # calls all of whose channels
        # left for another linkedid, the first of them its own: no record once one arrives
        self._finished: dict[str, None] = {}
        self._seq = 0
        self.errors = 0  # rows that could not be read (counted, skipped)

    def feed(self, row: CelRow) -> list[CallRecord]:
        """Take one row (in eventtime, id order); return the calls it finished, if any."""
        self._seq += 1
        try:
            parsed = _parse(row, self._seq)
        except (ValueError, TypeError):
            self.errors += 1
            return []
        if parsed.type == "LINKEDID_END":
            return self._finish(parsed.linkedid, parsed, complete=True)
        target, records = self._call_of(parsed)
        if target in self._finished:
            return records  # a late row of a call already rebuilt
        self._calls.setdefault(target, []).append(parsed)
        if parsed.type == "CHAN_START" and parsed.uniqueid == target:
            self._origins[target] = (parsed.base, start_direction(parsed.context, self.pbx)
                                     == "inbound")
        if parsed.type == "CHAN_END":
            self._home.pop(parsed.uniqueid, None)
            self._adrift.pop(parsed.uniqueid, None)
            if target in self._outliving and not self._alive(target, origin=True):
                self._outliving.discard(target)
                return records + self._finish(target, parsed, complete=True)
        else:
            self._home[parsed.uniqueid] = target
        if parsed.type == "PICKUP":
            picker = str(parsed.extra.get("pickup_channel_uniqueid") or "")
            if picker:
                self._moved[picker] = target
                home = self._home.get(picker)
                if home is not None and home != target:
                    self._gone.setdefault(home, set()).add(picker)
                    self._home[picker] = target
        return records

    def flush(self) -> list[CallRecord]:
        """Every call still open (its LINKEDID_END not among the rows), flagged incomplete."""
        pending = [self._pending_record(linkedid) for linkedid in list(self._pending)]
        return pending + [record for linkedid in list(self._calls)
                          for record in self._finish(linkedid, None, complete=False)]

    @property
    def open_calls(self) -> int:
        return len(self._calls) + len(self._pending)

    def _call_of(self, row: _Row) -> tuple[str, list[CallRecord]]:
        """The call `row` belongs to, and the records a channel's arrival there finished."""
        uniqueid = row.uniqueid
        target = self._moved.get(uniqueid, row.linkedid)
        home = self._home.get(uniqueid)
        if home is not None and home != target and home in self._calls:
            if target not in self._calls or self._stays(home, row):
                return home, []  # the caller's own channel, or a call not among the rows
            rows = [r for r in self._calls[home] if r.uniqueid == uniqueid]
            own = uniqueid == home
            self._gone.setdefault(home, set()).add(uniqueid)
            self._arrive(target, rows, row.base if own else None)
            return target, []
        adrift = self._adrift.get(uniqueid)
        if adrift is None or adrift.home == target:
            return target, []
        del self._adrift[uniqueid]
        if target not in self._calls:
            # nowhere to arrive among the rows: the call it left records as it was
            return target, ([self._pending_record(adrift.home)]
                            if adrift.home in self._pending else [])
        self._pending.pop(adrift.home, None)  # its own call is no record: it joined this one
        self._arrive(target, adrift.rows, row.base if adrift.own else None)
        return target, []

    def _arrive(self, linkedid: str, rows: list[_Row], own: str | None) -> None:
        """A channel's rows in the call it left join `linkedid`'s, in row order; `own`: the
        channel's base when it started the call it left (a leg here, and no attempt)."""
        self._calls[linkedid] = sorted([*self._calls[linkedid], *rows], key=lambda r: r.seq)
        if own is not None:
            self._joined.setdefault(linkedid, set()).add(own)

    def _stays(self, home: str, row: _Row) -> bool:
        """The caller's own channel of an inbound call never leaves its call."""
        base, inbound = self._origins.get(home, ("", False))
        return inbound and row.base == base

    def _alive(self, linkedid: str, origin: bool = False) -> set[str]:
        """The channels of an open call that are up (of its origin only, with `origin`)."""
        rows = self._calls.get(linkedid, [])
        ended = {r.uniqueid for r in rows if r.type == "CHAN_END"}
        base = self._origins.get(linkedid, ("", False))[0]
        return {r.uniqueid for r in rows if r.uniqueid not in ended
                and self._home.get(r.uniqueid) == linkedid
                and (not origin or r.base == base)}

    def _finish(self, linkedid: str, end: _Row | None, complete: bool) -> list[CallRecord]:
        rows = self._calls.get(linkedid)
        if rows is None:
            return []
        alive = self._alive(linkedid) if end is not None else set()
        if alive and self._alive(linkedid, origin=True) and self._origins.get(
                linkedid, ("", False))[1]:
            self._outliving.add(linkedid)  # the caller talks on under an older linkedid
            return []
        del self._calls[linkedid]
        self._finished[linkedid] = None
        if len(self._finished) > FINISHED_MEMORY:
            del self._finished[next(iter(self._finished))]
        gone = self._gone.pop(linkedid, set())
        origin = self._origins.pop(linkedid, ("", False))[0]
        self._outliving.discard(linkedid)
        channels = {row.uniqueid for row in rows}
        for uniqueid in channels:
            if self._home.get(uniqueid) == linkedid:
                del self._home[uniqueid]
        for uniqueid in [u for u, target in self._moved.items() if target == linkedid]:
            del self._moved[uniqueid]
        for uniqueid in alive:
            mine = [row for row in rows if row.uniqueid == uniqueid]
            self._adrift[uniqueid] = _Adrift(linkedid, mine, mine[0].base == origin)
            if len(self._adrift) > FINISHED_MEMORY:
                del self._adrift[next(iter(self._adrift))]
        joined = self._joined.pop(linkedid, set())
        if channels <= gone:
            return []  # a picker's own call: its only channel joined the call it picked up
        if channels <= gone | alive and linkedid in alive and end is not None:
            self._pending[linkedid] = (rows, end)  # its channel is on its way to another call
            return []
        ended_at = end.at if end is not None else rows[-1].at
        return [_CallBuilder(self.pbx, linkedid, rows, ended_at, complete, joined).record()]

    def _pending_record(self, linkedid: str) -> CallRecord:
        rows, end = self._pending.pop(linkedid)
        return _CallBuilder(self.pbx, linkedid, rows, end.at, True, set()).record()


def interpret(rows: Iterable[CelRow], pbx: PbxConfig) -> list[CallRecord]:
    """Every call in `rows` (ordered by eventtime, then id); calls without their
    LINKEDID_END come last, flagged incomplete."""
    interpreter = CelInterpreter(pbx)
    records = [record for row in rows for record in interpreter.feed(row)]
    return records + interpreter.flush()


@dataclass(slots=True)
class _Leg:
    """A channel of the call other than the origin (a Local pair is one leg)."""

    base: str
    name: str
    seq: int
    offered_at: float
    own_exten: str | None = None  # what a Local leg runs: its CHAN_START extension
    dial_exten: str | None = None  # the extension it inherited from the channel that dialled it
    answered_at: float | None = None
    answer_seq: int = 0
    ended_at: float | None = None
    causes: set[int] = field(default_factory=set)
    picked: bool = False  # another device picked up the call it was ringing with
    picker: bool = False  # it picked the call up
    joined: bool = False  # it left a call of its own for this one (retrieved a parked call)
    parent: _Leg | None = None  # the Local leg that dialled it
    carrier: bool = False  # a Local leg that dialled a device
    result: AttemptResult | None = None

    @property
    def local(self) -> bool:
        return self.name.startswith("Local/")

    @property
    def interface(self) -> str:
        return interface_of(self.name)

    @property
    def end(self) -> float | None:
        return self.answered_at if self.result == "answered" else self.ended_at


class _CallBuilder:
    """One finished call's rows turned into its record (DESIGN.md's definitions)."""

    def __init__(self, pbx: PbxConfig, linkedid: str, rows: list[_Row], ended_at: float,
                 complete: bool, joined: set[str]) -> None:
        self.pbx = pbx
        self.joined = joined  # channels that left calls of their own for this one
        self.linkedid = linkedid
        self.rows = rows
        self.ended_at = ended_at
        starts = [r for r in rows if r.type == "CHAN_START"]
        first = next((r for r in starts if r.uniqueid == linkedid), None)
        self.incomplete = not complete or first is None
        origin_row = first or (starts[0] if starts else rows[0])
        self.origin = origin_row.base
        self.origin_name = origin_row.channel
        self.arrived_at = origin_row.at
        self.direction: Direction = start_direction(origin_row.context, pbx)
        self.did: str | None = None
        self.called_number: str | None = None
        # `s`: no number yet (a channel an Originate created, a trunk without DID); an
        # outbound call's number is then the extension its dialplan dials.
        if self.direction == "inbound":
            self.did = clean(origin_row.exten) if origin_row.exten != "s" else None
        elif self.direction == "outbound":
            self.called_number = clean(origin_row.exten) if origin_row.exten != "s" else None
        self.caller_number: str | None = None
        self.caller_name: str | None = None
        self.origin_extens: set[str] = set()
        self.names: set[str] = {r.channel for r in rows}
        self.legs: dict[str, _Leg] = {}
        self.queue: str | None = None
        self.queued = False
        self.voicemail = False
        self.last_app: str | None = None  # the origin's application before it hung up
        self.first_hangup: _Row | None = None  # the origin's first HANGUP
        self.dialstatus = ""
        self.hangup_cause: int | None = None
        self.transfers: list[tuple[_Row, Transfer]] = []  # in row order
        for row in rows:
            self._read(row)

    # -- first pass: what each row says ------------------------------------------------

    def _read(self, row: _Row) -> None:
        if row.app == "VoiceMail":
            self.voicemail = True
        if row.base == self.origin:
            self._read_origin(row)
        elif row.channel:
            self._read_leg(row)
        if row.type == "PICKUP":
            self._read_pickup(row)
        elif row.type == "BLINDTRANSFER":
            target = f"{row.extra.get('extension', '')}@{row.extra.get('context', '')}"
            self.transfers.append((row, Transfer(type="blind", to=target, at=row.at)))
        elif row.type == "ATTENDEDTRANSFER":
            self.transfers.append((row, Transfer(type="attended", to="", at=row.at)))

    def _read_origin(self, row: _Row) -> None:
        if row.exten:
            self.origin_extens.add(row.exten)
        if row.exten in self.pbx.voicemail_extensions:
            self.voicemail = True
        self._take_callerid(row)
        # The origin's first row in an outbound context with a number: CEL logs no Dial of
        # the caller's, and an originated channel's next row may be its bridge after the
        # far end answered, or its hangup when nobody did; both still carry the number.
        if (row.context in self.pbx.outbound_contexts and row.exten not in ("", "s")
                and (self.direction == "internal"
                     or (self.direction == "outbound" and self.called_number is None))):
            self.direction = "outbound"
            self.called_number = clean(row.exten)
        if self.first_hangup is None and row.app and row.type not in ("HANGUP", "CHAN_END"):
            self.last_app = row.app
        if row.app == "Queue":
            self.queued = True
            self.queue = self.queue or clean(row.appdata.split(",")[0])
        if row.type == "HANGUP":
            if self.first_hangup is None:
                self.first_hangup = row
            status = str(row.extra.get("dialstatus") or "")
            self.dialstatus = status or self.dialstatus
            cause = row.extra.get("hangupcause")
            if self.hangup_cause is None and isinstance(cause, int):
                self.hangup_cause = cause

    def _take_callerid(self, row: _Row) -> None:
        number, name = clean(row.cid_num), clean(row.cid_name)
        if self.direction != "outbound" and not self._answered_so_far():
            # the caller ID as presented up to the answer (it may be set after the start);
            # an outbound call keeps the one it had when it dialled out
            self.caller_number = number or self.caller_number
            self.caller_name = name or self.caller_name
        else:
            self.caller_number = self.caller_number or number
            self.caller_name = self.caller_name or name

    def _answered_so_far(self) -> bool:
        return any(leg.answered_at is not None for leg in self.legs.values())

    def _read_leg(self, row: _Row) -> None:
        leg = self.legs.get(row.base)
        if leg is None:
            leg = self.legs[row.base] = _Leg(row.base, row.channel, row.seq, row.at,
                                             joined=row.base in self.joined)
        if row.type == "CHAN_START":
            if leg.local:
                leg.own_exten = row.exten or None
        elif leg.dial_exten is None and row.exten and not row.channel.endswith(";2"):
            leg.dial_exten = row.exten
        if row.type == "ANSWER" and leg.answered_at is None:
            leg.answered_at, leg.answer_seq = row.at, row.seq
        elif row.type == "HANGUP":
            leg.ended_at = leg.ended_at if leg.ended_at is not None else row.at
            cause = row.extra.get("hangupcause")
            if isinstance(cause, int):
                leg.causes.add(cause)

    def _read_pickup(self, row: _Row) -> None:
        rung = self.legs.get(row.base)
        if rung is not None:
            rung.picked = True
        name = str(row.extra.get("pickup_channel") or "")
        if not name or base_of(name) == self.origin:
            return
        self.names.add(name)
        picker = self.legs.get(base_of(name))
        if picker is None:
            picker = self.legs[base_of(name)] = _Leg(base_of(name), name, row.seq, row.at)
        picker.picker = True
        picker.offered_at = row.at
        picker.answered_at, picker.answer_seq = row.at, row.seq

    # -- the record ---------------------------------------------------------------------

    def record(self) -> CallRecord:
        legs = sorted(self.legs.values(), key=lambda leg: (leg.offered_at, leg.seq))
        self._link_carriers(legs)
        inbound = self.direction == "inbound"
        attempts = sorted((leg for leg in legs if inbound and self._is_attempt(leg)),
                          key=_offer_order)
        offers = attempts if inbound else [leg for leg in legs
                                           if not leg.carrier and not leg.joined]
        answered = [leg for leg in offers if leg.answered_at is not None]
        answering = min(answered, key=lambda leg: (leg.answered_at or 0.0, leg.answer_seq),
                        default=None)
        answered_at = answering.answered_at if answering is not None else None
        caller_left = None if answering is not None else self._caller_left(attempts)
        for leg in offers:
            leg.result = self._result(leg, attempts, caller_left)
        self._resolve_transfers(attempts)
        ring_started_at, ring_seconds = ring_span(
            ((leg.offered_at, self._ring_start(leg), leg.end) for leg in offers),
            answered_at, self.ended_at)
        hold_seconds, hangup_by = self._after_answer(answering)
        wait_until = answered_at if answered_at is not None else self.ended_at
        wait_seconds = max(wait_until - self.arrived_at, 0.0)
        outcome: Outcome = "answered"
        reason: str | None = None
        if answering is None:
            outcome, reason = unanswered_outcome(
                self.direction, caller_left[0] if caller_left else None, self.voicemail,
                False, [leg.result for leg in attempts])
        agent = answering.interface if inbound and answering is not None else None
        if not inbound:
            agent = interface_of(self.origin_name)
        return CallRecord(
            pbx=self.pbx.name,
            linkedid=self.linkedid,
            direction=self.direction,
            line=self.pbx.line_for(self.did) if inbound else None,
            called_number=self.did if inbound else self.called_number,
            caller_number=self.caller_number,
            caller_name=self.caller_name,
            arrived_at=self.arrived_at,
            ring_started_at=ring_started_at,
            answered_at=answered_at,
            ended_at=self.ended_at,
            ring_seconds=round(ring_seconds, 3),
            rings=rings_for(ring_seconds, self.pbx.ring_cadence_seconds),
            wait_seconds=round(wait_seconds, 3),
            talk_seconds=round(self.ended_at - answered_at, 3) if answered_at else 0.0,
            hold_seconds=round(hold_seconds, 3),
            outcome=outcome,
            reason=reason,
            voicemail=self.voicemail,
            short_abandon=(outcome == "abandoned"
                           and wait_seconds < self.pbx.short_abandon_seconds),
            agent=agent,
            agent_name=self.pbx.agents.get(agent) if agent else None,
            hangup_by=hangup_by if answered_at is not None else None,
            hangup_cause=self.hangup_cause,
            queue=self.queue,
            incomplete=self.incomplete,
            source="cel",
            rings_estimated=True,
            transfers=[transfer for _, transfer in self.transfers],
            attempts=[self._attempt(leg) for leg in attempts],
        )

    def _link_carriers(self, legs: list[_Leg]) -> None:
        """A leg whose inherited extension is what a live Local leg runs was dialled by it."""
        for leg in legs:
            if leg.dial_exten is None or leg.picker:
                continue
            parents = [p for p in legs if p is not leg and p.local and p.seq < leg.seq
                       and p.own_exten == leg.dial_exten
                       and (p.ended_at is None or p.ended_at >= leg.offered_at)]
            if parents:
                leg.parent = parents[-1]
                leg.parent.carrier = True

    def _is_attempt(self, leg: _Leg) -> bool:
        if leg.carrier or leg.joined:
            return False  # its device is the attempt; a retriever was offered nothing
        if leg.interface in self.pbx.agents or leg.picker:
            return True
        return not leg.local and self._dialled_by_origin(leg)

    def _dialled_by_origin(self, leg: _Leg) -> bool:
        if leg.parent is not None:
            return self._dialled_by_origin(leg.parent)
        return leg.dial_exten is not None and leg.dial_exten in self.origin_extens

    def _caller_left(self, attempts: list[_Leg]) -> tuple[str, float] | None:
        """(waiting reason, when) if the caller gave up before an agent answered."""
        hangup = self.first_hangup
        if hangup is None or self.voicemail or self.direction != "inbound":
            return None
        system = (not hangup.channel.endswith(";1")
                  and hangup.extra.get("hangupsource") == _SYSTEM_HANGUP)
        if self.dialstatus == "CANCEL" or (self.last_app == "Queue" and not system):
            left = True
        else:
            left = self.dialstatus not in _FAILED_DIALS and not system
        if not left:
            return None
        ringing = any(leg.offered_at <= hangup.at
                      and (leg.ended_at is None or leg.ended_at >= hangup.at - SAME_MOMENT)
                      and not leg.causes & (BUSY_CAUSES | UNAVAILABLE_CAUSES)
                      for leg in attempts)
        return waiting_reason(ringing, bool(attempts) or self.queued), hangup.at

    def _result(self, leg: _Leg, attempts: list[_Leg],
                caller_left: tuple[str, float] | None) -> AttemptResult:
        if leg.answered_at is not None:
            return "answered"
        until = (leg.ended_at if leg.ended_at is not None else self.ended_at) + SAME_MOMENT
        if leg.picked or any(
                other is not leg and other.answered_at is not None
                and leg.offered_at <= other.answered_at <= until for other in attempts):
            return "cancelled"
        if leg.causes & BUSY_CAUSES:
            return "busy"
        if leg.causes & UNAVAILABLE_CAUSES:
            return "unavailable"
        if ANSWERED_ELSEWHERE_CAUSE in leg.causes or leg.ended_at is None:
            return "cancelled"
        if caller_left is not None and leg.ended_at >= caller_left[1] - SAME_MOMENT:
            return "cancelled"
        return "no_answer"

    @staticmethod
    def _ring_start(leg: _Leg) -> float | None:
        """CEL has no ringing event: an offer rings from its start unless it was refused."""
        return None if leg.result in ("busy", "unavailable") else leg.offered_at

    def _attempt(self, leg: _Leg) -> Attempt:
        ring_started_at = self._ring_start(leg)
        ended_at = leg.end if leg.end is not None else self.ended_at
        ring_seconds = 0.0
        if ring_started_at is not None:
            ring_seconds = round(max(ended_at - ring_started_at, 0.0), 3)
        return Attempt(interface=leg.interface, agent_name=self.pbx.agents.get(leg.interface),
                       offered_at=leg.offered_at, ring_started_at=ring_started_at,
                       ended_at=ended_at, result=leg.result, ring_seconds=ring_seconds)

    def _resolve_transfers(self, attempts: list[_Leg]) -> None:
        """A blind transfer went to the next device offered the call; an attended one to
        the last device that answered and is not one of the transferer's channels."""
        for row, transfer in self.transfers:
            if transfer.type == "blind":
                after = [leg for leg in attempts if leg.seq > row.seq]
                if after:
                    transfer.to = min(after, key=lambda leg: leg.seq).interface
                continue
            transferers = {row.base, base_of(str(row.extra.get("channel2_name") or ""))}
            answered = sorted((leg for leg in attempts
                               if leg.answered_at is not None and leg.answered_at <= row.at
                               and leg.base not in transferers),
                              key=lambda leg: leg.answered_at or 0.0)
            target = str(row.extra.get("transfer_target_channel_name") or "")
            transfer.to = answered[-1].interface if answered else interface_of(target)

    # -- second pass: what happened after the answer ---------------------------------------

    def _after_answer(self, answering: _Leg | None) -> tuple[float, HangupBy | None]:
        """(hold seconds, hangup_by), replaying the rows with the bridges they built.

        Who hung up first: the first HANGUP after the answer that names its cause in
        `hangupsource` (the dialplan, or the channel whose side hung up); rows of the
        same moment are not in causal order, and a hangup without a source is mostly
        one that another caused. Only without any such row does the first plain one count.
        """
        bridges: dict[str, dict[str, float | None]] = {}  # id -> channel -> left at
        hold = 0.0
        held_since: float | None = None
        named: HangupBy | None = None
        plain: HangupBy | None = None
        after = answering.answer_seq if answering is not None else None
        for row in self.rows:
            bridge = str(row.extra.get("bridge_id") or "")
            if row.type == "BRIDGE_ENTER" and bridge:
                bridges.setdefault(bridge, {})[row.channel] = None
            elif row.type == "BRIDGE_EXIT" and bridge:
                bridges.setdefault(bridge, {})[row.channel] = row.at
            if after is None or row.seq <= after:
                continue
            origin = row.base == self.origin
            if origin and row.type == "STREAM_BEGIN" and "class" in row.extra:
                held_since = row.at if held_since is None else held_since
            elif held_since is not None and origin and row.type in ("STREAM_END", "HANGUP"):
                hold += row.at - held_since
                held_since = None
            if row.type == "HANGUP" and named is None:
                by = self._hung_up_by(row, bridges)
                if row.extra.get("hangupsource"):
                    named = by
                elif plain is None:
                    plain = by
        return hold, named or plain

    def _hung_up_by(self, row: _Row,
                    bridges: Mapping[str, Mapping[str, float | None]]) -> HangupBy | None:
        source = str(row.extra.get("hangupsource") or "")
        who = source if source in self.names else row.channel
        inbound = self.direction == "inbound"
        if base_of(who) == self.origin:
            if not inbound:
                return "agent"
            system = (who == row.channel and source == _SYSTEM_HANGUP
                      and not who.endswith(";1"))
            return "system" if system else "external"
        if self._joined_to_origin(base_of(who), bridges, row.at):
            return "agent" if inbound else "external"
        return None  # a leg no longer talking with the caller (a transferer leaving)

    def _joined_to_origin(self, base: str, bridges: Mapping[str, Mapping[str, float | None]],
                          now: float) -> bool:
        """True when bridges (and Local pairs) connect `base` to the caller's channel at
        `now`; a channel that left a bridge at the same moment still counts as in it."""
        groups = [{base_of(name) for name, left in members.items()
                   if left is None or left >= now - SAME_MOMENT}
                  for members in bridges.values()]
        reached, frontier = {base}, [base]
        while frontier:
            current = frontier.pop()
            for group in groups:
                if current in group:
                    for other in group - reached:
                        reached.add(other)
                        frontier.append(other)
        return self.origin in reached


def _offer_order(leg: _Leg) -> list[tuple[float, int]]:
    """Where an attempt was offered (DESIGN.md orders attempts so): a device dialled through
    Local legs sorts by the offer of the first of them (the caller's offer of the ring
    group's member), then down the chain; a device dialled straight by its own offer."""
    chain: list[tuple[float, int]] = []
    at: _Leg | None = leg
    while at is not None:
        chain.append((at.offered_at, at.seq))
        at = at.parent
    return chain[::-1]
