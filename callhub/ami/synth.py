"""Synthetic calls made from recorded ones: same events, same headers, same order.

A template is one call cut out of a trace recorded from a real Asterisk 22
(`callhub/ami/templates/`, copied from the project's trace set with their
ground truth). `CallFactory.make` turns it into a new call by renaming
(uniqueids and linkedid continuing an Asterisk-style `<epoch>.<n>` counter,
channel suffixes, bridge ids, caller number and name, DID, agent devices)
and re-timing (shift to a start time; stretch the ring span and the talk
span to the requested seconds). No event sequence is invented, so whatever
the correlator learns from the simulator it would also see from Asterisk.

Each generated call carries `expected`: the template's ground truth with the
same renames and re-timing applied, in DESIGN.md terms, for tests to compare.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from callhub.ami.parser import AmiMessage, iter_file_messages

TEMPLATES_DIR = Path(__file__).with_name("templates")

SESSION_EVENTS = frozenset({"FullyBooted", "SuccessfulAuth"})
ANSWER_EVENTS = frozenset({"DialEnd", "AgentConnect"})
UNANSWERED_END_EVENTS = frozenset({"DialEnd", "AgentRingNoAnswer", "QueueCallerAbandon",
                                   "Hangup", "HangupRequest", "SoftHangupRequest"})
HANGUP_EVENTS = frozenset({"Hangup", "HangupRequest", "SoftHangupRequest"})

_CHANNEL_SUFFIX = re.compile(
    r"(?P<base>\b(?:Local|PJSIP|SIP|IAX2|DAHDI)/[^\s,;()\"<>]+?)-(?P<suffix>[0-9a-f]{8})"
    r"(?![0-9a-f-])")
_UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
_UNIQUEID = re.compile(r"^\d{9,11}\.\d+$")
_CEL_TIME = "%Y-%m-%d %H:%M:%S"
_TV_TIME = "%Y-%m-%dT%H:%M:%S.%f%z"


@dataclass(frozen=True, slots=True)
class Scenario:
    """A kind of call and the recorded call it is made from (Local and PJSIP set-ups)."""

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
)}

DEFAULT_MIX: dict[str, float] = {
    "answered": 40, "answered_agent_hangup": 10, "abandoned": 8, "missed": 5, "busy": 5,
    "hunt": 10, "queue_answered": 10, "queue_abandoned": 4, "queue_rna": 4, "outbound": 4,
}
DEMO_NAMES = ("张三", "李四", "王芳", "Müller", "<unknown>", "Zoë", "陈静", "Ahmed")
DEMO_DIDS = ("4008001000", "4008001001", "4008001002", "4008001003")


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


@dataclass(slots=True)
class SynthCall:
    """A generated call: its AMI events (time-ordered) and what callhub should make of it."""

    kind: str
    template: str
    linkedid: str
    start: float
    messages: list[AmiMessage]
    expected: dict[str, Any]

    @property
    def end(self) -> float:
        return max(float(m["Timestamp"]) for m in self.messages)

    def schedule(self) -> list[tuple[float, AmiMessage]]:
        """(send time, message) in the recorded order.

        Asterisk stamps events in several threads, so Timestamps within a call
        are not always in emission order; a message is sent no earlier than
        the one before it, which keeps the recorded order.
        """
        out = []
        latest = float("-inf")
        for message in self.messages:
            latest = max(latest, float(message["Timestamp"]))
            out.append((latest, message))
        return out


def merge_calls(calls: Iterable[SynthCall]) -> list[tuple[float, AmiMessage]]:
    """Several calls' messages interleaved by send time, each call's order kept."""
    keyed = [(at, i, j, message) for i, call in enumerate(calls)
             for j, (at, message) in enumerate(call.schedule())]
    keyed.sort(key=lambda item: item[:3])
    return [(at, message) for at, _, _, message in keyed]


def is_session_message(message: AmiMessage) -> bool:
    """Messages of the recording session itself, not of any call."""
    return "Event" not in message or message["Event"] in SESSION_EVENTS


def recorded_events(messages: Sequence[AmiMessage]) -> list[AmiMessage]:
    """A recording's events without its banner, responses and their event lists."""
    answered_ids: set[str] = set()
    out = []
    for message in messages:
        if "Event" not in message:
            if "ActionID" in message:
                answered_ids.add(message["ActionID"])
            continue
        if message.get("ActionID") in answered_ids or message["Event"] in SESSION_EVENTS:
            continue
        out.append(message)
    return out


