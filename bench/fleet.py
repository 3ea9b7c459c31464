"""Many PBXs into one `callhub run`: the lag from a call's end to its row, and the cost.

    python bench/fleet.py                                  # 100 PBXs x 1,000 events/s, 60 s
    python bench/fleet.py --pbxs 100 --rate 200 --duration 20    # a short run

Issue 15, target 5. The real daemon path: a config with one `[[pbx]]` per
PBX, `callhub run` as its own process, writing to PostgreSQL (a database of
the bench's own, created and dropped: the URL's user needs CREATEDB).

The PBXs are AMI servers in a few processes of their own (`--servers`), over
loopback TCP. Every PBX serves the same synthetic stream (bench/synthetic.py:
recorded calls renamed and re-timed) with its own linkedids and uniqueids
(the PBX's number is written into each), at `--rate` events a second, paced
every 10 ms from a common start; the PBXs' starts are spread over the first
second so that their calls do not end in lockstep. Each server notes the
wall time at which it wrote each call's end: its last Hangup (the Cdr and CEL
events Asterisk sends after it do not keep the call open).

Measured:
- lag: a call's end written by its PBX -> its row seen committed (a
  separate connection polls `calls` every `--poll` seconds, which adds up to
  that much to each lag); p50/p99/max, target p99 < 1 s;
- the callhub process's CPU share (user+sys over wall, /proc/<pid>/stat),
  from the start of the streams to the last row, its page faults over the
  same window, and its RSS (peak, end);
- the PostgreSQL backends serving callhub, the AMI servers, and the whole
  machine's busy share over the same window (what else the cores were doing);
- calls stored against calls sent: none lost, none twice, none unknown, every
  outcome as generated;
- the events actually offered (a saturated machine may fall behind the pace).

The last line is one JSON object with all figures and `targets_met`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from amiserver import StreamServer
from synthetic import LOCAL_AGENTS, PJSIP_AGENTS, Manifest, default_cache_dir, stream

from callhub import loops
from callhub.sim.ami_user import AmiUser, event_offsets

SELF = Path(__file__).resolve()
HERE = SELF.parent
ROOT = HERE.parent
SHIPPED = ROOT / "deploy" / "asterisk" / "manager.conf"
MARK = b".PPP"  # in the template stream, where a uniqueid's fraction gets its PBX's number
TICK = 0.01  # the servers' pace: one write per PBX every 10 ms
SECRET = "bench-secret"
# A uniqueid-shaped value: every header but Timestamp holding one is an id (checked below).
_ID_LINE = re.compile(rb"^(?!Timestamp:)([A-Za-z]+: \d{9,11})\.(\d+)\r$", re.M)


def pbx_name(index: int) -> str:
    return f"pbx{index:03d}"


def pbx_mark(index: int) -> bytes:
    """What MARK becomes on PBX `index`: `.` and three digits (same length: offsets hold)."""
    return b".%03d" % index


def pbx_linkedid(template: str, index: int) -> str:
    return template.replace(MARK.decode(), pbx_mark(index).decode())


# -- the template stream --------------------------------------------------------------------

@dataclass
class Template:
    """The stream every PBX serves, with MARK where its number goes."""

    path: Path
    events: int
    calls: list[tuple[str, int, str]]  # (linkedid with MARK, index of its end, outcome)


def make_template(manifest: Manifest) -> Template:
    """The synthetic stream with MARK in every uniqueid and linkedid; cached beside it.

    A call's end is its last Hangup event: the Cdr, CEL and other events Asterisk sends
    after it (up to a few seconds of stream at a low rate) do not hold the call open."""
    path = manifest.path.with_suffix(".fleet")
    meta = path.with_suffix(".fleet.json")
    if path.exists() and meta.exists():
        data = json.loads(meta.read_text("utf-8"))
        if data.get("source_bytes") == manifest.bytes and data.get("version") == 2:
            return Template(path, data["events"], [tuple(c) for c in data["calls"]])
    raw = manifest.path.read_bytes()
    marked = _ID_LINE.sub(rb"\1" + MARK + rb"\2\r", raw)
    offsets = event_offsets(marked)
    events = len(offsets) - 1
    last: dict[str, int] = {}
    linked = re.compile(rb"^Linkedid: (\S+)\r$", re.M)
    for index in range(events):
        if not marked.startswith(b"Event: Hangup\r\n", offsets[index]):
            continue
        found = linked.search(marked, offsets[index], offsets[index + 1])
        if found:
            last[found.group(1).decode()] = index
    calls = []
    for linkedid, outcome in manifest.outcomes.items():
        epoch, _, n = linkedid.partition(".")
        key = f"{epoch}{MARK.decode()}{n}"
        calls.append((key, last[key], outcome))
    calls.sort(key=lambda c: c[1])
    path.write_bytes(marked)
    meta.write_text(json.dumps({"version": 2, "source_bytes": manifest.bytes, "events": events,
                                "calls": calls}), "utf-8")
    return Template(path, events, calls)


# -- the AMI servers (each in a process of its own) -----------------------------------------

@dataclass
class Feed:
    """One PBX's connection being paced."""

    index: int
    data: bytes
    writer: asyncio.StreamWriter
    start: float = 0.0
    sent: int = 0
    next_call: int = 0
    ends: dict[str, float] = field(default_factory=dict)
    first_write: float | None = None
    last_write: float = 0.0
    max_buffer: int = 0


