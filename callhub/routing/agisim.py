"""The simulator's AGI client mode: synthetic inbound calls routed by callhub's FastAGI.

For each call the simulator does what Asterisk does with the dialplan in
deploy/asterisk/extensions.conf: it opens a FastAGI connection, sends the
AGI environment exactly as res_agi.c writes it, answers every command with
`200 result=1`, reads the `CALLHUB_*` variables, then rings the returned
agents one after the other, each for its own timeout (`CALLHUB_RING_TIMEOUTS`,
else `CALLHUB_RING_TIMEOUT`), and finally the fallback for the line's
`CALLHUB_RING_TIMEOUT`. If callhub does not answer (connection refused, timeout: Asterisk's
`AGISTATUS=FAILURE`), it dials the dialplan's own default, as the real
dialplan does.

The ringing is emitted as AMI events through the AmiSimulator. The events
are the recorded hunt group (`06`/`p06` traces: one attempt rings out, the
next answers), cut into its parts and re-assembled: the recorded
ring-out attempt once per agent who does not answer, then the recorded
answered attempt, re-timed to each agent's ring timeout, the answering agent's
ring time and the talk time, then renamed by `synth.CallFactory`. No event
shape is invented.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import inspect
import re
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from callhub.ami.parser import AmiMessage
from callhub.ami.simulator import AmiSimulator
from callhub.ami.synth import CallFactory, SynthCall, Template, _piecewise, load_template

AGI_TIMEOUT = 2.0
CALLS_MEMORY = 1000  # AgiCallSimulator.calls keeps the latest calls only: a demo runs for days
HUNT_TEMPLATES = {"pjsip": "p06_sip_hunt_rna_then_answer", "local": "06_huntgroup_rna_then_answer"}
_UNIQUEID = re.compile(r"^(\d{9,11})\.(\d+)$")
_SUFFIX = re.compile(r"-([0-9a-f]{8})(?=;|$|[^0-9a-f])")


# --- the AGI conversation ------------------------------------------------------------------

def asterisk_environment(*, did: str, caller: str, caller_name: str = "",
                         channel: str = "PJSIP/trunk-00000001", uniqueid: str = "0.0",
                         host: str = "127.0.0.1", port: int = 4573, script: str = "route",
                         context: str = "from-pstn", priority: int = 3,
                         version: str = "22.10.1", args: Iterable[str] = ()
                         ) -> list[tuple[str, str]]:
    """The `agi_*` variables in the order Asterisk 22 sends them for AGI(agi://...)."""
    env = [
        ("agi_network", "yes"),
        ("agi_network_script", script),
        ("agi_request", f"agi://{host}:{port}/{script}"),
        ("agi_channel", channel),
        ("agi_language", "en"),
        ("agi_type", channel.split("/", 1)[0]),
        ("agi_uniqueid", uniqueid),
        ("agi_version", version),
        ("agi_callerid", caller or "unknown"),
        ("agi_calleridname", caller_name or "unknown"),
        ("agi_callingpres", "0"),
        ("agi_callingani2", "0"),
        ("agi_callington", "0"),
        ("agi_callingtns", "0"),
        ("agi_dnid", did),
        ("agi_rdnis", "unknown"),
        ("agi_context", context),
        ("agi_extension", did),
        ("agi_priority", str(priority)),
        ("agi_enhanced", "0.0"),
        ("agi_accountcode", ""),
        ("agi_threadid", "140245187446464"),
    ]
    env += [(f"agi_arg_{i}", a) for i, a in enumerate(args, 1)]
    return env


@dataclass(slots=True)
class AgiAnswer:
    """What the dialplan would have after the AGI() step."""

    status: str  # AGISTATUS: SUCCESS, or FAILURE when nobody answered the connection
    variables: dict[str, str] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def answered(self) -> bool:
        """The dialplan's test: AGI succeeded and set CALLHUB_ROUTE_RESULT."""
        return self.status == "SUCCESS" and bool(self.variables.get("CALLHUB_ROUTE_RESULT"))

    @property
    def targets(self) -> list[str]:
        raw = self.variables.get("CALLHUB_TARGETS", "")
        return [t for t in raw.split("&") if t]

    @property
    def ring_timeout(self) -> int | None:
        """The line's default (CALLHUB_RING_TIMEOUT): the fallback's ring time."""
        try:
            return int(self.variables.get("CALLHUB_RING_TIMEOUT", ""))
        except ValueError:
            return None

    def ring_timeouts(self, default: int) -> list[int]:
        """Seconds each target rings, as the dialplan reads them: the i-th of
        CALLHUB_RING_TIMEOUTS, else CALLHUB_RING_TIMEOUT, else `default`."""
        given = self.variables.get("CALLHUB_RING_TIMEOUTS", "").split("&")
        fallback = self.ring_timeout or default
        out = []
        for i in range(len(self.targets)):
            text = given[i] if i < len(given) else ""
            out.append(int(text) if text.isdigit() and int(text) > 0 else fallback)
        return out

    @property
    def fallback(self) -> str | None:
        return self.variables.get("CALLHUB_FALLBACK") or None


_SET_VARIABLE = re.compile(r'^SET VARIABLE (\S+) "((?:[^"\\]|\\.)*)"$')


async def agi_request(host: str, port: int, env: Iterable[tuple[str, str]],
                      within: float = AGI_TIMEOUT) -> AgiAnswer:
    """Play Asterisk's side of one FastAGI session; FAILURE if the server is not there."""
    started = time.perf_counter()
    answer = AgiAnswer(status="FAILURE")
    try:
        async with asyncio.timeout(within):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write("".join(f"{k}: {v}\n" for k, v in env).encode("utf-8") + b"\n")
                await writer.drain()
                while raw := await reader.readline():
                    command = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                    answer.commands.append(command)
                    match = _SET_VARIABLE.match(command)
                    if match:
                        answer.variables[match[1]] = re.sub(r"\\(.)", r"\1", match[2])
                    writer.write(b"200 result=1\n")
                    await writer.drain()
                answer.status = "SUCCESS"
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError):
        answer.status = "FAILURE"
    answer.seconds = time.perf_counter() - started
    return answer


