"""The AMI simulator speaks AMI as Asterisk 22 does, replays traces and runs call mixes."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import AsyncIterator

import pytest
from ami_fixtures import SIM_SECRET, SIM_USER, Collector, compare_synth, make_ingest, sim_pbx
from traces_fixtures import trace

from callhub.ami.discovery import callerid_name
from callhub.ami.groundtruth import compare, load_truth, pbx_from_truth
from callhub.ami.parser import AmiMessage, MessageSplitter, iter_file_messages
from callhub.sim.ami_server import BANNER, AmiSimulator, format_message
from callhub.sim.calls import CallFactory
from callhub.sim.mix import DEMO_ENDPOINTS
from callhub.sim.recording import load_trace


class RawClient:
    """A bare AMI client on asyncio streams: what Asterisk's peer sees, byte for byte."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.splitter = MessageSplitter()
        self.pending: list[AmiMessage] = []

    async def banner(self) -> str:
        return (await self.reader.readline()).decode()

    def send(self, **headers: str) -> None:
        self.writer.write(format_message(headers))

    async def next(self) -> AmiMessage:
        while not self.pending:
            data = await asyncio.wait_for(self.reader.read(65536), 5)
            if not data:
                raise ConnectionError("closed")
            self.pending += self.splitter.feed(data)
        return self.pending.pop(0)

    async def until(self, event: str) -> list[AmiMessage]:
        out = [await self.next()]
        while out[-1].get("Event") != event:
            out.append(await self.next())
        return out


@pytest.fixture
async def raw_client(ami_simulator: AmiSimulator) -> AsyncIterator[RawClient]:
    reader, writer = await asyncio.open_connection(ami_simulator.host, ami_simulator.port)
    client = RawClient(reader, writer)
    client.splitter.banner = ""
    yield client
    writer.close()


async def login(client: RawClient, secret: str = SIM_SECRET) -> AmiMessage:
    client.send(Action="Login", ActionID="l-1", Username=SIM_USER, Secret=secret)
    return await client.next()


async def test_banner_login_ping_logoff(raw_client: RawClient) -> None:
    assert await raw_client.banner() == BANNER + "\r\n"
    response = await login(raw_client)
    assert response == {"Response": "Success", "ActionID": "l-1",
                        "Message": "Authentication accepted"}
    assert (await raw_client.next())["Event"] == "FullyBooted"
    raw_client.send(Action="Ping", ActionID="p-9")
    pong = await raw_client.next()
    assert (pong["Response"], pong["ActionID"], pong["Ping"]) == ("Success", "p-9", "Pong")
    assert abs(float(pong["Timestamp"]) - time.time()) < 60
    raw_client.send(Action="Logoff", ActionID="bye")
    goodbye = await raw_client.next()
    assert (goodbye["Response"], goodbye["ActionID"]) == ("Goodbye", "bye")
    assert await raw_client.reader.read() == b""  # and it hangs up


async def test_wrong_secret_is_refused_and_closed(raw_client: RawClient,
                                                  ami_simulator: AmiSimulator) -> None:
    await raw_client.banner()
    response = await login(raw_client, secret="wrong")
    assert response == {"Response": "Error", "ActionID": "l-1",
                        "Message": "Authentication failed"}
    assert await raw_client.reader.read() == b""
    assert ami_simulator.stats.failed_logins == 1


async def test_events_go_to_logged_in_clients_only(ami_simulator: AmiSimulator,
                                                   raw_client: RawClient) -> None:
    reader, writer = await asyncio.open_connection(ami_simulator.host, ami_simulator.port)
    try:
        await reader.readline()  # banner; this one never logs in
        await raw_client.banner()
        await login(raw_client)
        event = {"Event": "DeviceStateChange", "Device": "PJSIP/1001", "State": "INUSE"}
        await ami_simulator.send([event])
        received = await raw_client.until("DeviceStateChange")
        assert received[-1] == event
        writer.write(format_message({"Action": "Ping", "ActionID": "x"}))
        refused = MessageSplitter()
        refused.banner = ""
        answer = refused.feed(await asyncio.wait_for(reader.read(4096), 5))
        assert answer == [{"Response": "Error", "ActionID": "x",
                           "Message": "Permission denied"}]  # and no event before it
    finally:
        writer.close()


async def test_core_show_channels_is_shaped_like_asterisk(ami_simulator: AmiSimulator,
                                                          raw_client: RawClient) -> None:
    call = CallFactory(seed=2).make("answered", time.time() - 30, ring_seconds=4.0,
                                    talk_seconds=10.0)
    ringing = [m for m in call.messages
               if float(m["Timestamp"]) < call.start + 2.0]  # both legs up, agent ringing
    await ami_simulator.send(ringing)
    await raw_client.banner()
    await login(raw_client)
    raw_client.send(Action="CoreShowChannels", ActionID="csc-1")
    messages = await raw_client.until("CoreShowChannelsComplete")
    start = next(m for m in messages if "Response" in m)
    assert start == {"Response": "Success", "ActionID": "csc-1", "EventList": "start",
                     "Message": "Channels will follow"}
    listed = [m for m in messages if m.get("Event") == "CoreShowChannel"]
    complete = messages[-1]
    assert complete == {"Event": "CoreShowChannelsComplete", "ActionID": "csc-1",
                        "EventList": "Complete", "ListItems": str(len(listed))}
    opened = [m["Channel"] for m in ringing if m["Event"] == "Newchannel"]
    closed = [m["Channel"] for m in ringing if m["Event"] == "Hangup"]
    assert sorted(m["Channel"] for m in listed) == sorted(set(opened) - set(closed))
    assert {m["Linkedid"] for m in listed} == {call.linkedid}
    real = [m for m in iter_file_messages(trace("12_version_coreshowchannels"))
            if m.get("Event") == "CoreShowChannel"]
    assert [list(m) for m in listed] == [list(real[0])] * len(listed)  # same headers, order