class FleetServer(StreamServer):
    """Serves each PBX (named by its login) its own copy of the template, paced."""

    def __init__(self, template: Template, pbxs: list[int], rate: float, spread: float,
                 total_pbxs: int, user: AmiUser | None = None) -> None:
        super().__init__(template.path)
        data = template.path.read_bytes()
        self.offsets = event_offsets(data)
        if user is not None:  # the PBX makes every event, on time; the user gets its share
            data, self.offsets = user.cut(data, self.offsets)
        self.calls = template.calls
        self.copies = {pbx_name(i): (i, data.replace(MARK, pbx_mark(i))) for i in pbxs}
        self.rate = rate
        self.spread = spread
        self.total = total_pbxs
        self.feeds: dict[str, Feed] = {}
        self.ready = asyncio.Event()
        self.go: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    async def stream(self, writer: asyncio.StreamWriter, username: str) -> None:
        if username not in self.copies or username in self.feeds:
            return  # an unknown PBX, or a reconnect: nothing more (the bench reports it)
        index, data = self.copies[username]
        self.feeds[username] = Feed(index, data, writer)
        if len(self.feeds) == len(self.copies):
            self.ready.set()

    async def pace(self) -> dict[str, Any]:
        """Write every PBX's due events every TICK until all is sent; what was sent when."""
        t0 = await self.go
        feeds = list(self.feeds.values())
        for feed in feeds:
            feed.start = t0 + self.spread * feed.index / self.total
        events = len(self.offsets) - 1
        loop = asyncio.get_running_loop()
        while any(feed.sent < events for feed in feeds):
            now = time.time()
            for feed in feeds:
                due = min(events, int((now - feed.start) * self.rate))
                if due <= feed.sent:
                    continue
                feed.writer.write(feed.data[self.offsets[feed.sent]:self.offsets[due]])
                feed.sent = due
                feed.first_write = feed.first_write or now
                feed.last_write = now
                while feed.next_call < len(self.calls) and self.calls[feed.next_call][1] < due:
                    feed.ends[pbx_linkedid(self.calls[feed.next_call][0], feed.index)] = now
                    feed.next_call += 1
                buffered = feed.writer.transport.get_write_buffer_size()
                feed.max_buffer = max(feed.max_buffer, buffered)
            await asyncio.sleep(max(0.0, TICK - (loop.time() % TICK)))
        return {name: {"ends": feed.ends, "events": feed.sent, "first": feed.first_write,
                       "last": feed.last_write, "max_buffer": feed.max_buffer}
                for name, feed in self.feeds.items()}


