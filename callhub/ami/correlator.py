"""The call correlator: AMI events in, finished call records out.

A pure, synchronous state machine (no I/O; the clock is injected) that follows
any number of interleaved calls. A call is everything sharing one `Linkedid`;
it finishes when its last channel hangs up, and its state is freed at once.
The definitions it implements (direction, attempts, rings, outcome, reason,
hangup_by) are DESIGN.md's; `_finish` is where they turn into a record.

How the channels of a call are told apart:
- the *origin* is the call's first channel (its Uniqueid is the Linkedid) and,
  for a Local channel, its other half: on an inbound call `;1` is the caller's
  phone and `;2` (or a PJSIP trunk channel itself) runs the dialplan;
- a *leg* is a channel dialled for the call (DialBegin, AgentCalled) and its
  Local other half; on an inbound call a leg to an agent device is an attempt.
- a Local leg that dials on (FreePBX ring groups, queue members, follow-me) is
  a step of a chain: the devices it reaches are the attempts, never the Local
  leg itself (`_Leg.devices`), and they take its place in the order of offers
  (`_Leg.via`); a queue member's `StateInterface` names the device of a Local
  member before it dials;
- a call picked up from another phone (`Pickup`) takes the picker's channel
  in, and the picker's own Linkedid (which Asterisk keeps on some of its
  later events) is merged into the call, so nothing of it stays open;
- a channel whose events come to carry another open call's Linkedid was bridged
  with that (older) call: a SIP phone's attended transfer to the agent it
  consulted, a phone retrieving a parked call. It moves there (`_move`); the
  call it leaves ends when nothing of it is left. The caller's own channel of
  an inbound call never moves: its events stay with its call;
- busy devices are those with a channel up in a call (answered, or a phone
  dialling out): a phone that only rings is not busy.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from callhub.ami.callrules import clean, rings_for
from callhub.ami.parser import AmiMessage, EventFilter
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

_SUFFIX = re.compile(r"-[0-9a-fA-F]{6,}(;\d)?$")
_HANGUP_EVENTS = frozenset({"HangupRequest", "SoftHangupRequest", "Hangup"})
# Applications of the inbound dialplan that stop looking for an agent; Playtones does only
# when it plays one of _GIVE_UP_TONES (indications.conf names): ringback played while the
# dialplan looks the agent up (`Playtones(ring)`, then AGI and Dial) is still routing.
_GIVE_UP_APPS = frozenset({"Busy", "Congestion", "Hangup", "VoiceMail"})
_GIVE_UP_TONES = frozenset({"busy", "congestion", "info"})
# Applications that offer the call to agents: the dialplan running one is routing (again).
_ROUTING_APPS = frozenset({"Dial", "Queue"})
_DIAL_RESULTS: dict[str, AttemptResult] = {
    "ANSWER": "answered",
    "NOANSWER": "no_answer",
    "BUSY": "busy",
    "CHANUNAVAIL": "unavailable",
    "CONGESTION": "unavailable",
    "INVALIDARGS": "unavailable",
}
_CAUSE_RESULTS: dict[str, AttemptResult] = {
    "17": "busy",
    "19": "no_answer",
    "1": "unavailable",
    "3": "unavailable",
    "20": "unavailable",
    "27": "unavailable",
    "34": "unavailable",
    "38": "unavailable",
}
ROUTE_RESULT_VARIABLE = "CALLHUB_ROUTE_RESULT"
_MOH = "MusicOnHold "  # hold-span key prefix for MOH on a channel (others are channel names)
FINISHED_MEMORY = 4096
RESYNC_KEEP = 50_000  # events of unknown calls held during one resync window, at most
MAX_TIMESTAMP = 1e11  # year 5138: beyond it a Timestamp header is garbage


def interface_of(channel: str) -> str:
    """The device interface of a channel: its name without the unique suffix."""
    return _SUFFIX.sub("", channel)


def base_of(channel: str) -> str:
    """A channel's name without its Local half marker: both halves share it."""
    if channel.endswith((";1", ";2")):
        return channel[:-2]
    return channel


@dataclass(slots=True)
class _Leg:
    """A channel dialled for the call; `attempt` is set when it is an offer to an agent.

    `offer` says the call was offered through this leg (what the devices a Local
    leg dials inherit); a Local leg that dials on has `devices` and is no attempt.
    """

    base: str
    interface: str
    offered_at: float
    attempt: bool
    offer: bool = False
    local: bool = False  # a Local channel: what it dials takes its place
    mapped: bool = False  # a Local queue member named by its StateInterface device
    dialled_by: str | None = None  # base of the channel whose DialBegin made it
    via: str | None = None  # base of the Local leg it was reached through (in its `devices`)
    devices: list[_Leg] | None = None
    optimized: bool = False  # a Local leg being optimised away: its hangups end nothing
    ring_started_at: float | None = None
    ended_at: float | None = None
    result: AttemptResult | None = None

    def ring(self, now: float) -> None:
        if self.ring_started_at is None and self.result is None:
            self.ring_started_at = now

    def end(self, result: AttemptResult, now: float) -> None:
        """The first result wins; an answer without a ringing indication rang from the offer.

        A Local leg that ends unanswered ends the devices it dialled alike (the
        caller left, the outer Dial timed out); its answer is its device's own.
        """
        if self.result is not None:
            return
        self.result = result
        self.ended_at = now
        if result == "answered":
            if self.ring_started_at is None:
                self.ring_started_at = self.offered_at
        elif self.devices is not None:
            for device in self.devices:
                device.end(result, now)

    @property
    def ringing(self) -> bool:
        return self.ring_started_at is not None and self.result is None


@dataclass(slots=True)
class _ResyncWindow:
    """What happened between asking CoreShowChannels and getting its answer."""

    candidates: set[str]  # calls the snapshot decides: no event of theirs since the ask
    # When the stream was last known alive before the session ended (None: not known).
    alive_until: float | None = None
    hung_up: set[str] = field(default_factory=set)  # uniqueids that hung up since the ask

    # Events of calls not known yet, kept until the snapshot says whether they are live.
    unknown: dict[str, list[AmiMessage]] = field(default_factory=dict)
    kept: int = 0

    def saw(self, linkedid: str, event: AmiMessage) -> None:
        self.candidates.discard(linkedid)
        if event.get("Event") == "Hangup" and event.get("Uniqueid"):
            self.hung_up.add(event["Uniqueid"])

    def keep(self, linkedid: str, event: AmiMessage) -> bool:
        """Hold an event of an unknown call for `reconcile`; False when the window is full."""
        if self.kept >= RESYNC_KEEP:
            return False
        self.unknown.setdefault(linkedid, []).append(event)
        self.kept += 1
        return True


