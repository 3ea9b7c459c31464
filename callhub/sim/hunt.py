"""A hunt through any number of devices, as AMI events cut from the recorded hunt group.

The recorded hunt (`06`/`p06` traces: one attempt rings out, the next
answers) is cut into its parts and re-assembled: the recorded ring-out
attempt once per device that does not answer, then the recorded answered
attempt, re-timed to each device's ring timeout, the answering device's ring
time and the talk time. The result is a template on placeholder devices that
`calls.CallFactory` renames to the real ones. No event shape is invented.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from callhub.ami.parser import AmiMessage
from callhub.sim.templates import Template, load_template
from callhub.sim.timeline import piecewise

HUNT_TEMPLATES = {"pjsip": "p06_sip_hunt_rna_then_answer", "local": "06_huntgroup_rna_then_answer"}
_UNIQUEID = re.compile(r"^(\d{9,11})\.(\d+)$")
_SUFFIX = re.compile(r"-([0-9a-f]{8})(?=;|$|[^0-9a-f])")


@dataclass(frozen=True, slots=True)
class Behaviour:
    """How a simulated phone reacts: answers after `ring_seconds`, or rings out."""

    answers: bool = True
    ring_seconds: float = 3.0
    talk_seconds: float = 30.0


@dataclass(slots=True)
class HuntParts:
    """The recorded hunt cut into: before the first Dial, one ring-out, one answer."""

    template: Template
    first: str  # the device that rings out
    second: str  # the device that answers
    prefix: list[AmiMessage]
    ring_out: list[AmiMessage]
    answer: list[AmiMessage]
    dial_at: float  # the first Dial's Newexten
    no_answer_at: float  # the ring-out's DialEnd
    second_dial_at: float  # the second Dial's Newexten
    second_ring_at: float
    answered_at: float
    ended_at: float


def _t(message: AmiMessage) -> float:
    return float(message["Timestamp"])


def _mentions(message: AmiMessage, device: str) -> bool:
    return any(device in value for value in message.values())


def _is_dial(message: AmiMessage) -> bool:
    return message.get("Event") == "Newexten" and message.get("Application") == "Dial"


def hunt_parts(kind: str = "pjsip") -> HuntParts:
    """Cut the recorded hunt group into its parts (PJSIP or Local devices)."""
    tpl = load_template(HUNT_TEMPLATES[kind])
    first, second = tpl.interfaces[:2]
    msgs = tpl.messages
    dials = [i for i, m in enumerate(msgs) if _is_dial(m)]
    i1, i2 = dials[0], dials[1]
    prefix = msgs[:i1 + 1]
    ring_out: list[AmiMessage] = []
    answer: list[AmiMessage] = []
    for i, m in enumerate(msgs[i1 + 1:], i1 + 1):
        if _mentions(m, first) or (i < i2 and not _mentions(m, second)):
            ring_out.append(m)
        else:
            answer.append(m)
    no_answer_at = next(_t(m) for m in ring_out if m.get("Event") == "DialEnd")
    ring_at = next(_t(m) for m in answer
                   if (m.get("Event") == "DialState" and m.get("DialStatus") == "RINGING")
                   or (m.get("Event") == "Newstate" and m.get("ChannelStateDesc") == "Ringing"))
    answered_at = next(_t(m) for m in answer if m.get("Event") == "DialEnd"
                       and m.get("DialStatus") == "ANSWER" and m.get("Channel"))
    assert tpl.talk_end is not None
    return HuntParts(tpl, first, second, prefix, ring_out, answer, _t(msgs[i1]),
                     no_answer_at, _t(msgs[i2]), ring_at, answered_at, tpl.talk_end)


def _placeholder(kind: str, index: int) -> str:
    return f"PJSIP/{9000 + index}" if kind == "pjsip" else f"Local/hunt{index}@agentsim"


def _token(device: str) -> str:
    return device.split("/", 1)[-1].split("@", 1)[0]


def _copy(messages: list[AmiMessage], device: str, new_device: str, copy: int,
          retime: Callable[[float], float], own_ids: set[str]) -> list[AmiMessage]:
    """The messages with `device` renamed, its channels' ids made unique per copy, re-timed."""
    token = re.compile(rf"(?<![\w.+]){re.escape(_token(device))}(?!\w)")
    new_token = _token(new_device)
    out = []
    for m in messages:
        n: AmiMessage = {}
        for key, value in m.items():
            if key == "Timestamp":
                n[key] = f"{retime(float(value)):.6f}"
                continue
            if value in own_ids and (match := _UNIQUEID.match(value)):
                value = f"{match[1]}.{int(match[2]) + 100000 * (copy + 1)}"
            if device in value:
                value = value.replace(device, new_device)
                value = _SUFFIX.sub(
                    lambda s: f"-{(int(s[1], 16) + 0x10000000 * (copy + 1)) & 0xFFFFFFFF:08x}",
                    value)
            value = token.sub(new_token, value)
            n[key] = value
        out.append(n)
    return out