def _linkedids(message: AmiMessage) -> list[str]:
    return [v for k, v in message.items() if k.lower().endswith("linkedid") and v]


def interface_of(channel: str) -> str:
    """`PJSIP/1001-0000002a` -> `PJSIP/1001`; `Local/a@b-0000001;2` -> `Local/a@b`."""
    match = _CHANNEL_SUFFIX.search(channel)
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
    base = Path(directory) if directory else TEMPLATES_DIR
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


def _piecewise(anchors: list[tuple[float, float]]) -> Callable[[float], float]:
    """Monotonic map through (old, new) anchor points; a shift outside them."""
    points = sorted(anchors)

    def retime(t: float) -> float:
        if t <= points[0][0]:
            return t - points[0][0] + points[0][1]
        for (a, fa), (b, fb) in itertools.pairwise(points):
            if t <= b:
                return fa if b == a else fa + (t - a) * (fb - fa) / (b - a)
        return t - points[-1][0] + points[-1][1]
    return retime


def _token_pattern(tokens: Mapping[str, str]) -> re.Pattern[str] | None:
    if not tokens:
        return None
    alternatives = "|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True))
    return re.compile(rf"(?<![\w.+])(?:{alternatives})(?![\w])")


def _device_token(interface: str) -> str:
    """The part of an interface that also shows up on its own (`1001`, `agent1`)."""
    return interface.split("/", 1)[-1].split("@", 1)[0]