@dataclass(slots=True)
class _Call:
    linkedid: str
    arrived_at: float
    last_event_at: float
    origin: str | None = None  # base name of the first channel
    direction: Direction = "internal"
    did: str | None = None
    called_number: str | None = None
    caller_number: str | None = None
    caller_name: str | None = None
    incomplete: bool = False
    live: dict[str, str] = field(default_factory=dict)  # uniqueid -> channel name
    states: dict[str, str] = field(default_factory=dict)  # uniqueid -> ChannelStateDesc
    giving_up: set[str] = field(default_factory=set)  # channels running a give-up application
    legs: dict[str, _Leg] = field(default_factory=dict)  # base name -> leg
    bridges: dict[str, set[str]] = field(default_factory=dict)  # bridge id -> channel names
    answered_at: float | None = None
    answered_by: str | None = None
    hangup_by: HangupBy | None = None
    hangup_cause: int | None = None
    caller_left: str | None = None  # abandon reason, once the caller gave up waiting
    gave_up: bool = False  # the dialplan stopped looking for an agent (busy, voicemail)
    voicemail: bool = False
    route_result: str | None = None
    queue: str | None = None
    in_queue: bool = False
    transfers: list[Transfer] = field(default_factory=list)
    pending_blind: Transfer | None = None
    holds: set[str] = field(default_factory=set)  # open hold spans (channel, or MOH key)
    hold_since: float | None = None  # start of the current union of hold spans
    hold_seconds: float = 0.0
    merged: list[str] | None = None  # Linkedids merged into this call (a picker's own)
    ended_at: float | None = None

    def side(self, channel: str) -> str:
        """'origin', 'leg' or 'other' for a channel of this call."""
        base = base_of(channel)
        if base == self.origin:
            return "origin"
        return "leg" if base in self.legs else "other"

    def attempts(self) -> list[_Leg]:
        """The attempts in the order they were offered (DESIGN.md). A device reached through
        a Local leg takes that leg's place: its offer is the Local leg's own, so it sorts
        by the chain it ends, from the call's own dial down, not by when the Local half
        (which runs on a thread of its own) came to dial it."""
        position = {base: i for i, base in enumerate(self.legs)}

        def offered(leg: _Leg) -> tuple[int, ...]:
            chain = [position[leg.base]]
            while leg.via is not None and leg.via in self.legs and len(chain) <= len(position):
                leg = self.legs[leg.via]
                chain.append(position[leg.base])
            return tuple(reversed(chain))

        return sorted((leg for leg in self.legs.values() if leg.attempt), key=offered)

    def bridged_with_origin(self, base: str) -> bool:
        for members in self.bridges.values():
            bases = {base_of(m) for m in members}
            if base in bases and self.origin in bases:
                return True
        return False