async def serve_main(template: Template, pbxs: list[int], rate: float, spread: float,
                     total: int, user: AmiUser | None) -> None:
    """Print the port; 'ready' once every PBX is logged in; 'go T0' on stdin starts the
    streams; when all is sent, one JSON line of what was sent when; then serve on."""
    fleet = FleetServer(template, pbxs, rate, spread, total, user)
    server = await asyncio.start_server(fleet.serve, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    async with server:
        await fleet.ready.wait()
        print("ready", flush=True)
        line = (await stdin.readline()).decode().split()
        fleet.go.set_result(float(line[1]))
        print(json.dumps(await fleet.pace()), flush=True)
        await stdin.readline()  # until the bench closes our stdin


# -- measuring the callhub process ----------------------------------------------------------

def _stat(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command's name (the state first)."""
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def page_faults(pid: int) -> int:
    """Minor page faults of a process (/proc/<pid>/stat): 2.5 us each on the VM of
    bench/README.md."""
    return int(_stat(pid)[7])


def runqueue_wait_seconds(pid: int) -> float:
    """How long the process's main thread (the event loop) was ready to run but waited
    for a CPU (/proc/<pid>/schedstat, field 2): what busy neighbours cost it."""
    with open(f"/proc/{pid}/schedstat") as fh:
        return int(fh.read().split()[1]) / 1e9


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all cores, from /proc/stat."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def write_config(directory: Path, database_url: str, ports: list[int], pbxs: int,
                 log_level: str, event_loop: str) -> Path:
    """callhub.toml: one [[pbx]] per PBX, on the server process that serves it."""
    agents = "\n".join(f'"{k}" = "{v}"' for k, v in {**LOCAL_AGENTS, **PJSIP_AGENTS}.items())
    parts = [f"""database_url = "{database_url}"
spool_dir = "{directory / 'spool'}"
log_level = "{log_level}"
event_loop = "{event_loop}"

[api]
listen = "127.0.0.1:{free_port()}"

[fastagi]
listen = "127.0.0.1:{free_port()}"
"""]
    for i in range(pbxs):
        parts.append(f"""
[[pbx]]
name = "{pbx_name(i)}"
host = "127.0.0.1"
port = {ports[i % len(ports)]}
username = "{pbx_name(i)}"
secret = "{SECRET}"
inbound_contexts = ["from-pstn"]
outbound_contexts = ["to-pstn"]
voicemail_extensions = ["voicemail"]

[pbx.agents]
{agents}
""")
    path = directory / "callhub.toml"
    path.write_text("".join(parts), "utf-8")
    return path


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[round(p * 10) - 1]


class Daemon:
    """`callhub run` as a child process; counts its AMI logins from its JSON log."""

    def __init__(self, config: Path, log_path: Path) -> None:
        self.config = config
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self.connected: set[str] = set()
        self.started = asyncio.Event()
        self.changed = asyncio.Event()
        self.errors: list[str] = []
        self.drops = 0  # AMI sessions callhub gave up (a Ping unanswered behind a backlog)
        self.finished: dict[tuple[str, str], float] = {}  # its call.finished log lines' times
        self.lines = 0
        self.hot_path: str | None = None  # compiled or python (its daemon.started line)

    async def start(self) -> None:
        # Its own config only; CALLHUB_PURE_PYTHON (which build runs) passes through.
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("CALLHUB_") or k == "CALLHUB_PURE_PYTHON"}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "callhub", "--config", str(self.config), "run", env=env,
            cwd=str(self.config.parent), stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, limit=1 << 20)
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        # Log lines are small and the page cache takes them: no thread needed.
        with open(self.log_path, "wb") as log:  # noqa: ASYNC230
            async for raw in self.proc.stderr:
                log.write(raw)
                self.lines += 1
                self.drops += b'"ami.connection_failed"' in raw
                if b'"call.finished"' in raw:
                    event = json.loads(raw)
                    at = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
                    self.finished[(event["pbx"], event["linkedid"])] = at.timestamp()
                if b'"ami.connected"' in raw or b'"daemon.started"' in raw or \
                        b'"level": "error"' in raw or b'"level": "critical"' in raw:
                    event = json.loads(raw)
                    if event.get("event") == "ami.connected":
                        self.connected.add(str(event.get("pbx")))
                    elif event.get("event") == "daemon.started":
                        self.hot_path = event.get("ami_hot_path")
                        self.started.set()
                    else:
                        self.errors.append(raw.decode("utf-8", "replace")[:300])
                    self.changed.set()
        self.changed.set()

    async def until_connected(self, pbxs: int, within: float) -> None:
        async def wait() -> None:
            while not (self.started.is_set() and len(self.connected) >= pbxs):
                if self.reader.done():
                    raise SystemExit(f"callhub run ended; see {self.log_path}")
                self.changed.clear()
                await self.changed.wait()
        await asyncio.wait_for(wait(), within)

    async def stop(self) -> int | None:
        if self.proc is None or self.proc.returncode is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.proc.wait(), 60)
        except TimeoutError:
            self.proc.kill()
            code = await self.proc.wait()
        await self.reader
        return code


