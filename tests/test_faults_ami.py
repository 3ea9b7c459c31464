"""Faults on the AMI side, through the real connection code over loopback TCP.

The link dropped mid-call again and again, Asterisk restarting under
callhub, events arriving right behind the resync reply. Each test proves
that no finished call is lost and none is recorded twice; calls whose every
event was seen come out exactly as generated.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from typing import Any

from ami_fixtures import SIM_SECRET, SIM_USER, Collector, compare_synth, make_ingest, sim_pbx

from callhub.ami.parser import AmiMessage
from callhub.sim.ami_server import AmiSimulator, format_message
from callhub.sim.calls import CallFactory, SynthCall, merge_calls
from callhub.sim.mix import MixSettings, generate_mix

FAST_RETRY: dict[str, Any] = {"backoff_base": 0.01, "backoff_max": 0.05}


def mix(count: int, start: float, seed: int, factory: CallFactory) -> list[SynthCall]:
    calls = generate_mix(start, MixSettings(rate_per_minute=20.0), seed=seed, factory=factory)
    return [next(calls) for _ in range(count)]


def once_each(collector: Collector) -> Counter[str]:
    return Counter(collector.linkedids())


async def test_link_dropped_mid_call_again_and_again(ami_simulator: AmiSimulator) -> None:
    """12 drops across 30 overlapping calls; events of the PBX during each outage are
    lost, as they would be. Every call is recorded once; untouched ones exactly."""
    sim = ami_simulator
    rng = random.Random(5)
    collector = Collector()
    ingest = make_ingest(sim_pbx(sim), collector, **FAST_RETRY)
    calls = mix(30, time.time() - 3600, seed=5, factory=CallFactory(seed=5,
                                                                      uniqueid_counter=10))
    stream = [m for _, m in merge_calls(calls)]
    drops = sorted(rng.sample(range(100, len(stream) - 100), 12))
    lost: set[int] = set()
    for at in drops:
        lost.update(range(at, at + rng.randrange(1, 8)))  # each outage loses 1..7 events
    owner = {id(m): c.linkedid for c in calls for m in c.messages}
    touched = {owner[id(stream[i])] for i in lost}

    await ingest.start()
    try:
        await ingest.wait_connected(5)
        sessions = 1
        for i, message in enumerate(stream):
            if i in drops:
                sim.drop_clients()
            if i in lost:
                sim.send_nowait([message])  # the PBX goes on; nobody is listening
                if i + 1 not in lost:
                    sessions += 1
                    await ingest.connection.wait_sessions(sessions, within=10)
                continue
            await sim.send([message])
        await collector.until(lambda: len(collector.records) >= len(calls), within=20)
    finally:
        await ingest.stop()

    assert ingest.connection.sessions == len(drops) + 1
    seen = once_each(collector)
    assert set(seen) == {c.linkedid for c in calls}, "a finished call was lost"
    assert max(seen.values()) == 1, "a call was recorded twice"
    assert ingest.correlator.active_calls == 0
    clean = [c for c in calls if c.linkedid not in touched]
    assert len(clean) >= 10
    assert compare_synth([r for r in collector.records if r.linkedid not in touched],
                         clean) == []


async def test_asterisk_restart_closes_the_calls_it_killed_and_goes_on() -> None:
    """Asterisk dies with two calls up and comes back on the same port with a new banner
    and FullyBooted; its uniqueids continue. The dead calls are recorded once, as
    incomplete, ended when the PBX went away (not at the reconnect: their ring and talk
    do not count the outage); the calls before and after are exact."""
    first = AmiSimulator(username=SIM_USER, secret=SIM_SECRET)
    port = await first.start()
    factory = CallFactory(seed=7, uniqueid_counter=500)
    now = time.time()
    before = factory.make("answered", now - 600, ring_seconds=4.0, talk_seconds=30.0,
                          number="+8613800000201")
    killed = [factory.make("answered", now - 300, ring_seconds=6.0, talk_seconds=120.0,
                           number="+8613800000202"),
              factory.make("queue_answered", now - 290, number="+8613800000203")]
    collector = Collector()
    ingest = make_ingest(sim_pbx(first), collector, **FAST_RETRY)
    await ingest.start()
    second: AmiSimulator | None = None
    try:
        await ingest.wait_connected(5)
        await first.send(before.messages)
        # The killed calls get as far as ringing, then the PBX dies.
        last_sent = 0.0  # the PBX's time of the last event it sent before it died
        for call in killed:
            half = len(call.messages) // 3
            await first.send(call.messages[:half])
            last_sent = max([last_sent, *(float(m["Timestamp"]) for m in call.messages[:half])])
        await collector.until(lambda: len(collector.records) >= 1)
        assert ingest.correlator.active_calls == 2
        await first.stop()

        second = AmiSimulator(port=port, username=SIM_USER, secret=SIM_SECRET,
                              banner="Asterisk Call Manager/11.0.0")
        second.factory = factory  # uniqueids and channel numbers continue
        await second.start()
        await ingest.connection.wait_sessions(2, within=10)
        await collector.until(lambda: len(collector.records) >= 3)
        after = [factory.make(kind, time.time() - 120 + 10 * i, number=f"+86138000003{i:02d}")
                 for i, kind in enumerate(("answered", "abandoned", "hunt", "missed"))]
        await second.send([m for _, m in merge_calls(after)])
        await collector.until(lambda: len(collector.records) >= 7)
    finally:
        await ingest.stop()
        if second is not None:
            await second.stop()

    seen = once_each(collector)
    assert max(seen.values()) == 1, "a call was recorded twice"
    assert set(seen) == {c.linkedid for c in [before, *killed, *after]}
    by_id = {r.linkedid: r for r in collector.records}
    assert all(by_id[c.linkedid].incomplete for c in killed)
    for call in killed:  # the drop came right after the last event (1 s for the test's pace)
        ended = by_id[call.linkedid].ended_at
        assert ended is not None and last_sent - 1 <= ended <= last_sent + 1, (ended, last_sent)
    assert compare_synth([by_id[c.linkedid] for c in [before, *after]], [before, *after]) == []
    assert ingest.correlator.active_calls == 0


class EagerSimulator(AmiSimulator):
    """Asterisk does not wait for the client: events that happen while it answers
    CoreShowChannels follow the reply at once, here in the very same TCP write."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.behind_reply: list[AmiMessage] = []

    async def _core_show_channels(self, client: Any, action: AmiMessage) -> None:
        reply = format_message({"Response": "Success", "ActionID": action.get("ActionID", ""),
                                "EventList": "start", "Message": "Channels will follow"})
        done = format_message({"Event": "CoreShowChannelsComplete",
                               "ActionID": action.get("ActionID", ""),
                               "EventList": "Complete", "ListItems": "0"})
        events = self.behind_reply
        self.behind_reply = []
        for event in events:
            self.track(event)
        client.writer.write(reply + done + b"".join(format_message(e) for e in events))
        await client.writer.drain()


