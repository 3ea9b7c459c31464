"""An AMI server that behaves like Asterisk 22 on the wire, for tests, demos and benchmarks.

It speaks the parts of AMI callhub uses: the banner, Login (a wrong secret
gets `Response: Error` / `Authentication failed` and the connection is
closed, as Asterisk does), Ping, CoreShowChannels (answered from the
channels it has announced with Newchannel and not yet hung up), the device
and queue listings callhub asks at login (`PJSIPShowEndpoints` and
`PJSIPShowEndpoint` from `endpoints`, `SIPpeers` and `SIPshowpeer` from
`sip_peers` — "Invalid/unknown command" while it is None, as without
chan_sip —, `QueueStatus` from `queue_members`; an action named in `denied`
gets "Permission denied", as for a manager user without its class), Logoff,
and an event stream sent only to logged-in clients. Events come from recorded
traces (`replay`), from synthetic calls (`send_call`, `run_mix`), or from a
test directly (`send`).

Test hooks: `drop_clients()` closes every connection abruptly,
`answer_pings = False` makes it stop answering Ping, `split_utf8 = True`
cuts every write in the middle of its first multi-byte UTF-8 character
(awaiting `split_pause` between the halves), `wait_sent(n)` waits until n
events have been sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from callhub.ami.parser import AmiMessage, MessageSplitter
from callhub.sim.calls import CallFactory, SynthCall, merge_calls
from callhub.sim.mix import MixSettings, generate_mix
from callhub.sim.recording import load_trace

log = structlog.get_logger(__name__)

BANNER = "Asterisk Call Manager/11.0.0"
GENERATED_MEMORY = 1000
SNAPSHOT_KEYS = ("ChannelState", "ChannelStateDesc", "CallerIDNum", "CallerIDName",
                 "ConnectedLineNum", "ConnectedLineName", "Language", "AccountCode",
                 "Context", "Exten", "Priority")


def format_message(message: Mapping[str, str]) -> bytes:
    """AMI wire form: `Key: Value` lines, a blank line at the end."""
    return ("".join(f"{k}: {v}\r\n" for k, v in message.items()) + "\r\n").encode("utf-8")


def utf8_split_point(data: bytes) -> int | None:
    """An offset inside the first multi-byte UTF-8 character, or None."""
    for i, byte in enumerate(data):
        if byte >= 0xC0:
            return i + 1
    return None


@dataclass(eq=False)
class _Client:
    writer: asyncio.StreamWriter
    logged_in: bool = False
    closing: bool = False


@dataclass
class _Channel:
    """What CoreShowChannel reports about a live channel."""

    fields: dict[str, str]
    created: float
    application: str = ""
    application_data: str = ""
    bridge_id: str = ""


@dataclass(frozen=True)
class QueueMember:
    """A static queue member, as QueueStatus reports it."""

    queue: str
    location: str  # `Local/1001@from-queue/n`, `PJSIP/1002`
    name: str = ""
    state_interface: str = ""  # the member's location when empty


@dataclass
class SimulatorStats:
    logins: int = 0
    failed_logins: int = 0
    pings: int = 0
    connections: int = 0
    actions: list[str] = field(default_factory=list)


class AmiSimulator:
    """An Asterisk-like AMI server on an asyncio TCP socket."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, username: str = "callhub",
                 secret: str = "callhub-secret", banner: str = BANNER,
                 clock: Callable[[], float] = time.time) -> None:
        self.host = host
        self.port = port
        self.username = username
        self.secret = secret
        self.banner = banner
        self.clock = clock
        self.answer_pings = True
        self.split_utf8 = False
        self.split_pause: Callable[[], Awaitable[None]] | None = None
        self.splits = 0
        self.bytes_written = 0
        self._paced = 0
        self.events_sent = 0
        # Stream time of run_mix's latest event: ahead of the clock when speed > 1.
        self.stream_now = 0.0
        self.stats = SimulatorStats()
        self.channels: dict[str, _Channel] = {}
        # What the PBX has configured: endpoint -> caller ID (`"Li Na" <1001>`), chan_sip
        # peers likewise (None: chan_sip not loaded), queue members, refused actions.
        self.endpoints: dict[str, str] = {}
        self.sip_peers: dict[str, str] | None = None
        self.queue_members: list[QueueMember] = []
        self.denied: set[str] = set()
        # The latest calls of run_mix, for tests and demos: bounded, a demo runs for days.
        self.generated: deque[SynthCall] = deque(maxlen=GENERATED_MEMORY)
        self.factory = CallFactory(uniqueid_counter=1)
        self._clients: set[_Client] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._changed = asyncio.Condition()

    # -- life cycle ---------------------------------------------------------

    async def start(self) -> int:
        """Listen; returns the port (the OS picks one when port is 0)."""
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("simulator.listening", host=self.host, port=self.port)
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self.drop_clients()
        # Aborted transports end every client task; cancelling them instead would make
        # asyncio's start_server callback log the CancelledError.
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> AmiSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def drop_clients(self) -> None:
        """Close every client connection at once, as a crash or a cut cable would."""
        for client in list(self._clients):
            client.closing = True
            transport = client.writer.transport
            transport.abort()
        self._clients.clear()

    @property
    def logged_in_clients(self) -> int:
        return sum(1 for c in self._clients if c.logged_in and not c.closing)

    # -- waiting (tests) ----------------------------------------------------

    async def _wait_for(self, predicate: Callable[[], bool], within: float | None) -> None:
        async def _wait() -> None:
            async with self._changed:
                await self._changed.wait_for(predicate)
        async with asyncio.timeout(within):
            await _wait()

    async def wait_sent(self, count: int, within: float = 10.0) -> None:
        """Until `count` events have been sent in total."""
        await self._wait_for(lambda: self.events_sent >= count, within)

    async def wait_logins(self, count: int, within: float | None = 10.0) -> None:
        """Until `count` successful logins have happened in total (None: no time limit)."""
        await self._wait_for(lambda: self.stats.logins >= count, within)

    async def wait_failed_logins(self, count: int, within: float = 10.0) -> None:
        await self._wait_for(lambda: self.stats.failed_logins >= count, within)

    async def wait_pings(self, count: int, within: float = 10.0) -> None:
        await self._wait_for(lambda: self.stats.pings >= count, within)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- serving ------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        client = _Client(writer)
        self._clients.add(client)
        self.stats.connections += 1
        splitter = MessageSplitter()
        splitter.banner = ""  # clients send no banner
        try:
            banner = f"{self.banner}\r\n".encode()
            self.bytes_written += len(banner)
            writer.write(banner)
            while not client.closing:
                data = await reader.read(65536)
                if not data:
                    break
                for action in splitter.feed(data):
                    await self._action(client, action)
                    if client.closing:
                        break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._clients.discard(client)
            if not writer.transport.is_closing():
                writer.close()
            if task is not None:
                self._tasks.discard(task)

    async def _respond(self, client: _Client, action: AmiMessage, response: str,
                       **headers: str) -> None:
        message = {"Response": response}
        if "ActionID" in action:
            message["ActionID"] = action["ActionID"]
        message.update(headers)
        await self._write(client, format_message(message))

    async def _action(self, client: _Client, action: AmiMessage) -> None:
        name = action.get("Action", "").lower()
        self.stats.actions.append(name)
        if name == "login":
            if (action.get("Username") == self.username
                    and action.get("Secret") == self.secret):
                client.logged_in = True
                self.stats.logins += 1
                await self._respond(client, action, "Success",
                                    Message="Authentication accepted")
                await self._write(client, format_message({
                    "Event": "FullyBooted", "Privilege": "system,all", "Uptime": "0",
                    "LastReload": "0", "Status": "Fully Booted"}))
            else:
                self.stats.failed_logins += 1
                await self._respond(client, action, "Error", Message="Authentication failed")
                client.closing = True
                client.writer.close()
            await self._notify()
        elif not client.logged_in or name in self.denied:
            await self._respond(client, action, "Error", Message="Permission denied")
        elif name == "ping":
            self.stats.pings += 1
            await self._notify()
            if self.answer_pings:
                await self._respond(client, action, "Success", Ping="Pong",
                                    Timestamp=f"{self.clock():.6f}")
        elif name == "coreshowchannels":
            await self._core_show_channels(client, action)
        elif name in self._LISTINGS:
            await self._listing(client, action, name)
        elif name == "pjsipshowendpoint":
            await self._show_endpoint(client, action)
        elif name == "sipshowpeer" and self.sip_peers is not None:
            peer = action.get("Peer", "")
            if peer in self.sip_peers:
                await self._respond(client, action, "Success", Channeltype="SIP",
                                    ObjectName=peer, ChanObjectType="peer",
                                    Callerid=self.sip_peers[peer], Status="Unmonitored")
            else:
                await self._respond(client, action, "Error", Message="Peer not found")
        elif name == "logoff":
            await self._respond(client, action, "Goodbye", Message="Thanks for all the fish.")
            client.closing = True
            client.writer.close()
        else:
            await self._respond(client, action, "Error", Message="Invalid/unknown command")

    _LISTINGS = frozenset({"pjsipshowendpoints", "sippeers", "queuestatus"})

    async def _listing(self, client: _Client, action: AmiMessage, name: str) -> None:
        """PJSIPShowEndpoints, SIPpeers and QueueStatus, as Asterisk lists them."""
        if name == "pjsipshowendpoints":
            await self._event_list(
                client, action, "A listing of Endpoints follows, presented as EndpointList "
                "events", "EndpointList",
                [{"ObjectType": "endpoint", "ObjectName": e, "Transport": "", "Aor": e,
                  "Auths": e, "OutboundAuths": "", "Contacts": "",
                  "DeviceState": "Not in use", "ActiveChannels": ""} for e in self.endpoints])
        elif name == "sippeers":
            if self.sip_peers is None:
                await self._respond(client, action, "Error",
                                    Message="Invalid/unknown command")
                return
            await self._event_list(
                client, action, "Peer status list will follow", "PeerEntry",
                [{"Channeltype": "SIP", "ObjectName": p, "ChanObjectType": "peer",
                  "Dynamic": "yes", "Status": "Unmonitored"} for p in self.sip_peers])
        else:
            members = [{"Queue": m.queue, "Name": m.name or m.location,
                        "Location": m.location,
                        "StateInterface": m.state_interface or m.location,
                        "Membership": "static", "Penalty": "0", "CallsTaken": "0",
                        "LastCall": "0", "LastPause": "0", "InCall": "0", "Status": "1",
                        "Paused": "0", "PausedReason": "", "Wrapuptime": "0"}
                       for m in self.queue_members]
            await self._event_list(client, action, "Queue status will follow",
                                   "QueueMember", members)

    async def _show_endpoint(self, client: _Client, action: AmiMessage) -> None:
        endpoint = action.get("Endpoint", "")
        if endpoint not in self.endpoints:
            await self._respond(client, action, "Error", Message="Unable to retrieve endpoint")
            return
        await self._event_list(
            client, action, "Following are Events for each object associated with the "
            "Endpoint", "EndpointDetail",
            [{"ObjectType": "endpoint", "ObjectName": endpoint, "Context": "from-internal",
              "Aors": endpoint, "Callerid": self.endpoints[endpoint]}])

    async def _event_list(self, client: _Client, action: AmiMessage, message: str,
                          event: str, items: list[dict[str, str]]) -> None:
        """A reply list: Success with `EventList: start`, the events, `<event>Complete`
        (Asterisk's name for it: `PeerlistComplete`, `QueueStatusComplete`, ...)."""
        action_id = {"ActionID": action["ActionID"]} if "ActionID" in action else {}
        await self._respond(client, action, "Success", EventList="start", Message=message)
        for item in items:
            await self._write(client, format_message({"Event": event, **item, **action_id}))
        complete = {"PeerEntry": "PeerlistComplete", "QueueMember": "QueueStatusComplete"}
        await self._write(client, format_message({
            "Event": complete.get(event, f"{event}Complete"), **action_id,
            "EventList": "Complete", "ListItems": str(len(items))}))

    async def _core_show_channels(self, client: _Client, action: AmiMessage) -> None:
        action_id = {"ActionID": action["ActionID"]} if "ActionID" in action else {}
        await self._respond(client, action, "Success", EventList="start",
                            Message="Channels will follow")
        now = self.clock()
        for name, channel in list(self.channels.items()):
            seconds = max(0, int(now - channel.created))
            event = {"Event": "CoreShowChannel", **action_id, "Channel": name}
            event.update({k: channel.fields.get(k, "") for k in SNAPSHOT_KEYS})
            event.update({
                "Uniqueid": channel.fields.get("Uniqueid", ""),
                "Linkedid": channel.fields.get("Linkedid", ""),
                "Application": channel.application,
                "ApplicationData": channel.application_data,
                "Duration": f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}",
                "BridgeId": channel.bridge_id,
            })
            await self._write(client, format_message(event))
        await self._write(client, format_message({
            "Event": "CoreShowChannelsComplete", **action_id, "EventList": "Complete",
            "ListItems": str(len(self.channels))}))

    async def _write(self, client: _Client, data: bytes) -> None:
        if client.closing or client.writer.transport.is_closing():
            return
        cut = utf8_split_point(data) if self.split_utf8 else None
        if cut is None:
            self.bytes_written += len(data)
            client.writer.write(data)
        else:
            # The pause lets the peer read the first half on its own before the rest.
            self.bytes_written += cut
            client.writer.write(data[:cut])
            await client.writer.drain()
            self.splits += 1
            if self.split_pause is not None:
                await self.split_pause()
            if client.closing or client.writer.transport.is_closing():
                return
            self.bytes_written += len(data) - cut
            client.writer.write(data[cut:])
        with contextlib.suppress(ConnectionError):
            await client.writer.drain()

    # -- the event stream ---------------------------------------------------

    def track(self, event: AmiMessage) -> None:
        """Keep the live-channel table CoreShowChannels answers from."""
        kind = event.get("Event")
        name = event.get("Channel", "")
        if kind == "Newchannel" and name:
            created = float(event.get("Timestamp") or self.clock())
            self.channels[name] = _Channel(dict(event), created)
            return
        channel = self.channels.get(name)
        if channel is None:
            return
        if kind == "Hangup":
            del self.channels[name]
        elif kind == "BridgeEnter":
            channel.bridge_id = event.get("BridgeUniqueid", "")
        elif kind == "BridgeLeave":
            channel.bridge_id = ""
        elif kind == "Rename" and event.get("Newname"):
            self.channels[event["Newname"]] = self.channels.pop(name)
        if kind in ("Newstate", "NewCallerid", "NewConnectedLine", "Newexten", "BridgeEnter",
                    "DialBegin", "DialState", "DialEnd", "Hangup"):
            channel.fields.update({k: event[k] for k in SNAPSHOT_KEYS if k in event})
        if kind == "Newexten":
            channel.application = event.get("Application", "")
            channel.application_data = event.get("AppData", "")

    async def send(self, events: Iterable[AmiMessage]) -> None:
        """Emit events to every logged-in client (and track their channels)."""
        for event in events:
            self.track(event)
            data = format_message(event)
            for client in list(self._clients):
                if client.logged_in and not client.closing:
                    await self._write(client, data)
            self.events_sent += 1
        await self._notify()

    def send_nowait(self, events: Iterable[AmiMessage]) -> None:
        """Emit without waiting for slow clients (no UTF-8 splitting); for tests that
        must change the PBX's state within one loop step, e.g. right after a drop."""
        for event in events:
            self.track(event)
            data = format_message(event)
            for client in list(self._clients):
                if client.logged_in and not client.closing:
                    self.bytes_written += len(data)
                    client.writer.write(data)
            self.events_sent += 1

    async def send_raw(self, data: bytes) -> None:
        """Bytes as they are (malformed-message tests) to every logged-in client."""
        for client in list(self._clients):
            if client.logged_in and not client.closing:
                await self._write(client, data)

    async def _pace(self, start: float, offset: float, speed: float | None) -> None:
        """Sleep until `offset` seconds of stream time have passed at `speed` (pacing only)."""
        loop = asyncio.get_running_loop()
        delay = start + offset / speed - loop.time() if speed else 0.0
        self._paced += 1
        if delay > 0:
            await asyncio.sleep(delay)
        elif self._paced % 64 == 0:
            # Behind schedule (or flat out): still let clients get accepted and served.
            await asyncio.sleep(0)

    async def replay(self, path: str | Path, speed: float | None = 1.0) -> int:
        """Re-emit a recorded trace's events: real timing (1.0), compressed (>1), or as
        fast as possible (None or 0). Returns the number of events sent."""
        timed = load_trace(path)
        start = asyncio.get_running_loop().time()
        first = timed[0].at if timed else 0.0
        for item in timed:
            await self._pace(start, item.at - first, speed)
            await self.send([item.message])
        return len(timed)

    async def send_call(self, call: SynthCall, speed: float | None = None) -> None:
        """One synthetic call's events, paced by their Timestamps at `speed`."""
        await self.play_calls([call], speed)

    async def play_calls(self, calls: Iterable[SynthCall], speed: float | None = None) -> None:
        """Several calls' events merged by Timestamp (calls overlap as they would)."""
        merged = merge_calls(calls)
        if not merged:
            return
        start = asyncio.get_running_loop().time()
        first = merged[0][0]
        for at, message in merged:
            await self._pace(start, at - first, speed)
            await self.send([message])

    async def run_mix(self, rate_per_minute: float, seed: int | None = None, *,
                      pjsip: bool = False, kinds: Mapping[str, float] | None = None,
                      speed: float = 1.0, max_calls: int | None = None,
                      duration: float | None = None,
                      settings: MixSettings | None = None) -> list[SynthCall]:
        """Generate overlapping synthetic calls (Poisson arrivals) and emit them live.

        Runs until cancelled, or until `max_calls` calls have started / `duration`
        seconds of stream time have passed (then the started calls finish). Event
        Timestamps start at the clock's now and run `speed` times faster than the
        wall clock when speed > 1. Generated calls are appended to `self.generated`
        (the latest GENERATED_MEMORY), with their `expected` record fields; a bounded
        run (max_calls or duration) also returns all of its calls.
        """
        settings = settings or MixSettings(rate_per_minute=rate_per_minute)
        settings.rate_per_minute = rate_per_minute
        if kinds is not None:
            settings.kinds = dict(kinds)
        origin = self.clock()
        # Counters continue across runs, as Asterisk's do across calls.
        self.factory = CallFactory(pjsip=pjsip, seed=seed,
                                   uniqueid_counter=self.factory.uniqueid_counter,
                                   channel_counter=self.factory.channel_counter)
        calls = generate_mix(origin, settings, seed=seed, pjsip=pjsip, factory=self.factory)
        heap: list[tuple[float, int, AmiMessage]] = []
        seq = 0
        started = 0
        pending: SynthCall | None = next(calls)
        loop_start = asyncio.get_running_loop().time()
        bounded = max_calls is not None or duration is not None
        mine: list[SynthCall] = []
        while True:
            while pending is not None and (not heap or pending.start <= heap[0][0]):
                if (max_calls is not None and started >= max_calls) or (
                        duration is not None and pending.start - origin > duration):
                    pending = None
                    break
                for at, message in pending.schedule():
                    heapq.heappush(heap, (at, seq, message))
                    seq += 1
                self.generated.append(pending)
                if bounded:
                    mine.append(pending)
                started += 1
                log.debug("simulator.call", kind=pending.kind, linkedid=pending.linkedid)
                pending = next(calls)
            if not heap:
                return mine
            at, _, message = heapq.heappop(heap)
            await self._pace(loop_start, at - origin, speed)
            self.stream_now = max(self.stream_now, at)
            await self.send([message])