# -- the run --------------------------------------------------------------------------------

def pg_urls(url: str, name: str) -> tuple[str, str, str]:
    """(asyncpg DSN of the given database, asyncpg DSN of `name`, SQLAlchemy URL of `name`)."""
    from sqlalchemy.engine import make_url
    base = make_url(url.replace("postgresql://", "postgresql+asyncpg://", 1))
    plain = base.set(drivername="postgresql").render_as_string(hide_password=False)
    own = base.set(database=name)
    return (plain, own.set(drivername="postgresql").render_as_string(hide_password=False),
            own.render_as_string(hide_password=False))


async def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import asyncpg

    # SIGTERM (a harness giving up on the run) cancels it, so that its `finally` stops
    # the daemon and the servers and drops the database; by default they outlive it.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    events = int(args.rate * args.duration)
    manifest = stream(events, seed=args.seed, cache_dir=args.cache_dir)
    template = make_template(manifest)
    sent_calls = len(template.calls) * args.pbxs
    delivered = template.events
    if args.ami_user == "shipped":
        data = template.path.read_bytes()
        kept, _ = AmiUser.from_manager_conf(SHIPPED).cut(data, event_offsets(data))
        delivered = len(event_offsets(kept)) - 1
        print(f"fleet: as the shipped manager.conf's [callhub] user, each PBX sends "
              f"{delivered} of its {template.events} events "
              f"({delivered / template.events:.0%})", flush=True)
    print(f"fleet: {args.pbxs} PBXs x {template.events} events ({len(template.calls)} calls) "
          f"at {args.rate:g} events/s each: {args.pbxs * args.rate:,.0f} events/s, "
          f"{sent_calls} calls, ~{template.events / args.rate:.0f} s", flush=True)
    admin_dsn, own_dsn, own_url = pg_urls(args.database_url,
                                          f"callhub_fleet_{uuid.uuid4().hex[:8]}")
    database = own_url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute(f'CREATE DATABASE "{database}"')
    servers: list[asyncio.subprocess.Process] = []
    daemon: Daemon | None = None
    figures: dict[str, Any] = {"pbxs": args.pbxs, "rate_per_pbx": args.rate,
                               "offered_events_per_s": args.pbxs * args.rate,
                               "events_per_pbx": template.events,
                               "ami_user": args.ami_user,
                               "events_sent_per_pbx": delivered,
                               "calls_per_pbx": len(template.calls), "calls_sent": sent_calls,
                               "servers": args.servers, "poll_s": args.poll,
                               "cpus": os.cpu_count(), "python": sys.version.split()[0],
                               "event_loop": loops.resolve(args.event_loop)}
    try:
        ports = []
        for s in range(args.servers):
            mine = ",".join(str(i) for i in range(s, args.pbxs, args.servers))
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(SELF), "--serve", str(manifest.path),
                "--serve-pbxs", mine, "--rate", str(args.rate), "--pbxs", str(args.pbxs),
                "--spread", str(args.spread), "--ami-user", args.ami_user,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, limit=1 << 26)
            servers.append(proc)
            assert proc.stdout is not None
            ports.append(int(await proc.stdout.readline()))
        config = write_config(work, own_url, ports, args.pbxs, args.log_level, args.event_loop)
        daemon = Daemon(config, work / "callhub.log")
        started = time.perf_counter()
        await daemon.start()
        await daemon.until_connected(args.pbxs, args.timeout)
        for proc in servers:
            assert proc.stdout is not None
            assert (await proc.stdout.readline()).strip() == b"ready"
        figures["startup_s"] = round(time.perf_counter() - started, 1)
        figures["ami_hot_path"] = daemon.hot_path
        assert daemon.proc is not None
        pid = daemon.proc.pid
        print(f"fleet: callhub run (pid {pid}) logged in to {len(daemon.connected)} PBXs in "
              f"{figures['startup_s']} s; streaming", flush=True)

        poll = await asyncpg.connect(own_dsn)
        seen: dict[tuple[str, str], float] = {}
        rss_peak = rss_mb(pid)
        rss_start = rss_peak
        t0 = time.time() + 0.3
        cpu0, busy0, waited0 = cpu_seconds(pid), machine_busy(), runqueue_wait_seconds(pid)
        faults0 = page_faults(pid)
        server_cpu0 = sum(cpu_seconds(p.pid) for p in servers)
        pg_cpu0: dict[int, float] = {}
        for row in await poll.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1 "
                                    "AND pid <> pg_backend_pid()", database):
            with contextlib.suppress(OSError):
                pg_cpu0[row["pid"]] = cpu_seconds(row["pid"])
        for proc in servers:
            assert proc.stdin is not None
            proc.stdin.write(f"go {t0}\n".encode())
            await proc.stdin.drain()
        outputs = [p.stdout for p in servers if p.stdout is not None]
        reports = [asyncio.create_task(out.readline()) for out in outputs]
        last_id = 0
        deadline: float | None = None
        # callhub's CPU seconds and the wall seconds from the start to the streams' end
        streamed: tuple[float, float] | None = None
        wanted = sent_calls
        while len(seen) < wanted:
            # callhub's writer is the only one to insert calls, one transaction after
            # another on one connection, so their ids become visible in increasing order
            # and the last one seen is a watermark (a call it missed would keep this loop
            # waiting, and the count below would still find it). Re-reading the last
            # 10,000 ids on every poll, as this did, cost the bench ~26 s of CPU in a 60 s
            # run, on the 2 cores callhub and PostgreSQL share.
            rows = await poll.fetch("SELECT id, pbx, linkedid FROM calls WHERE id > $1",
                                    last_id)
            now = time.time()
            for row in rows:
                seen.setdefault((row["pbx"], row["linkedid"]), now)
                last_id = max(last_id, row["id"])
            rss_peak = max(rss_peak, rss_mb(pid))
            if deadline is None and all(r.done() for r in reports):
                deadline = time.time() + args.drain
                streamed = (cpu_seconds(pid) - cpu0, time.time() - t0)
            if deadline is not None and time.time() > deadline:
                print(f"fleet: gave up waiting, {wanted - len(seen)} calls not stored "
                      f"{args.drain:g} s after the streams ended", flush=True)
                break
            await asyncio.sleep(args.poll)  # the poll's period (measuring, not syncing)
        window = time.time() - t0
        cpu1, busy1, waited1 = cpu_seconds(pid), machine_busy(), runqueue_wait_seconds(pid)
        faults = page_faults(pid) - faults0
        if streamed is None:  # every row was there before the servers reported
            streamed = (cpu1 - cpu0, window)
        server_cpu = sum(cpu_seconds(p.pid) for p in servers) - server_cpu0
        pg_cpu = 0.0
        for row in await poll.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1 "
                                    "AND pid <> pg_backend_pid()", database):
            with contextlib.suppress(OSError):
                pg_cpu += cpu_seconds(row["pid"]) - pg_cpu0.get(row["pid"], 0.0)
        rss_end = rss_mb(pid)
        sent: dict[tuple[str, str], float] = {}
        offered_events, achieved = 0, 0.0
        first, last, max_buffer = float("inf"), 0.0, 0
        for task in reports:
            report = json.loads(await task)
            for name, feed in report.items():
                sent.update({(name, lid): at for lid, at in feed["ends"].items()})
                offered_events += feed["events"]
                achieved += feed["events"] / (feed["last"] - feed["first"] + TICK)
                first = min(first, feed["first"])
                last = max(last, feed["last"])
                max_buffer = max(max_buffer, feed["max_buffer"])
        stored = await poll.fetch("SELECT pbx, linkedid, outcome FROM calls")
        await poll.close()
        expected = {(pbx_name(i), pbx_linkedid(lid, i)): outcome
                    for i in range(args.pbxs) for lid, _, outcome in template.calls}
        keys = [(r["pbx"], r["linkedid"]) for r in stored]
        lags = sorted(seen[k] - sent[k] for k in seen if k in sent)
        # Split by callhub's call.finished log line (at info): ingestion, then the writer.
        finished = daemon.finished
        ingest_lags = sorted(finished[k] - sent[k] for k in finished if k in sent)
        writer_lags = sorted(seen[k] - finished[k] for k in seen if k in finished)
        busy = (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1])
        stream_s = last - first
        figures.update({
            "stream_seconds": round(stream_s, 1),
            "events_sent": offered_events,
            "events_per_s_achieved": round(achieved),
            "server_max_write_backlog_kb": round(max_buffer / 1024),
            "window_s": round(window, 1),
            "calls_stored": len(stored),
            "calls_lost": len(set(expected) - set(keys)),
            "calls_twice": len(keys) - len(set(keys)),
            "calls_unknown": len(set(keys) - set(expected)),
            "calls_wrong_outcome": sum(1 for r in stored
                                       if expected.get((r["pbx"], r["linkedid"]),
                                                       r["outcome"]) != r["outcome"]),
            "calls_per_s": round(len(stored) / stream_s) if stream_s else None,
            "lag_p50_ms": round(1000 * (pct(lags, 50) or 0)),
            "lag_p99_ms": round(1000 * (pct(lags, 99) or 0)),
            "lag_max_ms": round(1000 * lags[-1]) if lags else None,
            "lag_to_finished_p50_ms": round(1000 * (pct(ingest_lags, 50) or 0)),
            "lag_to_finished_p99_ms": round(1000 * (pct(ingest_lags, 99) or 0)),
            "lag_finished_to_row_p50_ms": round(1000 * (pct(writer_lags, 50) or 0)),
            "lag_finished_to_row_p99_ms": round(1000 * (pct(writer_lags, 99) or 0)),
            "callhub_cpu_s": round(cpu1 - cpu0, 1),
            "callhub_cpu_share": round((cpu1 - cpu0) / window, 3),
            # While the streams ran (when rows never all arrive, the window above also
            # holds the idle wait for them).
            "callhub_cpu_share_streaming": round(streamed[0] / streamed[1], 3),
            "callhub_cpu_ms_per_1000_events": round(1000 * (cpu1 - cpu0) / offered_events
                                                    * 1000, 2) if offered_events else None,
            "callhub_cpu_ms_per_call": round(1000 * (cpu1 - cpu0) / len(stored), 3)
            if stored else None,
            "callhub_page_faults": faults,
            "callhub_rss_start_mb": round(rss_start), "callhub_rss_peak_mb": round(rss_peak),
            "callhub_rss_end_mb": round(rss_end),
            "postgres_cpu_s": round(pg_cpu, 1),
            "postgres_cpu_ms_per_call": round(1000 * pg_cpu / len(stored), 3) if stored else None,
            "servers_cpu_s": round(server_cpu, 1),
            "machine_busy_share": round(busy, 3),
            "callhub_runqueue_wait_share": round((waited1 - waited0) / window, 3),
            "callhub_log_lines": daemon.lines, "callhub_errors": daemon.errors[:5],
            "callhub_logins": len(daemon.connected),
            "callhub_ami_drops": daemon.drops,
        })
        figures["callhub_exit"] = await daemon.stop()
    finally:
        if daemon is not None:
            await daemon.stop()
        for proc in servers:
            if proc.stdin is not None:
                proc.stdin.close()
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            await proc.wait()
        await drop_database(admin, database)
        await admin.close()
    return figures


