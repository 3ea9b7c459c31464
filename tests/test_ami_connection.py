"""The AMI connection and PbxIngest against the simulator over real loopback TCP."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import socket
import time
from collections.abc import Sequence
from typing import Any

import pytest
import structlog
from ami_fixtures import SIM_SECRET, SIM_USER, Collector, compare_synth, make_ingest, sim_pbx
from prometheus_client import CollectorRegistry

from callhub.ami.connection import AmiConnection
from callhub.ami.correlator import Correlator
from callhub.ami.ingest import PbxIngest
from callhub.ami.parser import AmiMessage
from callhub.lifecycle import backoff_delay
from callhub.metrics.collectors import CallhubMetrics
from callhub.records import CallRecord
from callhub.sim.ami_server import AmiSimulator
from callhub.sim.calls import CallFactory, merge_calls


def _incomplete_utf8(chunk: bytes) -> bool:
    try:
        chunk.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


async def test_utf8_name_split_across_reads_survives_into_record(
        ami_simulator: AmiSimulator) -> None:
    sim = ami_simulator
    collector = Collector()
    ingest = make_ingest(sim_pbx(sim), collector)
    reads: list[bytes] = []
    received = 0
    arrived = asyncio.Event()

    def on_read(data: bytes) -> None:
        nonlocal received
        reads.append(data)
        received += len(data)
        arrived.set()

    async def until_client_read_everything() -> None:
        async def _wait() -> None:
            while received < sim.bytes_written:
                arrived.clear()
                await arrived.wait()
        await asyncio.wait_for(_wait(), 5)

    ingest.connection.add_raw_listener(on_read)
    sim.split_utf8 = True
    sim.split_pause = until_client_read_everything
    call = CallFactory(seed=7).make("answered", time.time() - 60, ring_seconds=3.4,
                                    talk_seconds=6.0, caller_name="张三")
    await ingest.start()
    try:
        await ingest.wait_connected(5)
        await sim.send_call(call)
        await collector.until(lambda: bool(collector.records))
    finally:
        await ingest.stop()

    assert sim.splits > 0
    assert any(_incomplete_utf8(r) for r in reads), "no TCP read ended inside a character"
    named = [e for e in collector.events if e.get("Event") == "NewCallerid"
             and e.get("CallerIDNum") == call.expected["caller_number"]]
    assert named and all(e["CallerIDName"] == "张三" for e in named)
    assert ingest.malformed == 0
    record, = collector.records
    assert record.caller_name == "张三"
    assert compare_synth(collector.records, [call]) == []


async def _sent_and_read(ingest: PbxIngest, sim: AmiSimulator, collector: Collector,
                         messages: Sequence[AmiMessage]) -> None:
    """Once `ingest` is connected, `messages` sent, and each read as an event."""
    await ingest.wait_connected(5)
    await sim.send(messages)
    await collector.until(lambda: len(collector.events) >= len(messages))


async def test_drop_mid_call_then_resync_loses_and_duplicates_nothing(
        ami_simulator: AmiSimulator) -> None:
    sim = ami_simulator
    collector = Collector()
    registry = CollectorRegistry()
    ingest = make_ingest(sim_pbx(sim), collector, backoff_base=0.01, backoff_max=0.05,
                         metrics=CallhubMetrics(registry))
    base = time.time() - 120
    factory = CallFactory(seed=11, uniqueid_counter=100)
    # A: rings through the outage and is answered during it; B: ends during it;
    # C: starts during it and is still ringing when the link comes back.
    a = factory.make("answered", base, ring_seconds=6.3, talk_seconds=20.0,
                     agent="Local/agent1@agentsim", number="+8613800000101")
    b = factory.make("abandoned", base + 1, ring_seconds=3.2,
                     agent="Local/agent2@agentsim", number="+8613800000102")
    c = factory.make("answered", base + 8, ring_seconds=9.1, talk_seconds=5.0,
                     agent="Local/agent3@agentsim", number="+8613800000103")
    stream = merge_calls([a, b, c])
    cut_down, cut_up = base + 3.0, base + 10.5
    before = [m for at, m in stream if at < cut_down]
    during = [m for at, m in stream if cut_down <= at < cut_up]
    after = [m for at, m in stream if at >= cut_up]
    assert before and during and after

    await ingest.start()
    try:
        await _sent_and_read(ingest, sim, collector, before)
        assert ingest.correlator.active_calls == 2
        # The link dies and the PBX goes on; nothing can reconnect in between.
        sim.drop_clients()
        sim.send_nowait(during)
        await ingest.connection.wait_sessions(2, within=5)
        assert {ch.fields["Linkedid"] for ch in sim.channels.values()} == {a.linkedid,
                                                                          c.linkedid}
        await sim.send(after)
        await collector.until(lambda: len(collector.records) >= 3)
    finally:
        await ingest.stop()

    assert sorted(collector.linkedids()) == sorted([a.linkedid, b.linkedid, c.linkedid])
    assert ingest.correlator.active_calls == 0
    by_id = {r.linkedid: r for r in collector.records}
    assert by_id[a.linkedid].outcome == "answered"
    assert by_id[a.linkedid].agent == "Local/agent1@agentsim"
    assert by_id[a.linkedid].caller_number == "+8613800000101"
    assert by_id[c.linkedid].outcome == "answered"
    assert by_id[c.linkedid].agent == "Local/agent3@agentsim"
    assert by_id[b.linkedid].incomplete  # its end happened while we were away
    labels = {"pbx": "lab"}
    assert registry.get_sample_value("callhub_ami_reconnects_total", labels) == 1.0
    assert registry.get_sample_value("callhub_active_calls", labels) == 0.0


async def test_wrong_secret_logs_clearly_and_backs_off_without_crash_loop(
        ami_simulator: AmiSimulator, caplog: pytest.LogCaptureFixture) -> None:
    sim = ami_simulator
    wrong = "not-the-secret-42"
    pbx = sim_pbx(sim, secret=wrong)
    base, cap = 0.01, 0.08
    connection = AmiConnection(pbx, lambda event: None, backoff_base=base, backoff_max=cap)
    caplog.set_level(logging.DEBUG)
    started = asyncio.get_running_loop().time()
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(connection.run())
        try:
            await connection.wait_failures(7, within=10)
            elapsed = asyncio.get_running_loop().time() - started
            assert not task.done(), "the reconnect loop must not die on a refused login"
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    assert sim.stats.failed_logins >= 7 and sim.stats.logins == 0
    assert not connection.connected
    delays = connection.retry_delays[:7]
    assert all(d <= cap for d in delays)
    assert delays[3] > delays[0] * 2  # it grows...
    assert all(later >= earlier for earlier, later in itertools.pairwise(delays[:4]))
    assert min(delays[4:]) >= cap / 2  # ...up to the cap, where it stays
    assert elapsed >= sum(delays[:6])  # attempts waited their delays: no crash loop
    failures = [e for e in logs if e["event"] == "ami.login_failed"]
    assert len(failures) >= 7
    # Said once at error, the refusals that repeat it at debug (an outage of hours was
    # an error line every 30 s).
    assert [e["log_level"] for e in failures[:3]] == ["error", "debug", "debug"]
    assert [e["tries"] for e in failures[:3]] == [1, 2, 3]
    assert "Authentication failed" in failures[0]["error"]
    assert all(wrong not in repr(e) for e in logs)
    assert wrong not in caplog.text


async def drop_each_session(sim: AmiSimulator, connection: AmiConnection, drops: int) -> None:
    """Run `connection`, drop each of its first `drops` sessions once it is up, and stop it
    when the session after the last drop is up."""
    task = asyncio.create_task(connection.run())
    try:
        for session in range(1, drops + 1):
            await connection.wait_sessions(session, within=10)
            sim.drop_clients()
        await connection.wait_sessions(drops + 1, within=10)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_session_that_lasted_resets_the_backoff(ami_simulator: AmiSimulator) -> None:
    """Six drops in a row, each after a good login: every retry comes from the base again."""
    sim = ami_simulator
    base, cap = 0.05, 30.0
    connection = AmiConnection(sim_pbx(sim), lambda event: None, backoff_base=base,
                               backoff_max=cap, stable_after=0.0)
    await drop_each_session(sim, connection, 6)
    assert connection.failures == 0
    assert len(connection.retry_delays) >= 6
    assert all(d <= base for d in connection.retry_delays[:6])


async def test_a_session_cut_before_it_lasted_keeps_backing_off(
        ami_simulator: AmiSimulator) -> None:
    """A PBX that drops every session at once is not hammered: the backoff keeps growing."""
    sim = ami_simulator
    base, cap = 0.01, 30.0
    connection = AmiConnection(sim_pbx(sim), lambda event: None, backoff_base=base,
                               backoff_max=cap, stable_after=3600.0)
    await drop_each_session(sim, connection, 5)
    delays = connection.retry_delays[:5]
    assert delays[4] > base * 4  # 2**4 steps up: not reset by sessions that did not last


def test_backoff_is_capped_exponential_with_jitter() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(i, 0.5, 30.0, rng) for i in range(20)]
    assert 0.25 <= delays[0] <= 0.5
    assert all(d <= 30.0 for d in delays)
    assert all(d >= 15.0 for d in delays[7:])
    assert len({round(d, 6) for d in delays[7:]}) > 1  # jittered, not lock-step


async def test_unanswered_ping_reconnects(ami_simulator: AmiSimulator) -> None:
    sim = ami_simulator
    collector = Collector()
    ingest = make_ingest(sim_pbx(sim), collector, ping_interval=0.05, ping_timeout=0.1,
                         backoff_base=0.01, backoff_max=0.05)
    await ingest.start()
    try:
        await ingest.wait_connected(5)
        await sim.wait_pings(2)  # answered pings keep the session
        assert ingest.connection.sessions == 1
        sim.answer_pings = False
        await ingest.connection.wait_sessions(2, within=5)
        assert sim.stats.logins >= 2
        sim.answer_pings = True
        sessions = ingest.connection.sessions
        await sim.wait_pings(sim.stats.pings + 3)
        assert ingest.connection.sessions == sessions
    finally:
        await ingest.stop()


async def test_a_late_pong_keeps_the_session_while_events_flow(
        ami_simulator: AmiSimulator) -> None:
    """A reader behind its PBX reads the Pong late, after the events sent before it: the
    session stays up while bytes keep coming, many ping_timeouts long, and is dropped
    once nothing at all comes for ping_timeout."""
    sim = ami_simulator
    timeout = 0.1
    arrived = asyncio.Event()
    seen: list[AmiMessage] = []

    def on_event(event: AmiMessage) -> None:
        seen.append(event)
        arrived.set()

    connection = AmiConnection(sim_pbx(sim), on_event, ping_interval=0.05,
                               ping_timeout=timeout, backoff_base=0.01, backoff_max=0.05)
    task = asyncio.create_task(connection.run())
    try:
        await connection.wait_sessions(1, within=5)
        await sim.wait_pings(1)
        sim.answer_pings = False
        await sim.wait_pings(sim.stats.pings + 1)  # this Ping's Pong will not come
        started = time.monotonic()
        for n in range(40):  # an event every 20 ms (pacing, not waiting): 8 timeouts
            arrived.clear()
            await sim.send([{"Event": "DeviceStateChange", "Privilege": "call,all",
                             "Device": f"PJSIP/{1000 + n}", "State": "INUSE"}])
            await arrived.wait()
            await asyncio.sleep(0.02)
        assert time.monotonic() - started > 5 * timeout
        assert connection.sessions == 1 and len(seen) >= 40
        await connection.wait_sessions(2, within=5)  # then silence: the link is dropped
        assert sim.stats.logins >= 2
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_malformed_message_is_counted_and_reader_goes_on(
        ami_simulator: AmiSimulator) -> None:
    sim = ami_simulator
    registry = CollectorRegistry()
    metrics = CallhubMetrics(registry)
    collector = Collector()
    pbx = sim_pbx(sim)
    ingest = make_ingest(pbx, collector, metrics=metrics)
    await ingest.start()
    try:
        await ingest.wait_connected(5)
        await sim.send_raw(b"this line is no header\r\nnor this\r\n\r\n")
        await sim.send([{"Event": "DeviceStateChange", "Privilege": "call,all",
                         "Timestamp": f"{time.time():.6f}", "Device": "PJSIP/1001",
                         "State": "INUSE"}])
        await collector.until(lambda: any("Device" in e for e in collector.events))
    finally:
        await ingest.stop()

    assert [e["Device"] for e in collector.events if "Device" in e] == ["PJSIP/1001"]
    assert ingest.malformed == 1
    assert ingest.connection.sessions == 1
    labels = {"pbx": pbx.name}
    assert registry.get_sample_value("callhub_ami_malformed_total", labels) == 1.0
    assert registry.get_sample_value("callhub_ami_events_total", labels) == len(
        collector.events)


async def test_a_listener_that_fails_costs_only_itself_the_calls_are_still_recorded(
        ami_simulator: AmiSimulator) -> None:
    """A listener (routing's busy tracker, say) that raises on every event is logged and
    skipped; the correlator still sees every event and the calls come out right."""
    sim = ami_simulator
    collector = Collector()
    ingest = make_ingest(sim_pbx(sim), collector)
    failures = 0

    def broken(event: AmiMessage) -> None:
        nonlocal failures
        failures += 1
        raise RuntimeError("listener bug")

    ingest.add_listener(broken)
    factory = CallFactory(seed=12, uniqueid_counter=200)
    base = time.time() - 60
    calls = [factory.make("answered", base, ring_seconds=4.0, talk_seconds=10.0,
                          agent="Local/agent1@agentsim", number="+8613800000201"),
             factory.make("abandoned", base + 2, ring_seconds=3.0,
                          agent="Local/agent2@agentsim", number="+8613800000202")]
    with structlog.testing.capture_logs() as logs:
        await ingest.start()
        try:
            await ingest.wait_connected(5)
            await sim.send([m for _, m in merge_calls(calls)])
            await collector.until(lambda: len(collector.records) >= 2)
        finally:
            await ingest.stop()
    assert compare_synth(collector.records, calls) == []
    assert failures == len(collector.events) > 0  # called for every event, failing each
    failed = [e for e in logs if e["event"] == "ami.listener_failed"]
    assert len(failed) == failures and all(e["log_level"] == "error" for e in failed)


async def test_an_event_the_correlator_fails_on_is_logged_and_the_next_calls_come_out(
        ami_simulator: AmiSimulator) -> None:
    """The last net under the correlator: an exception it did not catch itself (a bug,
    injected here on one event) is logged with the event's kind, and the session and the
    calls after it go on."""
    sim = ami_simulator
    collector = Collector()
    pbx = sim_pbx(sim)
    ingest = make_ingest(pbx, collector)

    class Failing:
        """The real correlator (compiled: no subclass), failing on one kind of event."""

        def __init__(self, inner: Correlator) -> None:
            self.inner = inner

        def feed(self, event: AmiMessage) -> list[CallRecord]:
            if event.get("Event") == "UserEvent":
                raise RuntimeError("correlator bug")
            return self.inner.feed(event)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    ingest.correlator = Failing(ingest.correlator)  # type: ignore[assignment]
    factory = CallFactory(seed=13, uniqueid_counter=300)
    call = factory.make("answered", time.time() - 60, ring_seconds=4.0, talk_seconds=10.0,
                        agent="Local/agent1@agentsim", number="+8613800000301")
    with structlog.testing.capture_logs() as logs:
        await ingest.start()
        try:
            await ingest.wait_connected(5)
            await sim.send([{"Event": "UserEvent", "Privilege": "user,all",
                             "UserEvent": "poison", "Linkedid": "x"}])
            await sim.send([m for _, m in merge_calls([call])])
            await collector.until(lambda: len(collector.records) >= 1)
        finally:
            await ingest.stop()
    assert compare_synth(collector.records, [call]) == []
    assert ingest.connection.sessions == 1  # the reader did not die with the event
    failed = [e for e in logs if e["event"] == "correlator.feed_failed"]
    assert [(e["event_kind"], e["linkedid"]) for e in failed] == [("UserEvent", "x")]


async def test_two_pbxs_have_their_own_connection_and_correlator() -> None:
    registry = CollectorRegistry()
    metrics = CallhubMetrics(registry)
    async with AmiSimulator(secret="s1-secret") as one, \
            AmiSimulator(secret="s2-secret") as two:
        c1, c2 = Collector(), Collector()
        i1 = make_ingest(sim_pbx(one, name="north", secret="s1-secret"), c1, metrics=metrics)
        i2 = make_ingest(sim_pbx(two, name="south", secret="s2-secret"), c2, metrics=metrics)
        factory = CallFactory(seed=5)
        call1 = factory.make("answered", time.time() - 60, ring_seconds=2.5, talk_seconds=3)
        call2 = factory.make("busy", time.time() - 50)
        await i1.start()
        await i2.start()
        try:
            await i1.wait_connected(5)
            await i2.wait_connected(5)
            assert registry.get_sample_value("callhub_ami_connected", {"pbx": "north"}) == 1
            await one.send_call(call1)
            await two.send_call(call2)
            await c1.until(lambda: bool(c1.records))
            await c2.until(lambda: bool(c2.records))
        finally:
            await i1.stop()
            await i2.stop()
    assert [(r.pbx, r.linkedid, r.outcome) for r in c1.records] == [
        ("north", call1.linkedid, "answered")]
    assert [(r.pbx, r.linkedid, r.outcome) for r in c2.records] == [
        ("south", call2.linkedid, "missed")]
    assert registry.get_sample_value("callhub_ami_connected", {"pbx": "north"}) == 0


async def test_calls_go_stale_by_the_pbx_clock_not_the_hosts(
        ami_simulator: AmiSimulator) -> None:
    """A PBX whose clock runs 8 hours behind (local time taken for UTC): a call in progress
    is not closed as stale at the next expiry; a call whose events stopped more than
    stale_after ago by the PBX's clock is."""
    sim = ami_simulator
    collector = Collector()
    ingest = make_ingest(sim_pbx(sim), collector, stale_after=600.0)
    pbx_now = time.time() - 8 * 3600
    factory = CallFactory(seed=5, uniqueid_counter=300)
    gone = factory.make("answered", pbx_now - 700, ring_seconds=4.0, talk_seconds=30.0,
                        agent="Local/agent1@agentsim", number="+8613800000201")
    live = factory.make("answered", pbx_now - 5, ring_seconds=3.0, talk_seconds=20.0,
                        agent="Local/agent2@agentsim", number="+8613800000202")
    stream = merge_calls([gone, live])
    # `gone` loses its end (its last events never come); `live` is cut before it is answered.
    sent = [m for at, m in stream if at < pbx_now - 680 or pbx_now - 5 <= at < pbx_now]
    rest = [m for at, m in stream if at >= pbx_now]
    assert rest and len(sent) + len(rest) < len(stream)

    await ingest.start()
    try:
        await _sent_and_read(ingest, sim, collector, sent)
        assert ingest.correlator.active_calls == 2
        ingest.expire_stale()
        assert collector.linkedids() == [gone.linkedid]  # stale by the PBX's clock
        assert collector.records[0].incomplete
        await sim.send(rest)
        await collector.until(lambda: len(collector.records) >= 2)
    finally:
        await ingest.stop()
    last = collector.records[1]
    assert last.linkedid == live.linkedid and last.outcome == "answered"
    assert not last.incomplete


async def send_an_event_stamped_now(sim: AmiSimulator, ingest: PbxIngest,
                                    collector: Collector) -> None:
    """One event stamped by this host's clock (a PBX on time), taken in before returning."""
    seen = ingest.events
    await sim.send([{"Event": "DeviceStateChange", "Privilege": "call,all",
                     "Device": "PJSIP/9", "State": "NOT_INUSE",
                     "Timestamp": f"{time.time():.6f}"}])
    await collector.until(lambda: ingest.events > seen)


@pytest.mark.parametrize("behind", [0.0, 600.0])
async def test_the_pbx_clocks_offset_is_measured_exported_and_warned_of(behind: float) -> None:
    """A PBX whose clock is ten minutes behind this host's (no NTP on its network): the
    offset the last events' Timestamps give is exported per PBX and warned of once; a PBX
    on time gives an offset of about 0 and no warning."""
    sim = AmiSimulator(username=SIM_USER, secret=SIM_SECRET, clock=lambda: time.time() - behind)
    await sim.start()
    registry = CollectorRegistry()
    metrics = CallhubMetrics(registry)
    collector = Collector()
    pbx = sim_pbx(sim)
    ingest = make_ingest(pbx, collector, metrics=metrics)
    call = CallFactory(seed=31).make("answered", sim.clock() - 20, ring_seconds=3.0,
                                     talk_seconds=15.0)
    try:
        with structlog.testing.capture_logs() as logs:
            await ingest.start()
            await ingest.wait_connected(5)
            await sim.send_call(call)
            await collector.until(lambda: bool(collector.records))
            for _ in range(3):
                ingest.check_clock()
            offset = registry.get_sample_value("callhub_pbx_clock_offset_seconds",
                                               {"pbx": pbx.name})
            # The PBX's clock set right: an event stamped by the host's clock.
            await send_an_event_stamped_now(sim, ingest, collector)
            ingest.check_clock()
    finally:
        await ingest.stop()
        await sim.stop()
    assert offset is not None
    assert -behind - 5 < offset <= -behind + 0.5  # the call's last event was ~2 s old
    assert abs(ingest.clock_offset()) < 1
    said = [(e["event"], e["log_level"]) for e in logs if e["event"].startswith("ami.clock")]
    assert said == ([("ami.clock_offset", "warning"), ("ami.clock_offset_ok", "info")]
                    if behind else [])


async def test_events_without_a_timestamp_are_warned_of_and_named_in_the_part(
        ami_simulator: AmiSimulator) -> None:
    """manager.conf without `timestampevents = yes`: the calls still come out (timed on
    arrival), one warning says what to set, and the part `ami/<pbx>` names it in its
    detail until stamped events come again."""
    sim = ami_simulator
    collector = Collector()
    pbx = sim_pbx(sim)
    ingest = make_ingest(pbx, collector)
    call = CallFactory(seed=41).make("answered", time.time() - 20, ring_seconds=3.0,
                                     talk_seconds=5.0)
    unstamped = [{k: v for k, v in m.items() if k != "Timestamp"}
                 for _, m in merge_calls([call])]

    async def detail() -> str | None:
        part, = [p for p in await ingest.supervisor.states() if p.name == f"ami/{pbx.name}"]
        return part.detail

    try:
        with structlog.testing.capture_logs() as logs:
            await ingest.start()
            await ingest.wait_connected(5)
            await sim.send(unstamped)
            await collector.until(lambda: bool(collector.records))
            ingest.check_clock()
            ingest.check_clock()
            said = await detail()
            await send_an_event_stamped_now(sim, ingest, collector)
            ingest.check_clock()
            cleared = await detail()
    finally:
        await ingest.stop()
    assert [r.linkedid for r in collector.records] == [call.linkedid]
    assert said is not None and "timestampevents = yes" in said
    assert cleared is None
    warned = [e for e in logs if e["event"] == "ami.no_timestamps"]
    assert len(warned) == 1 and warned[0]["log_level"] == "warning"


async def test_a_pbx_not_up_is_warned_of_once_and_its_return_says_the_tries() -> None:
    """A PBX down for a while: one warning per error, not one per try (an hour's outage
    was 120 warnings and 120 reconnect lines), and ami.connected says how many failed."""
    with socket.socket() as s:  # a port nothing listens on, for the PBX to come up on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sim = AmiSimulator(port=port, username=SIM_USER, secret=SIM_SECRET)
    connection = AmiConnection(sim_pbx(sim), lambda event: None, backoff_base=0.01,
                               backoff_max=0.02)
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(connection.run())
        try:
            await connection.wait_failures(5, within=10)
            await sim.start()
            await connection.wait_sessions(1, within=10)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await sim.stop()
    failed = [e for e in logs if e["event"] == "ami.connection_failed"]
    assert len(failed) >= 5
    assert [e["log_level"] for e in failed] == ["warning"] + ["debug"] * (len(failed) - 1)
    scheduled = [e["log_level"] for e in logs if e["event"] == "ami.reconnect_scheduled"]
    assert scheduled == ["info"] + ["debug"] * (len(scheduled) - 1)
    connected = [e for e in logs if e["event"] == "ami.connected"]
    assert [e["failed_tries"] for e in connected] == [len(failed)]