class Correlator:
    """Follows every call of one PBX; `feed` returns the calls an event finished."""

    def __init__(self, pbx: PbxConfig, clock: Callable[[], float] = time.time,
                 stale_after: float = 4 * 3600.0) -> None:
        self.pbx = pbx
        self.clock = clock
        self.stale_after = stale_after
        self.inbound_contexts = frozenset(pbx.inbound_contexts)
        self.outbound_contexts = frozenset(pbx.outbound_contexts)
        self.voicemail_extensions = frozenset(pbx.voicemail_extensions)
        self.agent_interfaces = frozenset(pbx.agents)
        self.calls: dict[str, _Call] = {}
        # Linkedids of recently finished calls: a late event must not start a ghost call.
        self._finished: dict[str, None] = {}
        # A picker's own Linkedid -> the call it picked up (its later events belong there).
        self._merged: dict[str, str] = {}
        # Uniqueid of a live channel -> the Linkedid of the call it is in; a channel whose
        # events name another open call has moved there (`_move`).
        self._homes: dict[str, str] = {}
        # Queue member interface (Local/1001@from-queue) -> its StateInterface device.
        self.state_interfaces: dict[str, str] = {}
        # Device names the PBX told (endpoints' caller ID); `[pbx.agents]` wins over them.
        self.device_names: dict[str, str] = {}
        self.errors = 0  # events that could not be applied (counted, skipped)
        # Events of calls never opened (no Newchannel, not adopted by a resync): ignored.
        self.orphans = 0
        self.last_error: Exception | None = None  # why the last of them failed
        self._resync: _ResyncWindow | None = None
        self._handlers: dict[str, Callable[[_Call, AmiMessage, float], None]] = {
            "Newchannel": self._on_newchannel,
            "NewCallerid": self._on_callerid,
            "Newexten": self._on_newexten,
            "VarSet": self._on_varset,
            "DialBegin": self._on_dial_begin,
            "AgentCalled": self._on_agent_called,
            "DialState": self._on_dial_state,
            "Newstate": self._on_newstate,
            "DialEnd": self._on_dial_end,
            "AgentConnect": self._on_agent_connect,
            "AgentRingNoAnswer": self._on_agent_ring_no_answer,
            "QueueCallerJoin": self._on_queue_join,
            "QueueCallerLeave": self._on_queue_leave,
            "QueueCallerAbandon": self._on_queue_abandon,
            "BridgeEnter": self._on_bridge_enter,
            "BridgeLeave": self._on_bridge_leave,
            "BlindTransfer": self._on_blind_transfer,
            "AttendedTransfer": self._on_attended_transfer,
            "Pickup": self._on_pickup,
            "Hold": self._on_hold,
            "Unhold": self._on_unhold,
            "MusicOnHoldStart": self._on_moh_start,
            "MusicOnHoldStop": self._on_moh_stop,
            "LocalOptimizationBegin": self._on_local_optimization_begin,
            "LocalOptimizationEnd": self._on_local_optimization_end,
            "HangupRequest": self._on_hangup_request,
            "SoftHangupRequest": self._on_hangup_request,
            "Hangup": self._on_hangup,
        }
        # Events about the PBX rather than a call (no Linkedid).
        self._pbx_handlers: dict[str, Callable[[AmiMessage], None]] = {
            "QueueMemberStatus": self._on_queue_member,
            "QueueMemberAdded": self._on_queue_member,
            "QueueMember": self._on_queue_member,
        }

    # -- public interface ---------------------------------------------------------------

    def event_filter(self) -> EventFilter:
        """The events `feed` reads (its handlers), and of VarSet only callhub's variable:
        the splitter can skip every other event unparsed."""
        return EventFilter(frozenset(self._handlers) | frozenset(self._pbx_handlers),
                           frozenset({ROUTE_RESULT_VARIABLE}))

    def feed(self, event: AmiMessage) -> list[CallRecord]:
        """Take one AMI message; return the calls it finished (usually none)."""
        kind = event.get("Event", "")
        handler = self._handlers.get(kind)
        if handler is None:
            pbx_handler = self._pbx_handlers.get(kind)
            if pbx_handler is not None:
                pbx_handler(event)
            return []
        linkedid = _linkedid(event)
        if linkedid is None:
            return []
        if self._merged:
            linkedid = self._merged.get(linkedid, linkedid)
        now = event_time(event.get("Timestamp"))
        if now is None:
            now = self.clock()
        if self._resync is not None:
            self._resync.saw(linkedid, event)
        left: CallRecord | None = None  # a call the event's channel left and finished
        try:
            call = self.calls.get(linkedid)
            if kind != "Newchannel":
                uniqueid = event.get("Uniqueid")
                if uniqueid and (call is None or uniqueid not in call.live):
                    home = self._home(uniqueid)
                    if home is not None and home is not call:
                        if call is None or self._stays(home, uniqueid):
                            call = home
                        else:
                            left = self._move(home, call, uniqueid, now)
                        if self._resync is not None:
                            self._resync.saw(call.linkedid, event)
            if call is None:
                if linkedid in self._finished:
                    return []
                if kind != "Newchannel":
                    # Only a Newchannel (or a resync's adoption) opens a call: a Hangup of
                    # a channel never seen stores no phantom call.
                    if self._resync is None or not self._resync.keep(linkedid, event):
                        self.orphans += 1
                    return []
                call = self._start_call(linkedid, event, now)
            call.last_event_at = now
            handler(call, event, now)
            if call.ended_at is not None:
                done = self._finish(call)
                return [left, done] if left is not None else [done]
            if left is not None:
                return [left]
        except (KeyError, ValueError, TypeError) as exc:
            self.errors += 1
            self.last_error = exc
        return [left] if left is not None else []

    def expire(self, now: float | None = None) -> list[CallRecord]:
        """Close calls whose events stopped more than `stale_after` ago, flagged incomplete."""
        now = self.clock() if now is None else now
        stale = [c for c in self.calls.values() if now - c.last_event_at > self.stale_after]
        return [self._close(call, call.last_event_at) for call in stale]

    def begin_resync(self, alive_until: float | None = None) -> None:
        """Mark the moment `CoreShowChannels` is asked: events fed from now on are
        newer than the snapshot, and `reconcile` must not undo them.

        `alive_until`: when the stream was last known alive before the session ended
        (by the events' clock). A call the snapshot no longer lists is closed then, not
        at the reconnect: a restarting Asterisk ended it at the drop, and closed at the
        reconnect its ring or talk also counted the outage."""
        self._resync = _ResyncWindow(set(self.calls), alive_until)

    def reconcile_lazily(self, channels: list[AmiMessage]) -> Iterator[CallRecord]:
        """Bring the state in line with `CoreShowChannel` events after a (re)connect.

        Calls none of whose channels is still up ended while we were away: they
        are closed (incomplete). Channels of calls we do not know are adopted, so
        the call is recorded once, flagged incomplete since its start was missed.
        Events fed since `begin_resync` are newer than the list and win over it;
        those of a call not known then are applied after its adoption, and are
        orphans (ignored, counted) when the list shows no channel of it.

        Every change of state is made before this returns; the records of the calls
        it closed are built as the iterator is read, so a caller closing tens of
        thousands of calls can hand them on in slices (`reconcile` builds them all).
        """
        now = self.clock()
        window, self._resync = self._resync, None
        if window is None:
            window = _ResyncWindow(set(self.calls))
        live: dict[str, list[AmiMessage]] = {}
        for channel in channels:
            linkedid = channel.get("Linkedid")
            if linkedid:
                linkedid = self._merged.get(linkedid, linkedid)
            if not linkedid or not channel.get("Uniqueid") or linkedid in self._finished:
                continue
            # A call known only from held events is adopted whole: its held hangups follow.
            held = linkedid in window.unknown and linkedid not in self.calls
            if held or channel["Uniqueid"] not in window.hung_up:
                live.setdefault(linkedid, []).append(channel)
        closed: list[_Call] = []
        finished: list[CallRecord] = []
        for linkedid, call in list(self.calls.items()):
            if linkedid not in live and linkedid in window.candidates:
                call.incomplete = True  # its end happened while we could not see it
                call.ended_at = now if window.alive_until is None else min(
                    now, max(window.alive_until, call.last_event_at))
                self._release(call)
                closed.append(call)
                continue
            if linkedid in window.candidates:
                up = {c["Uniqueid"] for c in live.get(linkedid, ())}
                for uniqueid in [u for u in call.live if u not in up]:
                    self._homes.pop(uniqueid, None)
                call.live = {u: n for u, n in call.live.items() if u in up}
        for linkedid, members in live.items():
            known = self.calls.get(linkedid)
            if known is None:
                oldest = max(members, key=lambda c: _duration(c.get("Duration")))
                known = self._start_call(linkedid, oldest,
                                         now - _duration(oldest.get("Duration")))
            members.sort(key=lambda c: c["Uniqueid"] != linkedid)
            for channel in members:
                if self._adopt(known, channel, now):
                    known.incomplete = True  # it changed while we could not see it
        for linkedid, events in window.unknown.items():
            if linkedid not in self.calls:
                self.orphans += len(events)
                continue
            for event in events:
                finished.extend(self.feed(event))
        return itertools.chain((self._record(call) for call in closed), finished)

    def reconcile(self, channels: list[AmiMessage]) -> list[CallRecord]:
        """`reconcile_lazily` with every record built at once."""
        return list(self.reconcile_lazily(channels))

    def flush(self) -> list[CallRecord]:
        """Close every open call (end of a replay), flagged incomplete."""
        return [self._close(call, call.last_event_at) for call in list(self.calls.values())]

    def learn_devices(self, names: dict[str, str], members: list[AmiMessage]) -> None:
        """What the PBX said about its devices at login: names from the endpoints' caller
        ID, and queue members (`QueueMember` events) with their StateInterface."""
        self.device_names = dict(names)
        for member in members:
            self._on_queue_member(member)

    def agent_name(self, interface: str) -> str | None:
        """The configured name of a device, else the one the PBX reported for it."""
        return self.pbx.agents.get(interface) or self.device_names.get(interface)

    @property
    def active_calls(self) -> int:
        return len(self.calls)

    def busy_interfaces(self) -> set[str]:
        """Devices with a channel up in a call right now: answered, or a phone dialling out.

        A phone that only rings is not busy (it can be offered the next call),
        nor is the caller's trunk of an inbound call, nor a Local channel that
        runs dialplan (`Ring`) or stands for the devices it dialled.
        """
        busy: set[str] = set()
        for call in self.calls.values():
            for uniqueid, name in call.live.items():
                state = call.states.get(uniqueid)
                if state != "Up" and (state != "Ring" or name.startswith("Local/")):
                    continue
                base = base_of(name)
                if base == call.origin:
                    if call.direction != "inbound":
                        busy.add(interface_of(name))
                    continue
                leg = call.legs.get(base)
                if leg is None:
                    busy.add(interface_of(name))
                elif leg.devices is None:
                    busy.add(leg.interface)
        return busy

    # -- call lifecycle -------------------------------------------------------------------

    def _start_call(self, linkedid: str, event: AmiMessage, now: float) -> _Call:
        call = _Call(linkedid=linkedid, arrived_at=now, last_event_at=now)
        if event.get("Event") not in ("Newchannel", "CoreShowChannel"):
            call.incomplete = True  # we joined a call in progress
        self.calls[linkedid] = call
        return call

    def _adopt(self, call: _Call, channel: AmiMessage, now: float) -> bool:
        """Bring one live channel (a CoreShowChannel event) into the call's state.

        Returns True when the channel told something the call did not know: a
        channel it had not seen, or a leg that rang or was answered meanwhile.
        """
        name = channel.get("Channel", "")
        changed = channel["Uniqueid"] not in call.live
        call.live[channel["Uniqueid"]] = name
        self._homes[channel["Uniqueid"]] = call.linkedid
        call.states[channel["Uniqueid"]] = channel.get("ChannelStateDesc", "")
        if call.origin is None and channel["Uniqueid"] == call.linkedid:
            self._set_origin(call, channel)
        if call.side(name) == "origin":
            if call.direction == "internal" and channel.get("Context") in self.inbound_contexts:
                call.direction = "inbound"
                call.did = clean(channel.get("Exten"))
            self._take_callerid(call, channel)
        elif call.origin is not None:
            leg = call.legs.get(base_of(name))
            if leg is None:
                interface = interface_of(name)
                attempt = call.direction == "inbound" and interface in self.agent_interfaces
                leg = self._new_leg(call, name, interface, now, attempt)
            state = channel.get("ChannelStateDesc")
            if state == "Ringing" and leg.ring_started_at is None:
                leg.ring(now)
                changed = True
            elif state == "Up" and channel.get("BridgeId") and leg.result is None:
                leg.end("answered", now)
                self._answered(call, leg, now)
                changed = True
        if channel.get("BridgeId"):
            call.bridges.setdefault(channel["BridgeId"], set()).add(name)
        return changed

    def _close(self, call: _Call, ended_at: float) -> CallRecord:
        """Finish a call whose end we did not see."""
        call.incomplete = True
        call.ended_at = ended_at
        return self._finish(call)

    def _set_origin(self, call: _Call, event: AmiMessage) -> None:
        call.origin = base_of(event.get("Channel", ""))
        context = event.get("Context", "")
        exten = clean(event.get("Exten"))
        # `s`: no number yet (a channel an Originate created, a trunk without DID); an
        # outbound call's number is then the extension its dialplan dials.
        if context in self.inbound_contexts:
            call.direction = "inbound"
            call.did = exten if exten != "s" else None
        elif context in self.outbound_contexts:
            call.direction = "outbound"
            call.called_number = exten if exten != "s" else None
        self._take_callerid(call, event)

    def _take_callerid(self, call: _Call, event: AmiMessage) -> None:
        number = clean(event.get("CallerIDNum"))
        name = clean(event.get("CallerIDName"))
        if number and (call.direction != "outbound" or call.caller_number is None):
            call.caller_number = number
        if name and (call.direction != "outbound" or call.caller_name is None):
            call.caller_name = name

    # -- one handler per event --------------------------------------------------------------

    def _on_newchannel(self, call: _Call, event: AmiMessage, now: float) -> None:
        first = not call.live
        call.live[event["Uniqueid"]] = event["Channel"]
        self._homes[event["Uniqueid"]] = call.linkedid
        call.states[event["Uniqueid"]] = event.get("ChannelStateDesc", "")
        if call.origin is None and (event["Uniqueid"] == call.linkedid or first):
            self._set_origin(call, event)
            call.arrived_at = now
        elif call.side(event["Channel"]) == "origin" and not call.legs:
            self._take_callerid(call, event)

    def _on_callerid(self, call: _Call, event: AmiMessage, now: float) -> None:
        if call.side(event.get("Channel", "")) == "origin" and call.answered_at is None:
            self._take_callerid(call, event)

    def _on_newexten(self, call: _Call, event: AmiMessage, now: float) -> None:
        channel = event.get("Channel", "")
        app = event.get("Application", "")
        gives_up = _gives_up(app, event.get("AppData", ""))
        if gives_up:
            call.giving_up.add(channel)
        else:
            call.giving_up.discard(channel)
        side = call.side(channel)
        if app == "VoiceMail":
            call.voicemail = True
            if side == "leg" and call.direction == "inbound" and call.answered_at is None:
                # A leg's mailbox (a Local ring-group member's VoiceMail after its phone
                # rang out) answers the caller as one on the caller's own channel does:
                # the search for an agent is over, the caller hanging up gives nothing up.
                call.gave_up = True
        if side != "origin":
            return
        exten = event.get("Exten", "")
        if exten in self.voicemail_extensions:
            call.voicemail = True
        if (app == "Dial" and event.get("Context") in self.outbound_contexts
                and call.answered_at is None
                and (call.direction == "internal"
                     or (call.direction == "outbound" and call.called_number is None))):
            call.direction = "outbound"
            call.called_number = clean(exten) if exten != "s" else None
        # The caller's own phone half (;1) runs no dialplan of ours.
        if (call.direction == "inbound" and call.answered_at is None
                and not channel.endswith(";1")):
            if gives_up or exten in self.voicemail_extensions:
                call.gave_up = True
            elif app in _ROUTING_APPS:
                call.gave_up = False  # it offers the call to agents after all

    def _on_varset(self, call: _Call, event: AmiMessage, now: float) -> None:
        if event.get("Variable") == ROUTE_RESULT_VARIABLE:
            call.route_result = event.get("Value")

    def _on_dial_begin(self, call: _Call, event: AmiMessage, now: float) -> None:
        dest = event.get("DestChannel", "")
        caller = event.get("Channel")
        if not dest or call.side(dest) == "origin" or base_of(dest) in call.legs:
            return
        interface = interface_of(dest)
        dialled_by = base_of(caller) if caller else None
        via = call.legs.get(dialled_by) if dialled_by else None
        if via is not None and via.local:
            self._new_leg(call, dest, interface, now, via.offer, dialled_by, via)
            return
        if call.direction == "inbound":
            own = dialled_by is not None and dialled_by == call.origin
            offer = own or interface in self.agent_interfaces
        else:
            offer = False
            if dialled_by is None or dialled_by != call.origin:
                return  # only the placing agent's dials are legs of an outbound call
        self._new_leg(call, dest, interface, now, offer, dialled_by)

    def _on_agent_called(self, call: _Call, event: AmiMessage, now: float) -> None:
        dest = event.get("DestChannel", "")
        if dest and base_of(dest) not in call.legs:
            member = event.get("Interface")
            interface = member_interface(member) if member else interface_of(dest)
            self._new_leg(call, dest, interface, now, call.direction == "inbound")
        call.queue = call.queue or event.get("Queue")

    def _new_leg(self, call: _Call, dest: str, interface: str, now: float, offer: bool,
                 dialled_by: str | None = None, via: _Leg | None = None) -> _Leg:
        """A leg for a dialled channel. `offer`: the call is offered to an agent through it
        (a dial from the call's own channels on an inbound call, or to an agent device).
        `via`: the Local leg that dialled it, whose place it takes."""
        base = base_of(dest)
        leg = _Leg(base, interface, now, False, offer, dest.startswith("Local/"),
                   dialled_by=dialled_by)
        if leg.local:
            device = self.state_interfaces.get(interface)
            if device is not None:
                leg.interface, leg.mapped = device, True
        call.legs[base] = leg
        if via is not None:
            self._link(call, via, leg)
        else:
            self._set_attempt(call, leg)
        if leg.local:
            # Its other half may have dialled before this DialBegin was published.
            for other in list(call.legs.values()):
                if other.dialled_by == base and other.via is None and other is not leg:
                    self._link(call, leg, other)
        return leg

    def _link(self, call: _Call, via: _Leg, leg: _Leg) -> None:
        """`leg` was dialled by the Local leg `via`: the attempt is `leg`'s (or, when
        it is a Local leg too, that of what it dials), no longer `via`'s."""
        if via.devices is None:
            via.devices = []
            leg.offered_at = min(leg.offered_at, via.offered_at)  # offered when the chain was
        via.devices.append(leg)
        via.attempt = False
        leg.via = via.base
        leg.offer = via.offer
        self._set_attempt(call, leg)

    def _set_attempt(self, call: _Call, leg: _Leg) -> None:
        """An offered leg is an attempt, unless it is a Local leg that is no configured
        agent (nor a queue member with a device): that one waits for what it dials."""
        was = leg.attempt
        leg.attempt = leg.offer and leg.devices is None and (
            not leg.local or leg.mapped or leg.interface in self.agent_interfaces)
        if leg.attempt and not was and call.pending_blind is not None:
            call.pending_blind.to = leg.interface
            call.pending_blind = None

    def _dialled_leg(self, call: _Call, event: AmiMessage, now: float) -> _Leg | None:
        """The leg a DialState/DialEnd is about; an agent dial whose DialBegin never
        came (an attended transfer's consult call) starts its leg here."""
        dest = event.get("DestChannel", "")
        leg = call.legs.get(base_of(dest))
        if (leg is None and dest and call.direction == "inbound"
                and call.side(dest) != "origin" and interface_of(dest) in self.agent_interfaces):
            leg = self._new_leg(call, dest, interface_of(dest), now, True)
        return leg

    def _on_queue_member(self, event: AmiMessage) -> None:
        """A queue member's state: remember the device behind a Local member."""
        member = event.get("Interface") or event.get("Location")
        device = event.get("StateInterface")
        if not member or not device or (device == member and not self.state_interfaces):
            return  # the usual member: its own state interface
        member = member_interface(member)
        if device == member or not _is_device(device):
            self.state_interfaces.pop(member, None)
            return
        if self.state_interfaces.get(member) == device:
            return
        self.state_interfaces[member] = device
        # Local legs of that member already ringing, and not yet dialling on, are the device's.
        for call in self.calls.values():
            for leg in call.legs.values():
                if leg.local and not leg.mapped and leg.devices is None \
                        and leg.interface == member:
                    leg.interface, leg.mapped = device, True
                    self._set_attempt(call, leg)

    def _on_dial_state(self, call: _Call, event: AmiMessage, now: float) -> None:
        leg = self._dialled_leg(call, event, now)
        if leg is not None and event.get("DialStatus") == "RINGING":
            leg.ring(now)

    def _on_newstate(self, call: _Call, event: AmiMessage, now: float) -> None:
        state = event.get("ChannelStateDesc", "")
        uniqueid = event.get("Uniqueid")
        if uniqueid in call.live:
            call.states[uniqueid] = state
        leg = call.legs.get(base_of(event.get("Channel", "")))
        if leg is not None and state == "Ringing":
            leg.ring(now)

    def _on_dial_end(self, call: _Call, event: AmiMessage, now: float) -> None:
        leg = self._dialled_leg(call, event, now)
        if leg is None:
            return
        leg.end(_DIAL_RESULTS.get(event.get("DialStatus", ""), "cancelled"), now)
        if leg.result == "answered":
            self._answered(call, leg, now)

    def _on_agent_connect(self, call: _Call, event: AmiMessage, now: float) -> None:
        leg = call.legs.get(base_of(event.get("DestChannel", "")))
        if leg is not None:
            leg.end("answered", now)
            self._answered(call, leg, now)

    def _on_agent_ring_no_answer(self, call: _Call, event: AmiMessage, now: float) -> None:
        leg = call.legs.get(base_of(event.get("DestChannel", "")))
        if leg is not None:
            leg.end("no_answer", now)

    def _answered(self, call: _Call, leg: _Leg, now: float) -> None:
        if call.answered_at is None and (leg.attempt or call.direction != "inbound"):
            call.answered_at = now
            call.answered_by = leg.interface

    def _on_queue_join(self, call: _Call, event: AmiMessage, now: float) -> None:
        call.queue = call.queue or event.get("Queue")
        call.in_queue = True

    def _on_queue_leave(self, call: _Call, event: AmiMessage, now: float) -> None:
        call.in_queue = False

    def _on_queue_abandon(self, call: _Call, event: AmiMessage, now: float) -> None:
        if call.answered_at is None and call.caller_left is None and not call.gave_up:
            call.caller_left = self._waiting_reason(call)

    def _on_bridge_enter(self, call: _Call, event: AmiMessage, now: float) -> None:
        call.bridges.setdefault(event.get("BridgeUniqueid", ""), set()).add(
            event.get("Channel", ""))

    def _on_bridge_leave(self, call: _Call, event: AmiMessage, now: float) -> None:
        channel = event.get("Channel", "")
        members = call.bridges.get(event.get("BridgeUniqueid", ""))
        if members is not None:
            members.discard(channel)
        if call.holds:
            self._hold_end(call, channel, now)

    def _on_blind_transfer(self, call: _Call, event: AmiMessage, now: float) -> None:
        if event.get("Result") != "Success":
            return
        target = f"{event.get('Extension', '')}@{event.get('Context', '')}"
        transfer = Transfer(type="blind", to=target, at=now)
        call.transfers.append(transfer)
        call.pending_blind = transfer

    def _on_attended_transfer(self, call: _Call, event: AmiMessage, now: float) -> None:
        if event.get("Result") != "Success":
            return
        transferers = {base_of(event.get(k, "")) for k in
                       ("OrigTransfererChannel", "SecondTransfererChannel")}
        answered = [leg for leg in call.legs.values()
                    if leg.attempt and leg.result == "answered" and leg.base not in transferers]
        target = (answered[-1].interface if answered
                  else interface_of(event.get("TransferTargetChannel", "")))
        call.transfers.append(Transfer(type="attended", to=target, at=now))

    def _on_pickup(self, call: _Call, event: AmiMessage, now: float) -> None:
        """A phone picked up a call ringing elsewhere (`call` is the picker's own, until
        now): its channel joins the picked call and answers it; the rung device's
        attempt ends cancelled, whatever its DialEnd says afterwards."""
        target = self.calls.get(event.get("TargetLinkedid", ""))
        picker = event.get("Channel", "")
        if target is None or not picker:
            return
        uniqueid = event.get("Uniqueid", "")
        if target is not call:
            call.live.pop(uniqueid, None)
            self._rehome(call, target, uniqueid, picker, event.get("ChannelStateDesc", "Up"))
            if not call.live:
                self._merge(call, target)
        rung = target.legs.get(base_of(event.get("TargetChannel", "")))
        if rung is not None:
            rung.end("cancelled", now)
        leg = target.legs.get(base_of(picker))
        if leg is None:
            leg = self._new_leg(target, picker, interface_of(picker), now,
                                target.direction == "inbound")
        leg.end("answered", now)
        self._answered(target, leg, now)

    def _rehome(self, home: _Call, into: _Call, uniqueid: str, name: str, state: str) -> None:
        """Channel `uniqueid` (taken out of `home.live`) is live in `into` from now on."""
        home.states.pop(uniqueid, None)
        into.live[uniqueid] = name
        into.states[uniqueid] = state
        self._homes[uniqueid] = into.linkedid

    def _home(self, uniqueid: str) -> _Call | None:
        """The open call a live channel is in."""
        linkedid = self._homes.get(uniqueid)
        home = self.calls.get(linkedid) if linkedid is not None else None
        return home if home is not None and uniqueid in home.live else None

    @staticmethod
    def _stays(home: _Call, uniqueid: str) -> bool:
        """The caller's own channel of an inbound call never leaves its call (two callers
        bridged together, a conference): its events stay with it whatever Linkedid they
        carry."""
        return home.direction == "inbound" and home.side(home.live[uniqueid]) == "origin"

    def _move(self, home: _Call, into: _Call, uniqueid: str, now: float) -> CallRecord | None:
        """A channel of `home` carries `into`'s Linkedid: Asterisk bridged it with a channel
        of that (older) call and gave it that call's Linkedid: a SIP phone's attended
        transfer (REFER with Replaces) to the agent it consulted, a parked call retrieved.
        The channel leaves `home` for `into`, with its bridges. A leg dialled in `home`
        (the consult call's target) is a leg of `into`, with its offer, ringing and answer,
        and an attempt of an inbound call when it is an agent device, as an attended
        transfer's consult call is (DESIGN.md); the channel that started `home` (the phone
        that retrieved the parked call) is a leg of `into` and no attempt.

        `home` left empty is finished, ended at its own last event (its record returned),
        or merged into `into` when it was that one channel's own call, as a picker's is."""
        name = home.live.pop(uniqueid)
        self._rehome(home, into, uniqueid, name, home.states.get(uniqueid, ""))
        for bridge, members in home.bridges.items():
            if name in members:
                members.discard(name)
                into.bridges.setdefault(bridge, set()).add(name)
        if home.holds:
            self._hold_end(home, name, now)
        base = base_of(name)
        own = base == home.origin
        if into.side(name) == "other":
            dialled = None if own else home.legs.get(base)
            interface = dialled.interface if dialled is not None else interface_of(name)
            offer = (dialled is not None and into.direction == "inbound"
                     and interface in self.agent_interfaces)
            leg = self._new_leg(into, name, interface, now, offer)
            if dialled is not None:
                leg.offered_at = dialled.offered_at
                leg.ring_started_at = dialled.ring_started_at
                if dialled.result is not None and dialled.ended_at is not None:
                    leg.end(dialled.result, dialled.ended_at)
                    if leg.result == "answered":
                        self._answered(into, leg, dialled.ended_at)
        if home.live:
            return None
        if own:
            self._merge(home, into)
            return None
        home.ended_at = home.last_event_at
        return self._finish(home)

    def _merge(self, call: _Call, into: _Call) -> None:
        """`call` had only the channel that moved into `into`: it is no call of its own;
        events still stamped with its Linkedid belong to `into`."""
        self.calls.pop(call.linkedid, None)
        self._merged[call.linkedid] = into.linkedid
        into.merged = [*(into.merged or ()), call.linkedid, *(call.merged or ())]
        for linkedid in call.merged or ():
            self._merged[linkedid] = into.linkedid

    # Hold: spans per channel (Hold..Unhold/BridgeLeave/hangup) and MOH on the caller's
    # channel; `hold_since` is the start of their union, so overlaps count once.

    def _on_hold(self, call: _Call, event: AmiMessage, now: float) -> None:
        if call.answered_at is not None:
            self._hold_begin(call, event.get("Channel", ""), now)

    def _on_unhold(self, call: _Call, event: AmiMessage, now: float) -> None:
        if call.holds:
            self._hold_end(call, event.get("Channel", ""), now)

    def _on_moh_start(self, call: _Call, event: AmiMessage, now: float) -> None:
        channel = event.get("Channel", "")
        if call.answered_at is not None and call.side(channel) == "origin":
            self._hold_begin(call, _MOH + channel, now)

    def _on_moh_stop(self, call: _Call, event: AmiMessage, now: float) -> None:
        if call.holds:
            self._hold_end(call, _MOH + event.get("Channel", ""), now)

    @staticmethod
    def _hold_begin(call: _Call, span: str, now: float) -> None:
        if not call.holds:
            call.hold_since = now
        call.holds.add(span)

    @staticmethod
    def _hold_end(call: _Call, span: str, now: float) -> None:
        if span in call.holds:
            call.holds.discard(span)
            if not call.holds and call.hold_since is not None:
                call.hold_seconds += max(now - call.hold_since, 0.0)
                call.hold_since = None

    def _on_local_optimization_begin(self, call: _Call, event: AmiMessage, now: float) -> None:
        """A Local leg is being optimised away: the channel behind it (`Source`) takes its
        place in the bridge and the Local halves hang up, which ends nothing of the call.
        A source the call did not see dialled is the device the Local leg reached."""
        leg = call.legs.get(base_of(event.get("LocalOneChannel", "")))
        if leg is None:
            return
        leg.optimized = True
        source = event.get("SourceChannel", "")
        if (not source or leg.devices is not None or call.side(source) != "other"
                or base_of(source) == leg.base):
            return
        device = self._new_leg(call, source, interface_of(source), now, leg.offer,
                               leg.base, leg)
        if leg.result == "answered" and leg.ended_at is not None:
            device.ring_started_at = leg.ring_started_at
            device.end("answered", leg.ended_at)
            if call.answered_at is None:
                self._answered(call, device, leg.ended_at)
            elif call.answered_by == leg.interface:
                call.answered_by = device.interface

    def _on_local_optimization_end(self, call: _Call, event: AmiMessage, now: float) -> None:
        leg = call.legs.get(base_of(event.get("LocalOneChannel", "")))
        if leg is not None and event.get("Success", "Yes") != "Yes":
            leg.optimized = False  # it stays in the path

    def _on_hangup_request(self, call: _Call, event: AmiMessage, now: float) -> None:
        channel = event.get("Channel", "")
        side = call.side(channel)
        if call.answered_at is None:
            if (side == "origin" and call.direction == "inbound" and call.caller_left is None
                    and not call.gave_up):
                if self._dialplan_hangs_up(call, channel):
                    call.gave_up = True
                else:
                    call.caller_left = self._waiting_reason(call)
            return
        if call.hangup_by is not None:
            return
        if side == "origin":
            if call.direction == "inbound":
                call.hangup_by = ("system" if self._dialplan_hangs_up(call, channel)
                                  else "external")
            else:
                call.hangup_by = "agent"
        elif (side == "leg" and call.bridged_with_origin(base_of(channel))
              and not call.legs[base_of(channel)].optimized):
            call.hangup_by = "external" if call.direction == "outbound" else "agent"

    def _on_hangup(self, call: _Call, event: AmiMessage, now: float) -> None:
        self._on_hangup_request(call, event, now)
        channel = event.get("Channel", "")
        side = call.side(channel)
        if side == "origin" and call.hangup_cause is None and event.get("Cause", "").isdigit():
            call.hangup_cause = int(event["Cause"])
        if side == "leg":
            leg = call.legs[base_of(channel)]
            if leg.result is None:
                leg.end(_CAUSE_RESULTS.get(event.get("Cause", ""), "cancelled"), now)
        uniqueid = event.get("Uniqueid", "")
        if call.live.pop(uniqueid, None) is not None:
            self._homes.pop(uniqueid, None)
        call.states.pop(uniqueid, None)
        for members in call.bridges.values():
            members.discard(channel)
        if call.holds:
            self._hold_end(call, channel, now)
        if not call.live:
            for span in list(call.holds):
                self._hold_end(call, span, now)
            call.ended_at = now

    def _dialplan_hangs_up(self, call: _Call, channel: str) -> bool:
        """True when the dialplan leg itself is running Hangup/Busy/...: the system ends it."""
        return not channel.endswith(";1") and channel in call.giving_up

    def _waiting_reason(self, call: _Call) -> str:
        attempts = call.attempts()
        if any(leg.ringing for leg in attempts):
            return "while_ringing"
        if attempts or call.in_queue:
            return "in_queue"
        return "in_ivr"

    # -- the record -------------------------------------------------------------------------

    def _finish(self, call: _Call) -> CallRecord:
        """Free the call's state and build its record."""
        self._release(call)
        return self._record(call)

    def _release(self, call: _Call) -> None:
        """Forget a finished call (its linkedids stay known as finished for a while)."""
        self.calls.pop(call.linkedid, None)
        for uniqueid in call.live:
            if self._homes.get(uniqueid) == call.linkedid:
                del self._homes[uniqueid]
        for linkedid in (call.linkedid, *(call.merged or ())):
            self._merged.pop(linkedid, None)
            self._finished[linkedid] = None
        while len(self._finished) > FINISHED_MEMORY:
            del self._finished[next(iter(self._finished))]

    def _record(self, call: _Call) -> CallRecord:
        """The record of a released call: reads the call and the settings, changes neither
        the correlator nor anything another call uses."""
        ended_at = call.ended_at if call.ended_at is not None else call.last_event_at
        for span in list(call.holds):
            self._hold_end(call, span, ended_at)
        for leg in call.legs.values():
            if leg.result is None:
                leg.end("cancelled", ended_at)
        legs = list(call.legs.values())
        attempts = call.attempts()
        ringing = attempts if call.direction == "inbound" else legs
        if call.answered_at is not None:
            ringing = [leg for leg in ringing if leg.offered_at <= call.answered_at]
        ring_starts = [leg.ring_started_at for leg in ringing if leg.ring_started_at is not None]
        ring_started_at = min(ring_starts) if ring_starts else None
        ring_seconds = 0.0
        if ring_started_at is not None:
            if call.answered_at is not None:
                ring_end = call.answered_at
            else:
                ring_end = max(leg.ended_at or ended_at for leg in ringing
                               if leg.ring_started_at is not None)
            ring_seconds = max(ring_end - ring_started_at, 0.0)
        rings = rings_for(ring_seconds, self.pbx.ring_cadence_seconds)
        wait_until = call.answered_at if call.answered_at is not None else ended_at
        outcome, reason = self._outcome(call, attempts)
        wait_seconds = max(wait_until - call.arrived_at, 0.0)
        agent = call.answered_by
        if call.direction != "inbound" and call.origin is not None:
            agent = interface_of(call.origin)
        return CallRecord(
            pbx=self.pbx.name,
            linkedid=call.linkedid,
            direction=call.direction,
            line=self.pbx.line_for(call.did) if call.direction == "inbound" else None,
            called_number=call.did if call.direction == "inbound" else call.called_number,
            caller_number=call.caller_number,
            caller_name=call.caller_name,
            arrived_at=call.arrived_at,
            ring_started_at=ring_started_at,
            answered_at=call.answered_at,
            ended_at=ended_at,
            ring_seconds=round(ring_seconds, 3),
            rings=rings,
            wait_seconds=round(wait_seconds, 3),
            talk_seconds=round(ended_at - call.answered_at, 3) if call.answered_at else 0.0,
            hold_seconds=round(call.hold_seconds, 3),
            outcome=outcome,
            reason=reason,
            voicemail=call.voicemail,
            short_abandon=(outcome == "abandoned"
                           and wait_seconds < self.pbx.short_abandon_seconds),
            agent=agent,
            agent_name=self.agent_name(agent) if agent else None,
            hangup_by=call.hangup_by if call.answered_at is not None else None,
            hangup_cause=call.hangup_cause,
            queue=call.queue,
            incomplete=call.incomplete,
            transfers=call.transfers,
            attempts=[_attempt(leg, self.agent_name(leg.interface)) for leg in attempts],
        )

    def _outcome(self, call: _Call, attempts: list[_Leg]) -> tuple[Outcome, str | None]:
        if call.answered_at is not None:
            return "answered", None
        if call.direction != "inbound":
            return "unanswered", None
        if call.caller_left is not None:
            return "abandoned", call.caller_left
        if call.route_result == "no_agent_on_duty":
            return "missed", "no_agent_on_duty"
        if call.voicemail:
            return "missed", "voicemail"
        if not attempts:
            return "missed", "no_agent_on_duty"
        if all(leg.result in ("busy", "unavailable") for leg in attempts):
            return "missed", "no_agent_available"
        return "missed", "not_answered"