async def test_replay_feeds_ingest_to_the_ground_truth(ami_simulator: AmiSimulator) -> None:
    name = "06_huntgroup_rna_then_answer"
    truth = load_truth(trace(name))
    collector = Collector()
    pbx = pbx_from_truth(truth)
    from dataclasses import replace
    pbx = replace(pbx, host=ami_simulator.host, port=ami_simulator.port, username=SIM_USER,
                  secret=SIM_SECRET)
    ingest = make_ingest(pbx, collector)
    await ingest.start()
    try:
        await ingest.wait_connected(5)
        sent = await ami_simulator.replay(trace(name), speed=None)
        await collector.until(lambda: bool(collector.records))
    finally:
        await ingest.stop()
    assert sent == len(load_trace(trace(name)))
    assert compare(collector.records, truth) == []


async def test_replay_keeps_recorded_timing_compressed_by_speed(
        ami_simulator: AmiSimulator) -> None:
    timed = load_trace(trace("03_abandoned_ringing"))
    span = timed[-1].at - timed[0].at
    assert span > 5  # the recording lasted seconds
    speed = span / 0.3
    loop = asyncio.get_running_loop()
    began = loop.time()
    await ami_simulator.replay(trace("03_abandoned_ringing"), speed=speed)
    elapsed = loop.time() - began
    assert 0.3 * 0.9 <= elapsed < 3.0


async def test_run_mix_overlapping_calls_match_what_they_should_produce(
        ami_simulator: AmiSimulator) -> None:
    collector = Collector()
    ingest = make_ingest(sim_pbx(ami_simulator), collector)
    await ingest.start()
    try:
        await ingest.wait_connected(5)
        calls = await ami_simulator.run_mix(rate_per_minute=30, seed=4, speed=2000,
                                            max_calls=12)
        await collector.until(lambda: len(collector.records) >= len(calls))
    finally:
        await ingest.stop()
    assert len(calls) == 12
    starts = sorted(c.start for c in calls)
    ends = sorted(c.end for c in calls)
    assert any(s < e for s, e in zip(starts[1:], ends, strict=False)), "no two calls overlap"
    assert len({c.kind for c in calls}) >= 3
    assert compare_synth(collector.records, calls) == []


def _ignore_sigint() -> None:
    """As a background job of a script starts: SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize(("stop", "background"), [
    (signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGINT, True)],
    ids=["ctrl-c", "sigterm", "ctrl-c-started-in-background"])
async def test_simulate_command_serves_a_mix_until_interrupted(
        stop: signal.Signals, background: bool) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "callhub", "simulate", "--listen", "127.0.0.1:0", "--mix",
        "--rate", "60", "--seed", "3", "--speed", "200", "--secret", SIM_SECRET,
        "--log-level", "warning",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        preexec_fn=_ignore_sigint if background else None)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        assert "listening on 127.0.0.1:" in line, line
        port = int(line.split("127.0.0.1:")[1].split()[0])
        sim_stub = AmiSimulator(port=port)
        collector = Collector()
        ingest = make_ingest(sim_pbx(sim_stub), collector)
        await ingest.start()
        try:
            await ingest.wait_connected(10)
            await collector.until(lambda: len(collector.records) >= 3, within=20)
        finally:
            await ingest.stop()
        assert len(set(collector.linkedids())) == len(collector.records)
    finally:
        proc.send_signal(stop)
        try:
            _, stderr = await asyncio.wait_for(proc.communicate(), 20)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError(f"simulate did not stop on {stop.name}") from None
    assert proc.returncode == 0, stderr.decode()


async def test_the_mix_offers_ring_groups_through_local_channels_and_held_calls(
        ami_simulator: AmiSimulator) -> None:
    """The demo's PBX: ring groups dialling through Local channels and calls held by the
    agent's phone, among plain ones; the SIP phones named by their endpoints' caller ID."""
    sim = ami_simulator
    sim.endpoints = dict(DEMO_ENDPOINTS)
    collector = Collector()
    ingest = make_ingest(sim_pbx(sim), collector)
    await ingest.start()
    try:
        await ingest.wait_connected(5)
        calls = await sim.run_mix(rate_per_minute=30, seed=6, speed=2000, max_calls=12,
                                  kinds={"ringgroup_local": 2, "held": 2, "answered": 1})
        await collector.until(lambda: len(collector.records) >= len(calls))
    finally:
        await ingest.stop()
    assert compare_synth(collector.records, calls) == []
    kinds = {c.linkedid: c.kind for c in calls}
    groups = [r for r in collector.records if kinds[r.linkedid] == "ringgroup_local"]
    held = [r for r in collector.records if kinds[r.linkedid] == "held"]
    assert groups and held
    names = {f"PJSIP/{e}": callerid_name(c) for e, c in DEMO_ENDPOINTS.items()}
    for record in groups:
        assert [a.result for a in record.attempts] == ["cancelled", "answered"]
        assert all(a.interface.startswith("PJSIP/") and a.agent_name == names[a.interface]
                   for a in record.attempts)
    assert all(r.hold_seconds > 0 and r.agent_name == names[r.agent or ""] for r in held)
