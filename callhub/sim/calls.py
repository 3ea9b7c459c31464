"""Synthetic calls made from recorded ones: same events, same headers, same order.

`CallFactory.make` turns a template (one recorded call, `templates.py`) into
a new call by renaming (uniqueids and linkedid continuing an Asterisk-style
`<epoch>.<n>` counter, channel suffixes, bridge ids, caller number and name,
DID, agent devices) and re-timing (shift to a start time; stretch the ring
span and the talk span to the requested seconds). No event sequence is
invented, so whatever the correlator learns from the simulator it would also
see from Asterisk.

Each generated call carries `expected`: the template's ground truth with the
same renames and re-timing applied, in DESIGN.md terms, for tests to compare.
"""

from __future__ import annotations

import math
import random
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from callhub.ami.parser import AmiMessage
from callhub.sim.templates import CHANNEL_SUFFIX, Template, template_for
from callhub.sim.timeline import piecewise

_UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
_UNIQUEID = re.compile(r"^\d{9,11}\.\d+$")
_CEL_TIME = "%Y-%m-%d %H:%M:%S"
_TV_TIME = "%Y-%m-%dT%H:%M:%S.%f%z"


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
        retime = piecewise(anchors)
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
                value = CHANNEL_SUFFIX.sub(
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
        if tpl.talk_seconds and exp.get("hold_seconds"):
            # A hold lies inside the talk span, which is stretched evenly.
            exp["hold_seconds"] = round(float(exp["hold_seconds"]) * talk / tpl.talk_seconds, 3)
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
