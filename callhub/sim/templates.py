"""Templates: single calls cut out of recorded traces, with their ground truth.

The traces are `callhub/sim/traces/` (recorded from a real Asterisk 22, copied
from the project's trace set with their ground truth; they double as the
repository's sample traces for `callhub replay` and `callhub simulate`). A
template is one call of a trace: its messages, the record DESIGN.md says it
must produce, and the anchors re-timing stretches between (when ringing
starts, when it ends, when talk ends). `SCENARIOS` names the kinds of call
the simulator makes and the recording each is made from.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from callhub.ami.parser import AmiMessage, iter_file_messages
from callhub.sim.recording import recorded_events

TRACES_DIR = Path(__file__).with_name("traces")

ANSWER_EVENTS = frozenset({"DialEnd", "AgentConnect"})
UNANSWERED_END_EVENTS = frozenset({"DialEnd", "AgentRingNoAnswer", "QueueCallerAbandon",
                                   "Hangup", "HangupRequest", "SoftHangupRequest"})
HANGUP_EVENTS = frozenset({"Hangup", "HangupRequest", "SoftHangupRequest"})

CHANNEL_SUFFIX = re.compile(
    r"(?P<base>\b(?:Local|PJSIP|SIP|IAX2|DAHDI)/[^\s,;()\"<>]+?)-(?P<suffix>[0-9a-f]{8})"
    r"(?![0-9a-f-])")


@dataclass(frozen=True, slots=True)
class Scenario:
    """A kind of call and the recorded call it is made from (Local and PJSIP set-ups;
    a kind recorded in one set-up only names that recording for both)."""

    kind: str
    local: str
    pjsip: str | None
    description: str


SCENARIOS: dict[str, Scenario] = {s.kind: s for s in (
    Scenario("answered", "01_answered_caller_hangup", "p01_sip_direct_utf8_caller_hangup",
             "direct dial, answered after ring_seconds, caller hangs up first"),
    Scenario("answered_agent_hangup", "02_answered_agent_hangup", None,
             "direct dial, answered, agent hangs up first"),
    Scenario("abandoned", "03_abandoned_ringing", None,
             "direct dial, caller gives up after ring_seconds"),
    Scenario("missed", "04_missed_noanswer_voicemail", None,
             "rings out after ring_seconds, goes to voicemail"),
    Scenario("busy", "05_busy_agent", "p04_sip_direct_busy_486", "agent busy, never rings"),
    Scenario("hunt", "06_huntgroup_rna_then_answer", "p06_sip_hunt_rna_then_answer",
             "hunt group: first agent rings out, second answers"),
    Scenario("queue_answered", "07a_queue_answered", None, "app_queue, answered"),
    Scenario("queue_abandoned", "07b_queue_abandoned", None,
             "app_queue, caller gives up while an agent rings"),
    Scenario("queue_rna", "07c_queue_rna_then_answer", None,
             "app_queue, first member rings out, second answers"),
    Scenario("outbound", "10_outbound_callback", "p09_sip_outbound_agent_hangup",
             "an agent calls an outside number"),
    # Recorded with SIP phones only: the Local set-up plays the same recording.
    Scenario("ringgroup_local", "r01_sip_ringgroup_local_members",
             "r01_sip_ringgroup_local_members",
             "FreePBX-style ring group through Local channels: both phones ring, the "
             "second answers"),
    Scenario("held", "q03_sip_hold_reinvite", "q03_sip_hold_reinvite",
             "answered; the agent's phone holds the caller for a while, then talks on"),
)}


@dataclass(slots=True)
class Template:
    """One recorded call and the anchors re-timing stretches between."""

    name: str
    messages: list[AmiMessage]
    expected: dict[str, Any]
    config: dict[str, Any]
    t0: float
    ring_start: float | None
    ring_end: float | None
    talk_end: float | None

    @property
    def inbound(self) -> bool:
        return bool(self.expected.get("direction") == "inbound")

    @property
    def external_number(self) -> str | None:
        key = "caller_number" if self.inbound else "called_number"
        value = self.expected.get(key)
        return str(value) if value else None

    @property
    def did(self) -> str | None:
        value = self.expected.get("called_number") if self.inbound else None
        return str(value) if value else None

    @property
    def interfaces(self) -> list[str]:
        """Agent devices of the call, in the order the ground truth names them."""
        found = [a["interface"] for a in self.expected.get("attempts", [])]
        if self.expected.get("agent"):
            found.append(self.expected["agent"])
        return list(dict.fromkeys(found))

    @property
    def ring_seconds(self) -> float:
        if self.ring_start is None or self.ring_end is None:
            return 0.0
        return self.ring_end - self.ring_start

    @property
    def talk_seconds(self) -> float:
        if self.ring_end is None or self.talk_end is None:
            return 0.0
        return self.talk_end - self.ring_end


def _linkedids(message: AmiMessage) -> list[str]:
    return [v for k, v in message.items() if k.lower().endswith("linkedid") and v]


def interface_of(channel: str) -> str:
    """`PJSIP/1001-0000002a` -> `PJSIP/1001`; `Local/a@b-0000001;2` -> `Local/a@b`."""
    match = CHANNEL_SUFFIX.search(channel)
    return match.group("base") if match else channel


def call_messages(messages: Sequence[AmiMessage], linkedid: str) -> list[AmiMessage]:
    """One call's messages: those carrying its Linkedid, plus the ones without any
    Linkedid that name its channels, uniqueids, bridges or devices (the originate's
    DialBegin/DialEnd, OriginateResponse, Cdr, BridgeCreate, DeviceStateChange...)."""
    events = recorded_events(messages)
    channels: set[str] = set()
    uniqueids: set[str] = set()
    bridges: set[str] = set()
    for message in events:
        if linkedid not in _linkedids(message):
            continue
        for key, value in message.items():
            low = key.lower()
            if low.endswith("channel") and "/" in value:
                channels.add(value)
            elif low.endswith("uniqueid") and low.startswith("bridge"):
                bridges.add(value)
            elif low.endswith("uniqueid"):
                uniqueids.add(value)
    devices = {interface_of(c) for c in channels}
    wanted = channels | uniqueids | devices
    out = []
    for message in events:
        ids = _linkedids(message)
        if ids:
            if linkedid in ids:
                out.append(message)
            continue
        if message.get("BridgeUniqueid") in bridges or any(
                v in wanted for v in message.values()):
            out.append(message)
    return out


@lru_cache(maxsize=64)
def load_template(name: str, directory: str | None = None) -> Template:
    """A template by trace name (`01_answered_caller_hangup`), from the package by default."""
    base = Path(directory) if directory else TRACES_DIR
    truth = json.loads((base / f"{name}.json").read_text("utf-8"))
    expected_call = dict(truth["expected"]["calls"][0])
    messages = call_messages(list(iter_file_messages(base / f"{name}.ami")),
                             expected_call["linkedid"])
    return _with_anchors(name, messages, expected_call, dict(truth["expected"]["config"]))


def _time(message: AmiMessage) -> float | None:
    value = message.get("Timestamp")
    return float(value) if value else None


def _with_anchors(name: str, messages: list[AmiMessage], expected: dict[str, Any],
                  config: dict[str, Any]) -> Template:
    """Find where ringing starts, where it ends (answer or give-up) and where talk ends."""
    times = [t for t in map(_time, messages) if t is not None]
    t0 = times[0]
    agents = set(config.get("agents", {})) | {a["interface"] for a in
                                               expected.get("attempts", [])}
    ring_start = None
    for message in messages:
        event = message["Event"]
        if (event == "DialState" and message.get("DialStatus") == "RINGING"
                and message.get("Channel")) or (
                event == "Newstate" and message.get("ChannelStateDesc") == "Ringing"
                and interface_of(message.get("Channel", "")) in agents):
            ring_start = _time(message)
            break
    answered = expected.get("outcome") == "answered"
    gt_ring = expected.get("ring_seconds")
    ring_end = talk_end = None
    if ring_start is not None and (gt_ring or (answered and gt_ring is None)):
        kinds = ANSWER_EVENTS if answered else UNANSWERED_END_EVENTS
        candidates = [(t, m) for m in messages if (t := _time(m)) is not None
                      and t > ring_start and m["Event"] in kinds
                      and (not answered or m["Event"] == "AgentConnect"
                           or (m.get("DialStatus") == "ANSWER" and m.get("Channel")))]
        if candidates:
            if gt_ring is None:
                ring_end = candidates[0][0]
            else:
                target = ring_start + float(gt_ring)
                ring_end = min(candidates, key=lambda c: abs(c[0] - target))[0]
    gt_talk = expected.get("talk_seconds")
    if answered and ring_end is not None and gt_talk:
        target = ring_end + float(gt_talk)
        ends = [t for m in messages if (t := _time(m)) is not None and t > ring_end
                and m["Event"] in HANGUP_EVENTS]
        if ends:
            talk_end = min(ends, key=lambda t: abs(t - target))
    return Template(name, messages, expected, config, t0, ring_start, ring_end, talk_end)


def template_for(kind: str, pjsip: bool = False) -> Template:
    """The template of a scenario kind; PJSIP falls back to Local where none was recorded."""
    try:
        scenario = SCENARIOS[kind]
    except KeyError:
        raise ValueError(f"unknown scenario kind {kind!r} (kinds: {', '.join(SCENARIOS)})"
                         ) from None
    return load_template(scenario.pjsip if pjsip and scenario.pjsip else scenario.local)