async def drop_database(admin: Any, database: str, tries: int = 10) -> None:
    """DROP DATABASE ... WITH (FORCE); again after a second when it refuses for an
    autovacuum worker of the database (the bench's user may not end a superuser's
    process: seen once at the end of a run)."""
    import asyncpg

    for attempt in range(tries):
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            return
        except asyncpg.InsufficientPrivilegeError:
            if attempt == tries - 1:
                raise
            await asyncio.sleep(1.0)  # until that worker is done


def report(figures: dict[str, Any]) -> dict[str, Any]:
    targets = {
        "lag_p99_lt_1s": figures["lag_p99_ms"] < 1000 and figures["calls_lost"] == 0,
        "nothing_lost_or_twice": figures["calls_lost"] == figures["calls_twice"]
        == figures["calls_unknown"] == figures["calls_wrong_outcome"] == 0,
        "no_ami_session_dropped": figures["callhub_ami_drops"] == 0,
        "offered_rate_kept": figures["events_per_s_achieved"] is not None
        and figures["events_per_s_achieved"] >= 0.95 * figures["offered_events_per_s"],
    }
    figures["targets_met"] = targets
    print(f"fleet: {figures['events_per_s_achieved']:,} events/s offered "
          f"(asked {figures['offered_events_per_s']:,.0f}), {figures['calls_stored']} of "
          f"{figures['calls_sent']} calls stored ({figures['calls_per_s']}/s); lost "
          f"{figures['calls_lost']}, twice {figures['calls_twice']}, wrong outcome "
          f"{figures['calls_wrong_outcome']}", flush=True)
    print(f"fleet: lag end -> row p50 {figures['lag_p50_ms']} ms, p99 {figures['lag_p99_ms']} "
          f"ms, max {figures['lag_max_ms']} ms (target p99 < 1000 ms; includes up to "
          f"{figures['poll_s'] * 1000:g} ms of polling)", flush=True)
    print(f"fleet: of which end -> call.finished logged p50 {figures['lag_to_finished_p50_ms']}"
          f" ms, p99 {figures['lag_to_finished_p99_ms']} ms; call.finished -> row p50 "
          f"{figures['lag_finished_to_row_p50_ms']} ms, p99 "
          f"{figures['lag_finished_to_row_p99_ms']} ms", flush=True)
    print(f"fleet: callhub CPU {figures['callhub_cpu_share']:.0%} of a core "
          f"({figures['callhub_cpu_ms_per_1000_events']} ms per 1,000 events, "
          f"{figures['callhub_cpu_ms_per_call']} ms per call), RSS peak "
          f"{figures['callhub_rss_peak_mb']} MB; PostgreSQL {figures['postgres_cpu_ms_per_call']}"
          f" ms per call; AMI servers {figures['servers_cpu_s']} CPU s; machine "
          f"{figures['machine_busy_share']:.0%} busy; callhub's event loop waited for a CPU "
          f"{figures['callhub_runqueue_wait_share']:.0%} of the time", flush=True)
    print("targets: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in targets.items()))
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pbxs", type=int, default=100, help="PBXs (AMI connections)")
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s per PBX")
    parser.add_argument("--duration", type=float, default=60.0,
                        help="seconds of stream per PBX (the stream is rate x duration events, "
                             "whole calls)")
    parser.add_argument("--servers", type=int, default=4, help="AMI server processes")
    parser.add_argument("--spread", type=float, default=1.0,
                        help="the PBXs' starts are spread over this many seconds")
    parser.add_argument("--poll", type=float, default=0.02, help="seconds between DB polls")
    parser.add_argument("--drain", type=float, default=60.0,
                        help="seconds to wait for the last rows after the streams end")
    parser.add_argument("--log-level", default="info", help="callhub's log level")
    parser.add_argument("--event-loop", choices=loops.EVENT_LOOPS, default="auto",
                        help="callhub's event_loop setting (default auto: uvloop where installed)")
    parser.add_argument("--ami-user", choices=("all", "shipped"), default="all",
                        help="all: every event of the stream goes out (--rate of them a "
                             "second); shipped: only what Asterisk sends the [callhub] user "
                             "of deploy/asterisk/manager.conf (its read classes and "
                             "eventfilter), the PBX still making --rate events a second")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help=f"where streams are kept (default {default_cache_dir()})")
    parser.add_argument("--database-url", default=os.environ.get("CALLHUB_TEST_DATABASE_URL"),
                        help="PostgreSQL (default $CALLHUB_TEST_DATABASE_URL); the bench "
                             "creates and drops a database of its own there")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds for callhub to start and log in to every PBX")
    parser.add_argument("--keep", action="store_true", help="keep the config and callhub's log")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--serve-pbxs", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        manifest_path = args.serve
        meta = json.loads(manifest_path.with_suffix(".fleet.json").read_text("utf-8"))
        template = Template(manifest_path.with_suffix(".fleet"), meta["events"],
                            [tuple(c) for c in meta["calls"]])
        mine = [int(i) for i in args.serve_pbxs.split(",") if i]
        with contextlib.suppress(KeyboardInterrupt):
            user = AmiUser.from_manager_conf(SHIPPED) if args.ami_user == "shipped" else None
            asyncio.run(serve_main(template, mine, args.rate, args.spread, args.pbxs, user))
        return 0
    if not args.database_url:
        raise SystemExit("needs --database-url or CALLHUB_TEST_DATABASE_URL (PostgreSQL)")
    if args.pbxs > 1000:
        raise SystemExit("at most 1,000 PBXs (three digits in each uniqueid)")
    work = Path(tempfile.mkdtemp(prefix="callhub-fleet-"))
    try:
        figures = report(asyncio.run(run(args, work)))
    except asyncio.CancelledError:
        print("fleet: stopped by SIGTERM; the daemon, the servers and the database are gone",
              file=sys.stderr, flush=True)
        return 128 + signal.SIGTERM
    finally:
        if args.keep:
            print(f"fleet: kept {work} (callhub.toml, callhub.log)", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(figures, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
