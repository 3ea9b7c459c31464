"""Synthetic inbound calls that ask callhub's FastAGI where to ring, then ring there.

For each call, `AgiCallSimulator` does what Asterisk does with the shipped
dialplan: it asks FastAGI (`agi_client.agi_request`), rings the returned
agents one after the other, each for its own timeout (`CALLHUB_RING_TIMEOUTS`,
else `CALLHUB_RING_TIMEOUT`), and finally the fallback for the line's
`CALLHUB_RING_TIMEOUT`; without an answer from callhub it dials the
dialplan's own default. The ringing (`hunt.hunt_template`, renamed by
`calls.CallFactory`) is emitted as AMI events through an `AmiSimulator`.
"""

from __future__ import annotations

import asyncio
import heapq
import inspect
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from callhub.ami.parser import AmiMessage
from callhub.sim.agi_client import AGI_TIMEOUT, AgiAnswer, agi_request, asterisk_environment
from callhub.sim.ami_server import AmiSimulator
from callhub.sim.calls import CallFactory, SynthCall
from callhub.sim.hunt import Behaviour, hunt_template

CALLS_MEMORY = 1000  # AgiCallSimulator.calls keeps the latest calls only: a demo runs for days


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
    neither targets nor a fallback. `second` is the other callhub of a pair
    (the dialplan's CALLHUB_AGI_2), asked when the first does not answer.
    """

    def __init__(self, ami: AmiSimulator, agi_host: str, agi_port: int, *,
                 behaviour: Callable[[str], Behaviour] | Mapping[str, Behaviour] | None = None,
                 default_target: str = "PJSIP/1000", default_ring_timeout: int = 20,
                 factory: CallFactory | None = None,
                 second: tuple[str, int] | None = None,
                 agi_timeout: float = AGI_TIMEOUT) -> None:
        self.ami = ami
        self.agi_timeout = agi_timeout  # the dialplan's wait for FastAGI's answer
        self.agi_host = agi_host
        self.agi_port = agi_port
        self.second = second
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
        addresses = [(self.agi_host, self.agi_port)]
        if self.second is not None:
            addresses.append(self.second)
        for host, port in addresses:  # the first, then the second of a pair
            env = asterisk_environment(
                did=did, caller=caller, caller_name=caller_name,
                channel=f"PJSIP/trunk-{self.factory.channel_counter:08x}",
                uniqueid=f"{int(at)}.{serial}", host=host, port=port)
            answer = await agi_request(host, port, env, within=self.agi_timeout)
            if answer.answered:
                break
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
                    heapq.heappush(heap, (float(m["Timestamp"]), seq, m))
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