@dataclass
class CallFactory:
    """Makes synthetic calls; keeps Asterisk-like counters across the calls it makes."""

    pjsip: bool = False
    seed: int | None = None
    uniqueid_counter: int = 0
    channel_counter: int = 0
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def make(self, kind: str, start: float, *, ring_seconds: float | None = None,
             talk_seconds: float | None = None, number: str | None = None,
             caller_name: str | None = None, did: str | None = None,
             agent: str | None = None, agents: Mapping[str, str] | None = None,
             template: Template | None = None) -> SynthCall:
        """One call of `kind` starting at `start` (epoch seconds).

        `number` is the outside party (the caller of an inbound call, the
        called number of an outbound one); `agent` replaces the answering (or
        only) agent device; `agents` maps any template device to a new one.
        """
        tpl = template or template_for(kind, self.pjsip)
        ring = tpl.ring_seconds if ring_seconds is None or not tpl.ring_seconds else ring_seconds
        talk = tpl.talk_seconds if talk_seconds is None or not tpl.talk_seconds else talk_seconds
        anchors = [(tpl.t0, start)]
        if tpl.ring_start is not None:
            anchors.append((tpl.ring_start, start + tpl.ring_start - tpl.t0))
            if tpl.ring_end is not None:
                ring_at = anchors[-1][1] + ring
                anchors.append((tpl.ring_end, ring_at))
                if tpl.talk_end is not None:
                    anchors.append((tpl.talk_end, ring_at + talk))
        retime = _piecewise(anchors)
        device_map = self._device_map(tpl, agent, agents)
        tokens: dict[str, str] = {}
        for old, new in device_map.items():
            tokens[old] = new
            tokens[_device_token(old)] = _device_token(new)
            names = tpl.config.get("agents", {})
            if names.get(old) and names.get(new):
                tokens[names[old]] = names[new]
        if number and tpl.external_number:
            tokens[tpl.external_number] = number
        if did and tpl.did:
            tokens[tpl.did] = did
        old_name = tpl.expected.get("caller_name")
        if caller_name is not None and old_name:
            tokens[old_name] = caller_name
        uniqueids = self._new_uniqueids(tpl, retime)
        tokens.update(uniqueids)
        pattern = _token_pattern(tokens)
        suffixes: dict[str, str] = {}
        bridges: dict[str, str] = {}

        renamed: dict[str, str] = {}

        def rename(value: str) -> str:
            if value in renamed:  # values repeat a lot within a call
                return renamed[value]
            original = value
            if pattern is not None:
                value = pattern.sub(lambda m: tokens[m.group(0)], value)
            if "/" in value:
                value = _CHANNEL_SUFFIX.sub(
                    lambda m: f"{m.group('base')}-{self._suffix(suffixes, m.group('suffix'))}",
                    value)
            if "-" in value:
                value = _UUID.sub(lambda m: bridges.setdefault(
                    m.group(0), str(uuid.UUID(int=self.rng.getrandbits(128), version=4))),
                    value)
            renamed[original] = value
            return value

        messages = [self._rewrite(m, rename, retime) for m in tpl.messages]
        outside = number or tpl.external_number
        if caller_name is not None and outside:
            for message in messages:
                _set_caller_name(message, outside, caller_name)
        linkedid = uniqueids.get(tpl.expected["linkedid"], tpl.expected["linkedid"])
        expected = self._expected(tpl, linkedid, ring, talk, device_map, number, did,
                                  caller_name)
        return SynthCall(kind, tpl.name, linkedid, start, messages, expected)

    def _device_map(self, tpl: Template, agent: str | None,
                    agents: Mapping[str, str] | None) -> dict[str, str]:
        mapping = dict(agents or {})
        if agent is not None:
            old = tpl.expected.get("agent") or next(iter(tpl.interfaces), None)
            if old is not None and old != agent:
                mapping[old] = agent
                if agent in tpl.interfaces:  # a swap keeps the template's devices distinct
                    mapping.setdefault(agent, old)
        return {k: v for k, v in mapping.items() if k != v}

    def _new_uniqueids(self, tpl: Template, retime: Callable[[float], float]
                       ) -> dict[str, str]:
        """Old uniqueid -> `<new epoch>.<n>`, n continuing this factory's counter."""
        created: dict[str, float] = {}
        for message in tpl.messages:
            for key, value in message.items():
                low = key.lower()
                if (low.endswith(("uniqueid", "linkedid")) and not low.startswith("bridge")
                        and _UNIQUEID.match(value) and value not in created):
                    created[value] = float(message.get("Timestamp") or value.split(".")[0])
        out = {}
        for old in sorted(created, key=lambda u: int(u.split(".")[1])):
            out[old] = f"{int(retime(created[old]))}.{self.uniqueid_counter}"
            self.uniqueid_counter += 1
        return out

    def _suffix(self, suffixes: dict[str, str], old: str) -> str:
        if old not in suffixes:
            suffixes[old] = f"{self.channel_counter:08x}"
            self.channel_counter += 1
        return suffixes[old]

    @staticmethod
    def _rewrite(message: AmiMessage, rename: Callable[[str], str],
                 retime: Callable[[float], float]) -> AmiMessage:
        out: AmiMessage = {}
        for key, value in message.items():
            if key == "Timestamp" and value:
                out[key] = f"{retime(float(value)):.6f}"
            elif key in ("EventTV", "SessionTV") and value:
                when = datetime.strptime(value, _TV_TIME).timestamp()
                new = datetime.fromtimestamp(retime(when), UTC)
                millis = f"{new.microsecond // 1000:03d}"
                out[key] = new.strftime("%Y-%m-%dT%H:%M:%S.") + millis + "+0000"
            elif key in ("EventTime", "StartTime", "AnswerTime", "EndTime") and value:
                when = datetime.strptime(value, _CEL_TIME).replace(tzinfo=UTC).timestamp()
                out[key] = datetime.fromtimestamp(int(retime(when)), UTC).strftime(_CEL_TIME)
            else:
                out[key] = rename(value)
        if message.get("Event") == "Cdr":
            _cdr_durations(out)
        return out

    def _expected(self, tpl: Template, linkedid: str, ring: float, talk: float,
                  device_map: Mapping[str, str], number: str | None, did: str | None,
                  caller_name: str | None) -> dict[str, Any]:
        exp = dict(tpl.expected)
        exp["linkedid"] = linkedid
        cadence = float(tpl.config.get("ring_cadence_seconds", 5.0))
        if number:
            exp["caller_number" if tpl.inbound else "called_number"] = number
        if did and tpl.inbound:
            exp["called_number"] = did
        if caller_name is not None and tpl.inbound:
            # Asterisk's placeholder for "no name" is no name in a record.
            exp["caller_name"] = None if caller_name in ("", "<unknown>") else caller_name
        if exp.get("agent"):
            exp["agent"] = device_map.get(exp["agent"], exp["agent"])
        exp["attempts"] = [dict(a, interface=device_map.get(a["interface"], a["interface"]))
                           for a in exp.get("attempts", [])]
        if tpl.ring_seconds and exp.get("ring_seconds") is not None:
            exp["ring_seconds"] = round(ring, 3)
            exp["rings"] = math.floor(ring / cadence) + 1 if ring > 0 else 0
        if exp.get("outcome") == "abandoned" and tpl.ring_start is not None:
            # The caller gave up when ringing ended: wait = time before ringing + ring.
            wait = tpl.ring_start - tpl.t0 + ring
            exp["short_abandon"] = wait < float(tpl.config.get("short_abandon_seconds", 5.0))
        if tpl.talk_seconds and exp.get("talk_seconds"):
            exp["talk_seconds"] = round(float(exp["talk_seconds"]) - tpl.talk_seconds + talk, 3)
        return exp