def _leg_ids(messages: list[AmiMessage], device: str) -> set[str]:
    ids = set()
    for m in messages:
        if device in m.get("Channel", ""):
            ids.add(m.get("Uniqueid", ""))
        if device in m.get("DestChannel", ""):
            ids.add(m.get("DestUniqueid", ""))
    return {i for i in ids if i}


def hunt_template(devices: int, ring_timeout: float | Sequence[float], answer: Behaviour,
                  kind: str = "pjsip", variables: Iterable[tuple[str, str]] = (),
                  ) -> tuple[Template, list[str]]:
    """A recorded-shape call that rings `devices` placeholder devices in turn: each but the
    last rings out after its ring timeout (`ring_timeout`: one for all, or one per
    device), the last answers as `answer` says. `variables` (what the AGI step set)
    appear as VarSet events on the inbound channel, one per variable MSet sets.
    Returns the template and its placeholder devices (for `CallFactory.make(agents=...)`)."""
    parts = hunt_parts(kind)
    placeholders = [_placeholder(kind, i) for i in range(devices)]
    timeouts = ([float(ring_timeout)] * devices if isinstance(ring_timeout, (int, float))
                else [float(t) for t in ring_timeout])
    if len(timeouts) != devices:
        raise ValueError(f"{devices} devices but {len(timeouts)} ring timeouts")
    gap = parts.second_dial_at - parts.no_answer_at  # from one DialEnd to the next Dial
    starts = [parts.dial_at]
    for t in timeouts[:-1]:
        starts.append(starts[-1] + t + gap)
    messages: list[tuple[float, int, AmiMessage]] = []

    def add(items: list[AmiMessage]) -> None:
        for m in items:
            messages.append((_t(m), len(messages), m))

    def dial_to(items: list[AmiMessage], index: int) -> list[AmiMessage]:
        for m in items:
            if _is_dial(m):  # Dial(${CUT(CALLHUB_TARGETS,&,i)},${CALLHUB_T})
                m["AppData"] = f"{placeholders[index]},{int(timeouts[index])}"
        return items

    prefix = _copy(parts.prefix, parts.first, placeholders[0], -1, lambda t: t, set())
    add(dial_to(_with_varsets(prefix, list(variables)), 0))
    out_ids = _leg_ids(parts.ring_out, parts.first)
    last = devices - 1
    for i in range(last):
        start = starts[i]
        retime = piecewise([(parts.dial_at, start),
                             (parts.no_answer_at, start + timeouts[i])])
        add(dial_to(_copy(parts.ring_out, parts.first, placeholders[i], i, retime, out_ids),
                    i + 1))
    # The recorded hunt has two Dial()s; each device between the first and the last gets a
    # copy of the second one, at the moment the dialplan loop reaches it.
    second_dial = [m for m in parts.answer if _is_dial(m)]
    for i in range(1, last):
        at_start = piecewise([(parts.second_dial_at, starts[i])])
        add(dial_to(_copy(second_dial, parts.second, placeholders[i], i, at_start, set()), i))
    dial_at = starts[last]
    ring_at = dial_at + (parts.second_ring_at - parts.second_dial_at)
    answered = ring_at + answer.ring_seconds
    ended = answered + answer.talk_seconds
    retime = piecewise([(parts.second_dial_at, dial_at), (parts.second_ring_at, ring_at),
                         (parts.answered_at, answered), (parts.ended_at, ended)])
    # The first device answering: its Dial() is the prefix's, not a second one.
    rest = parts.answer if last > 0 else [m for m in parts.answer if not _is_dial(m)]
    add(dial_to(_copy(rest, parts.second, placeholders[last], last, retime, set()), last))
    messages.sort(key=lambda x: (x[0], x[1]))
    ordered = [m for _, _, m in messages]
    ring_start = parts.dial_at + (parts.second_ring_at - parts.second_dial_at)
    exp = dict(parts.template.expected)
    exp.update(outcome="answered", agent=placeholders[last],
               attempts=[{"interface": p, "result": "no_answer", "ring_seconds": t}
                         for p, t in zip(placeholders[:last], timeouts, strict=False)]
               + [{"interface": placeholders[last], "result": "answered",
                   "ring_seconds": answer.ring_seconds}],
               ring_seconds=round(answered - ring_start, 3))
    exp.pop("talk_seconds", None)
    exp.pop("rings", None)
    template = Template(f"agi_hunt_{kind}", ordered, exp, dict(parts.template.config),
                        _t(ordered[0]), ring_start, answered, ended)
    return template, placeholders


def _with_varsets(prefix: list[AmiMessage], variables: list[tuple[str, str]]
                  ) -> list[AmiMessage]:
    """Insert a VarSet per variable after the dialplan's own `Set(__CALLHUB_DID=...)`."""
    if not variables:
        return prefix
    index = next((i for i, m in enumerate(prefix) if m.get("Event") == "VarSet"
                  and m.get("Variable") == "__CALLHUB_DID"), None)
    if index is None:
        return prefix
    shape = prefix[index]
    added = [dict(shape, Variable=name, Value=value) for name, value in variables]
    return [*prefix[:index + 1], *added, *prefix[index + 1:]]
