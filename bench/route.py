"""FastAGI routing latency: Asterisk's side of many AGI sessions against callhub's server.

Measures the round trip as the dialplan sees it (connect, environment, every
command answered, close), sequentially and with N concurrent sessions
(closed loop: each session starts when one ends), and compares it with a bare
TCP connect+close to the same server as baseline.

callhub's server runs in a process of its own, as `callhub run` does beside
Asterisk, built the way `callhub run` builds it (`start_routing` from a state
directory), in two modes:

- `file`: the rotation position in the state directory's file (one instance,
  or SQLite);
- `shared`: the position shared through PostgreSQL (a pair), in a fresh
  schema (with --database-url or CALLHUB_TEST_DATABASE_URL; skipped without).

The client (this process) is a lean epoll loop standing in for
Asterisk's C (one full answer is checked with the simulator's client first);
it shares the machine's cores with the server and, in `shared` mode,
PostgreSQL. Prints figures as it goes; the last line is one
JSON object, with `targets_met` (issue 15: p99 < 5 ms at 20 concurrent).

    python bench/route.py [--calls 2000] [--concurrency 20] [--modes file,shared]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import socket
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from callhub import loops
from callhub.config import Settings
from callhub.lifecycle import settle_heap
from callhub.logs import configure_logging
from callhub.routing.rota_file import save_rota
from callhub.routing.service import start_routing
from callhub.sim.agi_client import agi_request, asterisk_environment
from callhub.sim.demo_rota import demo_rota
from callhub.store import migrate
from callhub.store.db import Database

AGENTS = {f"PJSIP/10{i:02d}": f"Agent {i}" for i in range(1, 9)}
LINES = {"hotline": ["4008001000"]}
TARGET_P99_MS = 5.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- the server process --------------------------------------------------------------


async def serve(state: str, database_url: str | None, schema: str | None) -> None:
    """callhub's routing as `callhub run` starts it; prints the port, serves until stdin
    closes."""
    save_rota(demo_rota(AGENTS, LINES), Path(state) / "rota.json")
    db = Database.connect(database_url, schema=schema) if database_url and schema else None
    service = await start_routing(Settings(spool_dir=str(Path(state).parent)),
                                  host="127.0.0.1", port=0, db=db)
    keeper = None
    if service.shared is not None:  # the `route-positions` task of `callhub run`
        await service.shared.reconcile()
        keeper = asyncio.create_task(service.shared.run())
    assert service.address is not None
    settle_heap()  # as `callhub run` does once started
    print(service.address[1], flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    local = (service.shared.metrics.local_choices._value.get()
             if service.shared is not None else 0)
    print(int(local), flush=True)  # calls decided from the file although shared
    if keeper is not None:
        keeper.cancel()
    await service.close()
    if db is not None:
        await db.close()


# -- the client (Asterisk's side) ------------------------------------------------------


async def bare_connect(host: str, port: int) -> float:
    started = time.perf_counter()
    _, writer = await asyncio.open_connection(host, port)
    writer.close()
    await writer.wait_closed()
    return time.perf_counter() - started


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class AsteriskSide:
    """Asterisk's half of `calls` FastAGI sessions, `concurrency` at a time (closed loop),
    in one epoll loop on non-blocking sockets, as res_agi.c does it in C (connect, wait
    until writable, send the environment, then read a line and answer it `200 result=0`
    until the server closes), without asyncio's transports, futures and tasks on the
    cores the server needs. CALLHUB_TARGET and CALLHUB_ROUTE_RESULT are picked out of
    what was sent by `value()`, not parsed as Asterisk would: the bench's values have
    nothing to escape, and the first answer is read with the simulator's full parser
    (callhub/sim/agi_parse.py)."""

    def __init__(self, port: int, request: bytes) -> None:
        self.address = ("127.0.0.1", port)
        self.request = request

    def run(self, calls: int, concurrency: int) -> list[tuple[float, str, str]]:
        """(seconds connect to close, CALLHUB_ROUTE_RESULT, CALLHUB_TARGET) per session."""
        poller = select.epoll()
        open_: dict[int, tuple[socket.socket, float, bytearray]] = {}
        done: list[tuple[float, str, str]] = []
        started = 0
        while len(done) < calls:
            while started < calls and len(open_) < concurrency:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                t0 = time.perf_counter()
                sock.connect_ex(self.address)
                poller.register(sock.fileno(), select.EPOLLOUT)
                open_[sock.fileno()] = (sock, t0, bytearray())
                started += 1
            for fd, events in poller.poll():
                sock, t0, received = open_[fd]
                if events & select.EPOLLOUT:  # connected
                    sock.send(self.request)
                    poller.modify(fd, select.EPOLLIN)
                    continue
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    data = b""
                if data:
                    received += data
                    sock.send(b"200 result=0\n" * data.count(b"\n"))
                    continue
                poller.unregister(fd)
                sock.close()
                del open_[fd]
                done.append((time.perf_counter() - t0,
                             value(received, b"CALLHUB_ROUTE_RESULT="),
                             value(received, b"CALLHUB_TARGET=")))
        poller.close()
        return done


def value(received: bytes | bytearray, prefix: bytes) -> str:
    """The value after `prefix` in an MSet's data, up to the next `,` or `"` (unescaped
    values only)."""
    start = received.find(prefix)
    if start < 0:
        return ""
    start += len(prefix)
    end = min(i for i in (received.find(b",", start), received.find(b'"', start),
                          len(received)) if i >= 0)
    return bytes(received[start:end]).decode()


async def measure(port: int, calls: int, concurrency: int, pid: int) -> dict[str, float]:
    host = "127.0.0.1"
    env = asterisk_environment(did="4008001000", caller="+8613800000001", port=port)
    # The simulator's client checks the whole answer once; the lean one times the rest.
    checked = await agi_request(host, port, env)
    assert checked.answered and checked.targets, checked
    settle_heap()  # Asterisk's C has no collector to pause the sessions in flight
    asterisk = AsteriskSide(port, "".join(f"{k}: {v}\n" for k, v in env).encode() + b"\n")
    firsts: list[str] = []

    def sessions(concurrency: int) -> list[float]:
        answers = asterisk.run(calls, concurrency)
        assert all(result == "routed" for _, result, _ in answers), answers[:3]
        firsts.extend(target for _, _, target in answers)
        return [seconds for seconds, _, _ in answers]

    server_cpu = cpu_seconds(pid)
    sequential = sessions(1)
    server_cpu_per_call = (cpu_seconds(pid) - server_cpu) / calls
    print(f"  sequential: {calls} routed calls, p50 {percentile(sequential, .5)*1e3:.2f} ms, "
          f"p99 {percentile(sequential, .99)*1e3:.2f} ms", flush=True)
    baseline = [await bare_connect(host, port) for _ in range(calls // 4)]
    print(f"  baseline TCP connect+close: p50 {statistics.median(baseline)*1e3:.2f} ms",
          flush=True)
    started, client_cpu, server_cpu = time.perf_counter(), time.process_time(), cpu_seconds(pid)
    concurrent = sessions(concurrency)
    wall = time.perf_counter() - started
    client_cpu_per_call = (time.process_time() - client_cpu) / calls
    server_cpu_concurrent = (cpu_seconds(pid) - server_cpu) / calls
    print(f"  {concurrency} concurrent: p50 {percentile(concurrent, .5)*1e3:.2f} ms, "
          f"p99 {percentile(concurrent, .99)*1e3:.2f} ms, {calls / wall:.0f} calls/s",
          flush=True)
    print(f"  CPU per call: server {server_cpu_per_call*1e6:.0f} µs sequential, "
          f"{server_cpu_concurrent*1e6:.0f} µs concurrent; client "
          f"{client_cpu_per_call*1e6:.0f} µs; load average "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)
    # Every agent is on duty and free: the rotation hands out first places evenly (a
    # call decided from the file after a database timeout may skip or repeat one).
    counts = [firsts.count(a) for a in AGENTS]
    return {
        "first_offered_spread": max(counts) - min(counts),
        "sequential_p50_ms": round(percentile(sequential, .5) * 1e3, 3),
        "sequential_p99_ms": round(percentile(sequential, .99) * 1e3, 3),
        "baseline_connect_p50_ms": round(statistics.median(baseline) * 1e3, 3),
        "concurrent_p50_ms": round(percentile(concurrent, .5) * 1e3, 3),
        "concurrent_p99_ms": round(percentile(concurrent, .99) * 1e3, 3),
        "concurrent_calls_per_s": round(calls / wall, 1),
        "server_cpu_us_per_call": round(server_cpu_per_call * 1e6),
        "server_cpu_us_per_call_concurrent": round(server_cpu_concurrent * 1e6),
        "client_cpu_us_per_call": round(client_cpu_per_call * 1e6),
        "load_average": round(os.getloadavg()[0], 2),
    }


async def fresh_schema(url: str) -> str:
    schema = f"bench_route_{uuid.uuid4().hex[:10]}"
    admin = Database.connect(url)
    async with admin.begin() as conn:
        await conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    await admin.close()
    db = Database.connect(url, schema=schema)
    await migrate.upgrade(db)
    await db.close()
    return schema


async def drop_schema(url: str, schema: str) -> None:
    admin = Database.connect(url)
    async with admin.begin() as conn:
        await conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    await admin.close()


async def run_mode(mode: str, args: argparse.Namespace) -> dict[str, float]:
    print(f"{mode}:", flush=True)
    with tempfile.TemporaryDirectory(prefix="callhub-bench-route-") as tmp:
        state = Path(tmp) / "routing"
        state.mkdir()
        cmd = [sys.executable, __file__, "--serve", str(state), "--event-loop", args.event_loop]
        schema = None
        if mode == "shared":
            schema = await fresh_schema(args.database_url)
            cmd += ["--database-url", args.database_url, "--schema", schema]
        server = await asyncio.create_subprocess_exec(
            *cmd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        try:
            assert server.stdout is not None and server.stdin is not None
            port = int(await server.stdout.readline())
            figures = await measure(port, args.calls, args.concurrency, server.pid)
            server.stdin.close()
            figures["decided_from_file"] = float(await server.stdout.readline())
            if mode == "shared":
                print(f"  decided from the file after a database timeout: "
                      f"{figures['decided_from_file']:.0f}", flush=True)
            return figures
        finally:
            if server.stdin is not None and not server.stdin.is_closing():
                server.stdin.close()
            await asyncio.wait_for(server.wait(), 30)
            if schema is not None:
                await drop_schema(args.database_url, schema)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"calls": args.calls, "concurrency": args.concurrency}
    result["event_loop"] = loops.resolve(args.event_loop)
    met: dict[str, bool] = {}
    for mode in args.modes:
        if mode == "shared" and not args.database_url:
            print("shared: skipped (no --database-url and no CALLHUB_TEST_DATABASE_URL)")
            continue
        figures = await run_mode(mode, args)
        result.update({f"{mode}_{key}": value for key, value in figures.items()})
        met[f"{mode}_p99_lt_{TARGET_P99_MS:g}ms"] = figures["concurrent_p99_ms"] < TARGET_P99_MS
    result["targets_met"] = met
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--modes", type=lambda s: s.split(","), default=["file", "shared"])
    parser.add_argument("--database-url", default=os.environ.get("CALLHUB_TEST_DATABASE_URL"))
    parser.add_argument("--event-loop", choices=loops.EVENT_LOOPS, default="auto",
                        help="the server's loop (default auto: uvloop where installed, as "
                             "`callhub run`)")
    parser.add_argument("--serve", metavar="STATE_DIR", help=argparse.SUPPRESS)
    parser.add_argument("--schema", help=argparse.SUPPRESS)
    args = parser.parse_args()
    # The baseline's bare connections are malformed requests to callhub: not worth a line.
    configure_logging("error" if args.serve else "warning")
    if args.serve:
        loops.run(serve(args.serve, args.database_url, args.schema), args.event_loop)
    else:
        print(json.dumps(asyncio.run(main(args))))