def _set_caller_name(message: AmiMessage, number: str, name: str) -> None:
    """Give the outside party's name wherever its number is presented (`*Name` beside `*Num`)."""
    lower = {k.lower(): k for k in message}
    for key in list(message):
        low = key.lower()
        if low.endswith("name") and message.get(lower.get(low[:-4] + "num", ""), None) == number:
            message[key] = name
    if message.get("CallerID", "").endswith(f"<{number}>"):
        message["CallerID"] = f'"{name}" <{number}>'


def _cdr_durations(cdr: AmiMessage) -> None:
    def epoch(key: str) -> float | None:
        value = cdr.get(key)
        if not value:
            return None
        return datetime.strptime(value, _CEL_TIME).replace(tzinfo=UTC).timestamp()
    start, answer, end = epoch("StartTime"), epoch("AnswerTime"), epoch("EndTime")
    if start is not None and end is not None and "Duration" in cdr:
        cdr["Duration"] = str(int(end - start))
    if answer is not None and end is not None and "BillableSeconds" in cdr:
        cdr["BillableSeconds"] = str(int(end - answer))


@dataclass
class MixSettings:
    """A steady stream of calls: Poisson arrivals at `rate_per_minute`, kinds by weight."""

    rate_per_minute: float = 6.0
    kinds: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    ring_range: tuple[float, float] = (1.5, 22.0)
    talk_range: tuple[float, float] = (4.0, 90.0)
    names: Sequence[str] = DEMO_NAMES
    dids: Sequence[str] = DEMO_DIDS
    agents: Sequence[str] | None = None


def agent_pool(tpl: Template) -> list[str]:
    """The configured agent devices shaped like the template's own (`PJSIP/100N`)."""
    if not tpl.interfaces:
        return []
    shape = re.sub(r"\d+", "#", tpl.interfaces[0])
    return [a for a in tpl.config.get("agents", {}) if re.sub(r"\d+", "#", a) == shape]


def _off_boundaries(ring: float, tpl: Template, margin: float = 0.25) -> float:
    """Keep a ring time clear of ring-count and short-abandon boundaries, so the
    record it should produce is not a matter of milliseconds."""
    cadence = float(tpl.config.get("ring_cadence_seconds", 5.0))
    short = float(tpl.config.get("short_abandon_seconds", 5.0))
    pre_ring = (tpl.ring_start - tpl.t0) if tpl.ring_start is not None else 0.0
    for _ in range(8):
        near_cadence = abs(ring - round(ring / cadence) * cadence) < margin
        near_short = abs(pre_ring + ring - short) < margin
        if not (near_cadence or near_short):
            break
        ring += 2 * margin
    return ring


def generate_mix(start: float, settings: MixSettings | None = None, *,
                 seed: int | None = None, pjsip: bool = False,
                 factory: CallFactory | None = None) -> Iterator[SynthCall]:
    """An endless, start-ordered stream of overlapping synthetic calls."""
    settings = settings or MixSettings()
    if settings.rate_per_minute <= 0:
        raise ValueError("rate_per_minute must be > 0")
    for kind in settings.kinds:
        template_for(kind, pjsip)  # fail early on an unknown kind
    rng = random.Random(seed)
    factory = factory or CallFactory(pjsip=pjsip, seed=seed)
    kinds = list(settings.kinds)
    weights = [settings.kinds[k] for k in kinds]
    at = start
    serial = 0
    while True:
        at += rng.expovariate(settings.rate_per_minute / 60.0)
        serial += 1
        kind = rng.choices(kinds, weights)[0]
        tpl = template_for(kind, pjsip)
        pool = list(settings.agents or agent_pool(tpl))
        agent = rng.choice(pool) if pool and tpl.interfaces else None
        yield factory.make(
            kind, at,
            ring_seconds=_off_boundaries(round(rng.uniform(*settings.ring_range), 2), tpl),
            talk_seconds=round(rng.uniform(*settings.talk_range), 2),
            number=f"+86138{rng.randrange(10**8):08d}",
            caller_name=rng.choice(list(settings.names)),
            did=rng.choice(list(settings.dids)),
            agent=agent, template=tpl)