async def test_events_right_behind_the_resync_reply_are_not_closed_by_it() -> None:
    sim = EagerSimulator(username=SIM_USER, secret=SIM_SECRET)
    await sim.start()
    factory = CallFactory(seed=3, uniqueid_counter=900)
    call = factory.make("answered", time.time() - 60, ring_seconds=5.0, talk_seconds=10.0)
    half = len(call.messages) // 2
    sim.behind_reply = call.messages[:half]
    collector = Collector()
    ingest = make_ingest(sim_pbx(sim), collector, **FAST_RETRY)
    await ingest.start()
    try:
        await ingest.wait_connected(5)
        await sim.send(call.messages[half:])
        await collector.until(lambda: len(collector.records) >= 1)
    finally:
        await ingest.stop()
        await sim.stop()
    (record,) = collector.records
    assert not record.incomplete
    assert compare_synth([record], [call]) == []


async def test_a_hangup_of_a_channel_never_seen_stores_nothing(
        ami_simulator: AmiSimulator) -> None:
    """Issue 10: events of a call whose Newchannel callhub never saw (and that no resync
    adopted) open no call: they are counted as orphans and no phantom record is stored."""
    sim = ami_simulator
    collector = Collector()
    ingest = make_ingest(sim_pbx(sim), collector, **FAST_RETRY)
    factory = CallFactory(seed=8, uniqueid_counter=700)
    stray = factory.make("answered", time.time() - 120, ring_seconds=2.0, talk_seconds=4.0)
    tail = [m for m in stray.messages if m.get("Event") in ("Hangup", "HangupRequest")]
    real = factory.make("answered", time.time() - 60, ring_seconds=3.0, talk_seconds=5.0)
    assert tail and stray.linkedid != real.linkedid
    await ingest.start()
    try:
        await ingest.wait_connected(5)
        await sim.send(tail)
        await sim.send(real.messages)
        await collector.until(lambda: len(collector.records) >= 1)
    finally:
        await ingest.stop()
    assert collector.linkedids() == [real.linkedid]
    assert compare_synth(collector.records, [real]) == []
    assert ingest.correlator.orphans == len(tail)
    assert ingest.correlator.active_calls == 0