def _attempt(leg: _Leg, agent_name: str | None) -> Attempt:
    ring_seconds = 0.0
    if leg.ring_started_at is not None and leg.ended_at is not None:
        ring_seconds = round(max(leg.ended_at - leg.ring_started_at, 0.0), 3)
    return Attempt(
        interface=leg.interface,
        agent_name=agent_name,
        offered_at=leg.offered_at,
        ring_started_at=leg.ring_started_at,
        ended_at=leg.ended_at,
        result=leg.result,
        ring_seconds=ring_seconds,
    )


def _gives_up(app: str, data: str) -> bool:
    """An application that ends the dialplan's search for an agent (busy, voicemail...)."""
    if app == "Playtones":
        return data.split(",", 1)[0].strip().lower() in _GIVE_UP_TONES
    return app in _GIVE_UP_APPS


def member_interface(member: str) -> str:
    """A queue member's interface as its channels are named: a Local member's dial
    options go (`Local/1001@from-queue/n` -> `Local/1001@from-queue`)."""
    if member.startswith("Local/"):
        return "/".join(member.split("/", 2)[:2])
    return member


def _is_device(interface: str) -> bool:
    """A StateInterface that names a device (`PJSIP/1001`), not a hint, custom state
    or another Local channel."""
    tech, slash, _ = interface.partition("/")
    return bool(slash) and tech != "Local" and ":" not in tech


def _linkedid(event: AmiMessage) -> str | None:
    return (event.get("Linkedid") or event.get("DestLinkedid")
            or event.get("TransfereeLinkedid") or event.get("OrigTransfererLinkedid")
            or event.get("LocalOneLinkedid"))


def event_time(value: str | None) -> float | None:
    """An event's Timestamp as POSIX seconds; None when absent or not a sane time."""
    if not value:
        return None
    try:
        stamp = float(value)
    except ValueError:
        return None
    return stamp if 0.0 <= stamp < MAX_TIMESTAMP else None


def _duration(value: str | None) -> float:
    """'HH:MM:SS' (CoreShowChannel Duration) to seconds; 0 when absent or odd."""
    try:
        h, m, s = (int(p) for p in (value or "").split(":"))
    except ValueError:
        return 0.0
    return float(h * 3600 + m * 60 + s)