# --- the hunt as AMI events -------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Behaviour:
    """How a simulated phone reacts: answers after `ring_seconds`, or rings out."""

    answers: bool = True
    ring_seconds: float = 3.0
    talk_seconds: float = 30.0


@dataclass(slots=True)
class _HuntParts:
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


def hunt_parts(kind: str = "pjsip") -> _HuntParts:
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
    return _HuntParts(tpl, first, second, prefix, ring_out, answer, _t(msgs[i1]),
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
    appear as VarSet events on the inbound channel, as Asterisk reports `SET VARIABLE`.
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
        retime = _piecewise([(parts.dial_at, start),
                             (parts.no_answer_at, start + timeouts[i])])
        add(dial_to(_copy(parts.ring_out, parts.first, placeholders[i], i, retime, out_ids),
                    i + 1))
    # The recorded hunt has two Dial()s; each device between the first and the last gets a
    # copy of the second one, at the moment the dialplan loop reaches it.
    second_dial = [m for m in parts.answer if _is_dial(m)]
    for i in range(1, last):
        at_start = _piecewise([(parts.second_dial_at, starts[i])])
        add(dial_to(_copy(second_dial, parts.second, placeholders[i], i, at_start, set()), i))
    dial_at = starts[last]
    ring_at = dial_at + (parts.second_ring_at - parts.second_dial_at)
    answered = ring_at + answer.ring_seconds
    ended = answered + answer.talk_seconds
    retime = _piecewise([(parts.second_dial_at, dial_at), (parts.second_ring_at, ring_at),
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


# --- running routed calls through the AMI simulator -------------------------------------

@dataclass(slots=True)
class RoutedCall:
    """One synthetic inbound call: what callhub answered and the events it caused."""

    did: str
    caller: str
    arrived_at: float
    answer: AgiAnswer
    rung: list[str]
    call: SynthCall

    @property
    def first_offered(self) -> str | None:
        return self.rung[0] if self.rung else None


class AgiCallSimulator:
    """Synthetic inbound calls that ask callhub's FastAGI where to ring, then ring there.

    `behaviour(device)` says how each phone reacts. `default_target` is the
    dialplan's own fallback, dialled when callhub does not answer or returns
    neither targets nor a fallback.
    """

    def __init__(self, ami: AmiSimulator, agi_host: str, agi_port: int, *,
                 behaviour: Callable[[str], Behaviour] | Mapping[str, Behaviour] | None = None,
                 default_target: str = "PJSIP/1000", default_ring_timeout: int = 20,
                 factory: CallFactory | None = None) -> None:
        self.ami = ami
        self.agi_host = agi_host
        self.agi_port = agi_port
        if behaviour is None:
            self.behaviour: Callable[[str], Behaviour] = lambda device: Behaviour()
        elif isinstance(behaviour, Mapping):
            table = dict(behaviour)
            self.behaviour = lambda device: table.get(device, Behaviour())
        else:
            self.behaviour = behaviour
        self.default_target = default_target
        self.default_ring_timeout = default_ring_timeout
        self.factory = factory or ami.factory
        self.calls: deque[RoutedCall] = deque(maxlen=CALLS_MEMORY)  # the latest ones

    async def route(self, did: str, caller: str, at: float, caller_name: str = "",
                    ) -> tuple[AgiAnswer, list[str], list[int]]:
        """Ask FastAGI; the devices the dialplan would ring, in order, and how long each."""
        serial = self.factory.uniqueid_counter
        env = asterisk_environment(
            did=did, caller=caller, caller_name=caller_name,
            channel=f"PJSIP/trunk-{self.factory.channel_counter:08x}",
            uniqueid=f"{int(at)}.{serial}", host=self.agi_host, port=self.agi_port)
        answer = await agi_request(self.agi_host, self.agi_port, env)
        if not answer.answered:
            return answer, [self.default_target], [self.default_ring_timeout]
        devices = list(answer.targets)
        timeouts = answer.ring_timeouts(self.default_ring_timeout)
        fallback = answer.fallback or (None if devices else self.default_target)
        if fallback and fallback not in devices:
            devices.append(fallback)  # Dial(${CALLHUB_FALLBACK},${CALLHUB_RING_TIMEOUT})
            timeouts.append(answer.ring_timeout or self.default_ring_timeout)
        return answer, devices, timeouts

    def build(self, did: str, caller: str, at: float, devices: list[str],
              ring_timeout: int | Sequence[int], caller_name: str | None = None,
              variables: Iterable[tuple[str, str]] = ()) -> SynthCall:
        """The call's AMI events: ring `devices` in turn, each for its ring timeout (one
        for all, or one per device), until one answers."""
        timeouts = ([ring_timeout] * len(devices) if isinstance(ring_timeout, int)
                    else list(ring_timeout))
        rung = []
        answering = Behaviour()
        for i, device in enumerate(devices):
            rung.append(device)
            answering = self.behaviour(device)
            if answering.answers and answering.ring_seconds < timeouts[i]:
                break
            if i == len(devices) - 1:
                # The last device is the fallback (group leader, voicemail): it picks up.
                answering = Behaviour(True, min(answering.ring_seconds, timeouts[i] - 0.5),
                                      answering.talk_seconds)
        kind = "pjsip" if all(d.startswith("PJSIP/") for d in rung) else "local"
        template, placeholders = hunt_template(len(rung), timeouts[:len(rung)], answering,
                                               kind, variables)
        return self.factory.make("hunt", at, template=template, number=caller, did=did,
                                 caller_name=caller_name,
                                 agents=dict(zip(placeholders, rung, strict=True)))

    async def run(self, arrivals: Iterable[tuple[float, str, str]], *,
                  speed: float | None = None,
                  on_arrival: Callable[[float], Any] | None = None,
                  keep: bool = True) -> list[RoutedCall]:
        """Play inbound calls `(at, did, caller)` in time order: each asks FastAGI when it
        arrives (after every earlier event has been sent, so callhub's view of busy agents
        is current), then its events join the stream. A collection of arrivals is sorted
        first; an iterator (e.g. an endless generator) must yield them in time order and is
        read one arrival ahead. `speed` compresses time (None: as fast as possible);
        `on_arrival(at)` (plain or async) runs before each AGI request, e.g. to move the
        router's clock to the simulated time and to wait until callhub has read every
        event sent so far. Returns the calls played, unless `keep` is False (an endless run
        keeps only the latest ones, in `self.calls`)."""
        heap: list[tuple[float, int, AmiMessage]] = []
        seq = 0
        source: Iterator[tuple[float, str, str]] = (
            iter(sorted(arrivals)) if isinstance(arrivals, Collection) else iter(arrivals))
        upcoming = next(source, None)
        loop = asyncio.get_running_loop()
        origin = upcoming[0] if upcoming else 0.0
        wall0 = loop.time()
        mine: list[RoutedCall] = []
        while upcoming is not None or heap:
            if upcoming is not None and (not heap or upcoming[0] <= heap[0][0]):
                at, did, caller = upcoming
                upcoming = None
                await self._pace(wall0, at - origin, speed)
                if on_arrival is not None:
                    result = on_arrival(at)
                    if inspect.isawaitable(result):
                        await result
                answer, devices, timeouts = await self.route(did, caller, at)
                call = self.build(did, caller, at, devices, timeouts,
                                  variables=answer.variables.items())
                rung = [a["interface"] for a in call.expected.get("attempts", [])]
                routed = RoutedCall(did, caller, at, answer, rung, call)
                if keep:
                    mine.append(routed)
                self.calls.append(routed)
                for m in call.messages:
                    heapq.heappush(heap, (_t(m), seq, m))
                    seq += 1
                upcoming = next(source, None)
                continue
            at, _, message = heapq.heappop(heap)
            await self._pace(wall0, at - origin, speed)
            await self.ami.send([message])
        return mine

    @staticmethod
    async def _pace(wall0: float, offset: float, speed: float | None) -> None:
        if not speed:
            return
        delay = wall0 + offset / speed - asyncio.get_running_loop().time()
        if delay > 0:
            await asyncio.sleep(delay)
