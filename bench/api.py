"""API benchmark: 1,000,000 calls in PostgreSQL, the real aiohttp app over real HTTP.

    python bench/api.py --database-url postgresql://user:pw@127.0.0.1:5432/db
    python bench/api.py --calls 200000 --keep        # smaller; keep the data to rerun
    python bench/api.py --reuse                      # rerun on the data kept last time

The data goes into a schema of its own (`bench_api` by default, dropped at
the end unless --keep): the migrations create the tables, then COPY fills
them (calls, their attempts, worklist entries and links), `--months` of
traffic ending today (default 24: about 1,400 calls a day, a busy desk),
with UTF-8 caller names, repeat callers, misses that were called back and
some still pending. The app (`callhub.api.app.make_app`, the same one
`callhub run` serves) runs in its own process; 20 clients (--clients) hammer
one endpoint at a time over keep-alive HTTP:

- GET /api/v1/calls: filtered (period, outcome, line, agent, number,
  min_rings, worklist status) and paged (the next page by its cursor);
- GET /api/v1/worklist: the pending list, handled ones of a period, by number;
- GET /api/v1/stats?group_by=hour over a whole month.

It prints p50/p99 per endpoint as it goes; the last line is one JSON object.
Targets (issue 15): p99 < 50 ms for the lists, < 100 ms for a month of hourly
stats. `--workers N` serves the app from N processes, the first dealing the
connections to all in turn, as `callhub run --workers N` does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

TOKEN = "bench-admin-token-0001"
LINES = ("hotline", "repairs", "complaints", "front-desk")
AGENTS = {f"PJSIP/10{i:02d}": name for i, name in enumerate(
    ("Li Na", "Wang Wei", "Zhang Min", "Liu Yang", "Chen Jing", "Zhao Lei", "Müller",
     "Sun Li"), start=1)}
NAMES = ("张三", "李四", "王芳", "Müller", None, "Zoë", "陈静", "Ahmed", "刘洋", None)
OUTCOMES = (("answered", 0.80), ("abandoned", 0.11), ("missed", 0.09))
TZ_NAME = "Asia/Shanghai"


def asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def sa_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+asyncpg://", 1)


# -- data -----------------------------------------------------------------------------------

def generate(count: int, months: int, seed: int) -> Iterator[tuple[tuple[Any, ...],
                                                               list[tuple[Any, ...]]]]:
    """(calls row, attempts rows) in arrival order; ids are assigned by the caller."""
    rng = random.Random(seed)
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start = end - timedelta(days=30.44 * months)
    span = (end - start).total_seconds()
    numbers = [f"+86138{n:08d}" for n in rng.sample(range(10**8), max(count // 5, 10))]
    agents = list(AGENTS)
    stamps = sorted(rng.random() * span for _ in range(count))
    now = datetime.now(UTC)
    for n, offset in enumerate(stamps):
        arrived = start + timedelta(seconds=offset)
        outbound = rng.random() < 0.12
        number = rng.choice(numbers)
        line = None if outbound else rng.choice(LINES)
        roll, outcome = rng.random(), "answered"
        for name, weight in OUTCOMES:
            if roll < weight:
                outcome = name
                break
            roll -= weight
        if outbound:
            outcome = "answered" if rng.random() < 0.7 else "missed"
        answered = outcome == "answered"
        ring = round(rng.uniform(1.0, 25.0), 2)
        rings = int(ring // 5) + 1
        talk = round(rng.uniform(10, 400), 2) if answered else 0.0
        agent = rng.choice(agents) if answered or outbound else None
        ring_started = arrived + timedelta(seconds=rng.uniform(0.5, 6))
        answered_at = ring_started + timedelta(seconds=ring) if answered else None
        ended = (answered_at or ring_started + timedelta(seconds=ring)) + timedelta(
            seconds=talk)
        reason = None
        if not answered and not outbound:
            reason = (rng.choice(("while_ringing", "in_queue", "in_ivr"))
                      if outcome == "abandoned"
                      else rng.choice(("not_answered", "no_agent_available", "voicemail")))
        row = (
            "main", f"{int(arrived.timestamp())}.{n}", "outbound" if outbound else "inbound",
            line, number if outbound else f"400800100{LINES.index(line)}" if line else None,
            "1001" if outbound else number, None if outbound else rng.choice(NAMES), number,
            arrived, ring_started, answered_at, ended, ring, rings,
            (answered_at or ended).timestamp() - arrived.timestamp(), talk, 0.0, outcome,
            reason, reason == "voicemail", outcome == "abandoned" and ring < 5, agent,
            AGENTS.get(agent or ""), "external" if answered else None, 16, None, False, "[]",
            None, None, now)
        attempts = []
        if not outbound:
            tries = 2 if rng.random() < 0.25 else 1
            for seq in range(1, tries + 1):
                device = agent if seq == tries and agent else rng.choice(agents)
                result = "answered" if answered and seq == tries else "no_answer"
                attempts.append((seq, device, AGENTS[device], ring_started, ring_started,
                                 ring_started + timedelta(seconds=ring / tries), result,
                                 ring / tries))
        yield row, attempts


CALL_COLUMNS = (
    "pbx", "linkedid", "direction", "line", "called_number", "caller_number", "caller_name",
    "external_number", "arrived_at", "ring_started_at", "answered_at", "ended_at",
    "ring_seconds", "rings", "wait_seconds", "talk_seconds", "hold_seconds", "outcome",
    "reason", "voicemail", "short_abandon", "agent", "agent_name", "hangup_by",
    "hangup_cause", "queue", "incomplete", "transfers", "category", "note", "updated_at")
ATTEMPT_COLUMNS = ("call_id", "seq", "interface", "agent_name", "offered_at",
                   "ring_started_at", "ended_at", "result", "ring_seconds")
ENTRY_COLUMNS = ("id", "pbx", "number", "line", "status", "first_missed_at",
                 "last_missed_at", "call_count", "handled_at", "handled_by", "how",
                 "handled_call_id", "time_to_callback_seconds", "note", "updated_at")


async def load(url: str, schema: str, count: int, months: int, seed: int) -> dict[str, Any]:
    """Create the schema, migrate, COPY the data in; figures about the load."""
    import asyncpg

    from callhub.store.db import Database
    from callhub.store.migrate import upgrade

    conn = await asyncpg.connect(asyncpg_dsn(url))
    await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    await conn.execute(f'CREATE SCHEMA "{schema}"')
    await conn.close()
    db = Database.connect(sa_url(url), schema=schema)
    await upgrade(db)
    await db.close()

    conn = await asyncpg.connect(asyncpg_dsn(url), server_settings={"search_path": schema})
    started = time.perf_counter()
    calls: list[tuple[Any, ...]] = []
    attempts: list[tuple[Any, ...]] = []
    misses: dict[tuple[str, str], list[tuple[int, datetime]]] = {}
    answers: dict[str, list[tuple[datetime, int]]] = {}
    loaded = 0
    for call_id, (row, tries) in enumerate(generate(count, months, seed), start=1):
        calls.append((call_id, *row))
        attempts.extend((call_id, *a) for a in tries)
        outcome, number, line, arrived = row[17], row[7], row[3], row[8]
        if row[2] == "inbound" and outcome in ("missed", "abandoned"):
            misses.setdefault((number, line), []).append((call_id, arrived))
        elif outcome == "answered":
            answers.setdefault(number, []).append((row[10], call_id))
        if len(calls) >= 50_000:
            loaded += await _copy(conn, calls, attempts)
    loaded += await _copy(conn, calls, attempts)
    copied = time.perf_counter() - started

    # Worklist: each run of misses of a number on a line until its next answered call is
    # one entry; handled by that call (a callback or the caller again), else pending.
    entries: list[tuple[Any, ...]] = []
    links: list[tuple[int, int]] = []
    now = datetime.now(UTC)
    for (number, line), missed in misses.items():
        later = sorted(answers.get(number, []))
        group: list[tuple[int, datetime]] = []
        at = 0
        for call_id, arrived in missed:
            while at < len(later) and later[at][0] <= arrived:
                if group:  # an answered call to or from the number settles the misses
                    entries.append(_entry(len(entries) + 1, number, line, group, later[at],
                                          now))
                    links.extend((len(entries), c) for c, _ in group)
                    group = []
                at += 1
            group.append((call_id, arrived))
        if group:
            answer = later[at] if at < len(later) else None
            entries.append(_entry(len(entries) + 1, number, line, group, answer, now))
            links.extend((len(entries), c) for c, _ in group)
    await conn.copy_records_to_table("worklist_entries", records=entries,
                                     columns=ENTRY_COLUMNS)
    await conn.copy_records_to_table("worklist_calls", records=links,
                                     columns=("entry_id", "call_id"))
    for table in ("calls", "attempts", "worklist_entries"):
        await conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                           f"(SELECT coalesce(max(id), 1) FROM {table}))")
    await conn.close()
    # The hourly rollup behind /stats, as the writer would have kept it (the migration's fill).
    from callhub.store import rollup
    db = Database.connect(sa_url(url), schema=schema)
    async with db.begin() as sa_conn:
        await rollup.rebuild(sa_conn)
    await db.close()
    conn = await asyncpg.connect(asyncpg_dsn(url), server_settings={"search_path": schema})
    await conn.execute("VACUUM ANALYZE")  # as autovacuum would: index-only scans, statistics
    total = time.perf_counter() - started
    pending = sum(1 for e in entries if e[4] == "pending")
    await conn.close()
    return {"calls": loaded, "worklist_entries": len(entries), "pending_entries": pending,
            "load_seconds": round(total, 1), "copy_calls_per_s": round(loaded / copied)}


def _entry(entry_id: int, number: str, line: str, group: list[tuple[int, datetime]],
           answer: tuple[datetime, int] | None, now: datetime) -> tuple[Any, ...]:
    first, last = group[0][1], group[-1][1]
    if answer is None:
        return (entry_id, "main", number, line, "pending", first, last, len(group), None, None,
                None, None, None, None, now)
    return (entry_id, "main", number, line, "handled", first, last, len(group), answer[0],
            None, "callback", answer[1], (answer[0] - first).total_seconds(), None, now)


async def _copy(conn: Any, calls: list[tuple[Any, ...]],
                attempts: list[tuple[Any, ...]]) -> int:
    n = len(calls)
    await conn.copy_records_to_table("calls", records=calls, columns=("id", *CALL_COLUMNS))
    await conn.copy_records_to_table("attempts", records=attempts, columns=ATTEMPT_COLUMNS)
    calls.clear()
    attempts.clear()
    return n


async def facts(url: str, schema: str) -> dict[str, Any]:
    """What the requests can ask for: the data's time span, some numbers, the month."""
    import asyncpg
    conn = await asyncpg.connect(asyncpg_dsn(url), server_settings={"search_path": schema})
    first, last, count = await conn.fetchrow(
        "SELECT min(arrived_at), max(arrived_at), count(*) FROM calls")
    numbers = [r[0] for r in await conn.fetch(
        "SELECT external_number FROM calls TABLESAMPLE SYSTEM (1) LIMIT 500")]
    pending = [r[0] for r in await conn.fetch(
        "SELECT number FROM worklist_entries WHERE status = 'pending' LIMIT 200")]
    await conn.close()
    return {"first": first, "last": last, "count": count, "numbers": numbers,
            "pending_numbers": pending}


# -- the server (its own process) -------------------------------------------------------------

async def serve(url: str, schema: str, deal_to: list[int], channel: int | None) -> None:
    """The API as `callhub run` serves it (its connection gate included): listening and
    dealing connections to the processes at the other end of `deal_to`, or serving those
    dealt to it over `channel` (callhub/api/handoff.py)."""
    from aiohttp import web

    from callhub.api import handoff
    from callhub.api import limits as http_limits
    from callhub.api.app import make_app
    from callhub.config import ApiToken, Settings
    from callhub.lifecycle import settle_heap
    from callhub.logs import configure_logging
    from callhub.store.db import Database

    configure_logging("warning", stream=sys.stderr)
    settings = Settings(database_url=sa_url(url), timezone=TZ_NAME,
                        api_tokens=(ApiToken("admin", TOKEN),))
    db = Database.connect(sa_url(url), schema=schema)
    app = make_app(settings, db)
    gate = http_limits.install(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    assert runner.server is not None
    stop = asyncio.Event()
    if channel is not None:
        receiver = handoff.Receiver(socket.socket(fileno=channel),
                                    gate.protocol_factory(runner.server), stop.set)
        receiver.start()
        settle_heap()
        receiver.announce()
    else:
        dealer = handoff.Dealer([socket.socket(fileno=fd) for fd in deal_to])
        await http_limits.GuardedSite(runner, "127.0.0.1", 0, gate, dealer=dealer).start()
        for mine in dealer.channels:
            await handoff.announced(mine)
        settle_heap()  # as `callhub run` does once started
        print(runner.addresses[0][1], flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await db.close()


# -- the clients ------------------------------------------------------------------------------

def _iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S+00:00")


def calls_queries(f: dict[str, Any], rng: random.Random) -> Iterator[tuple[str, dict[str, str]]]:
    last: datetime = f["last"]
    first: datetime = f["first"]
    span = (last - first).total_seconds()
    while True:
        day = first + timedelta(seconds=rng.random() * span)
        week = {"from": _iso(day), "to": _iso(day + timedelta(days=7))}
        choice = rng.randrange(8)
        if choice == 0:
            yield "week_missed", {**week, "outcome": "missed", "limit": "50"}
        elif choice == 1:
            yield "line_inbound", {"line": rng.choice(LINES), "direction": "inbound",
                                   "limit": "50"}
        elif choice == 2:
            yield "week_agent", {"agent": rng.choice(list(AGENTS)), **week, "limit": "50"}
        elif choice == 3:
            yield "number", {"number": rng.choice(f["numbers"]), "limit": "50"}
        elif choice == 4:
            yield "week_min_rings", {**week, "min_rings": "4", "outcome": "answered",
                                     "limit": "100"}
        elif choice == 5:
            yield "worklist_pending", {"worklist_status": "pending", "limit": "50"}
        elif choice == 6:
            yield "newest", {"limit": "50"}  # the desk's default view
        else:
            yield "abandoned_ringing_line", {"outcome": "abandoned", "reason": "while_ringing",
                                             "line": rng.choice(LINES), "limit": "50"}


def worklist_queries(f: dict[str, Any], rng: random.Random) -> Iterator[tuple[str, dict[str, str]]]:
    last: datetime = f["last"]
    while True:
        choice = rng.randrange(4)
        if choice == 0:
            yield "pending", {"status": "pending", "limit": "100"}
        elif choice == 1:
            day = last - timedelta(days=rng.randrange(1, 300))
            yield "handled_week", {"status": "handled", "from": _iso(day),
                                   "to": _iso(day + timedelta(days=7)), "limit": "100"}
        elif choice == 2:
            yield "number", {"number": rng.choice(f["pending_numbers"] or f["numbers"])}
        else:
            yield "all", {"limit": "100"}  # pending first: the desk's default view


def stats_queries(f: dict[str, Any], rng: random.Random) -> Iterator[tuple[str, dict[str, str]]]:
    last: datetime = f["last"]
    while True:
        start = (last - timedelta(days=30 * rng.randrange(1, 12))).replace(
            day=1, hour=0, minute=0, second=0, microsecond=0)
        end = (start + timedelta(days=32)).replace(day=1)
        yield "month_hourly", {"from": start.date().isoformat(),
                               "to": end.date().isoformat(), "group_by": "hour"}


class _KeepAlive(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time: the bench's client.

    It shares the 2 cores with the server and PostgreSQL, so it does as little as a
    client can: the request's bytes, the status line and Content-Length, the body.
    aiohttp's client cost 0.55 ms of CPU a `/calls` page here, this one 0.17-0.26 ms."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.answer: asyncio.Future[tuple[int, bytes]] | None = None
        self.status = 0
        self.body_at = -1  # where the body starts in `buffer`, once the head is in
        self.length = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.body_at < 0:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            at = head.find(b"\r\ncontent-length:")
            if at < 0:
                self._fail(ConnectionError("an answer without Content-Length"))
                return
            self.status = int(head[9:12])
            line_end = head.find(b"\r\n", at + 2)
            self.length = int(head[at + 17:line_end if line_end >= 0 else None])
            self.body_at = end + 4
        if len(self.buffer) - self.body_at >= self.length and self.answer is not None:
            body = bytes(self.buffer[self.body_at:self.body_at + self.length])
            del self.buffer[:self.body_at + self.length]
            self.body_at = -1
            answer, self.answer = self.answer, None
            answer.set_result((self.status, body))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError("the server closed the connection"))

    def _fail(self, exc: Exception) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(exc)

    async def get(self, request: bytes) -> tuple[int, bytes]:
        assert self.transport is not None and self.answer is None
        self.answer = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.answer


async def hammer(base: str, path: str, queries: Iterator[tuple[str, dict[str, str]]], requests: int,
                 clients: int, follow_cursor: bool) -> dict[str, Any]:
    """`clients` connections share `requests` requests; latency of each, in ms."""
    from urllib.parse import urlencode, urlsplit

    import orjson

    where = urlsplit(base)
    assert where.hostname is not None and where.port is not None

    def request(params: dict[str, str]) -> bytes:
        return (f"GET {path}?{urlencode(params)} HTTP/1.1\r\nHost: {where.netloc}\r\n"
                f"Authorization: Bearer {TOKEN}\r\n\r\n").encode()

    def next_cursor(body: bytes) -> str | None:
        """The page's next_cursor. The server writes it last, so it is found without
        parsing the page (orjson's parse of 50 calls cost the client ~0.2 ms a page, on
        the cores the server uses); parsed when it is not there."""
        at = body.rfind(b'"next_cursor":"', len(body) - 200)
        if at >= 0:
            return body[at + 15:body.index(b'"', at + 15)].decode()
        found: str | None = orjson.loads(body).get("next_cursor")
        return found

    latencies: list[float] = []
    by_shape: dict[str, list[float]] = {}
    statuses: dict[int, int] = {}
    remaining = [requests]

    async def timed(conn: _KeepAlive, shape: str, params: dict[str, str]) -> tuple[int, bytes]:
        started = time.perf_counter()
        status, body = await asyncio.wait_for(conn.get(request(params)), 120)
        latencies.append((time.perf_counter() - started) * 1000)
        by_shape.setdefault(shape, []).append(latencies[-1])
        statuses[status] = statuses.get(status, 0) + 1
        return status, body

    async def worker(conn: _KeepAlive) -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            shape, params = next(queries)
            status, body = await timed(conn, shape, params)
            if follow_cursor and status == 200 and remaining[0] > 0:
                cursor = next_cursor(body)
                if cursor:  # the next page, as a user scrolling would ask for it
                    remaining[0] -= 1
                    await timed(conn, shape + "_page2", {**params, "cursor": cursor})

    loop = asyncio.get_running_loop()
    conns = [(await loop.create_connection(_KeepAlive, where.hostname, where.port))[1]
             for _ in range(clients)]
    try:
        for conn in conns[:10]:  # warm-up: connections, caches, plans
            await conn.get(request(next(queries)[1]))
        started = time.perf_counter()
        await asyncio.gather(*(worker(conn) for conn in conns))
        elapsed = time.perf_counter() - started
    finally:
        for conn in conns:
            assert conn.transport is not None
            conn.transport.close()
    latencies.sort()
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"requests": len(latencies), "p50_ms": round(q[49], 1), "p99_ms": round(q[98], 1),
            "max_ms": round(latencies[-1], 1), "per_s": round(len(latencies) / elapsed),
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "shapes": {k: {"n": len(v), "p50_ms": round(statistics.median(v), 1),
                           "max_ms": round(max(v), 1)} for k, v in sorted(by_shape.items())}}


def cpu_seconds(pids: list[int]) -> float | None:
    """User + system CPU of these processes so far (Linux /proc; None elsewhere)."""
    try:
        total = 0
        for pid in pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
        return total / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None


async def measure(base: str, f: dict[str, Any], args: argparse.Namespace,
                  pids: list[int]) -> dict[str, Any]:
    rng = random.Random(args.seed)
    out: dict[str, Any] = {}
    plan = (("calls", "/api/v1/calls", calls_queries(f, rng), args.requests, True, 50.0),
            ("worklist", "/api/v1/worklist", worklist_queries(f, rng), args.requests, False,
             50.0),
            ("stats_month_hourly", "/api/v1/stats", stats_queries(f, rng),
             args.stats_requests, False, 100.0))
    met = {}
    for name, path, queries, requests, follow, target in plan:
        if name.split("_")[0] not in args.endpoints.split(","):
            continue
        print(f"{name}: {requests} requests, {args.clients} concurrent clients ...", flush=True)
        cpu_before = cpu_seconds(pids)
        figures = await hammer(base, path, queries, requests, args.clients, follow)
        cpu_after = cpu_seconds(pids)
        if cpu_before is not None and cpu_after is not None:
            # The server's own CPU per request: what the load of the machine does not change.
            figures["server_cpu_ms_per_request"] = round(
                (cpu_after - cpu_before) * 1000 / figures["requests"], 2)
        figures["target_p99_ms"] = target
        figures["met"] = figures["p99_ms"] < target and set(figures["statuses"]) == {"200"}
        print(f"{name}: p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms, max "
              f"{figures['max_ms']} ms, {figures['per_s']} req/s, statuses "
              f"{figures['statuses']}, server CPU "
              f"{figures.get('server_cpu_ms_per_request')} ms/request (target p99 < "
              f"{target:g} ms: {'met' if figures['met'] else 'NOT met'})", flush=True)
        for shape, fig in figures["shapes"].items():
            print(f"    {shape:28} n={fig['n']:5} p50 {fig['p50_ms']:8.1f} ms  max "
                  f"{fig['max_ms']:8.1f} ms", flush=True)
        out.update({f"{name}_{k}": v for k, v in figures.items()})
        met[f"{name}_p99_lt_{target:g}ms"] = figures["met"]
    out["targets_met"] = met
    return out


# -- main -------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    from callhub.loops import EVENT_LOOPS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=os.environ.get("CALLHUB_TEST_DATABASE_URL"),
                        help="PostgreSQL URL (default $CALLHUB_TEST_DATABASE_URL)")
    parser.add_argument("--schema", default="bench_api")
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--months", type=int, default=24,
                        help="the calls spread over this many months ending now")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=4000,
                        help="requests per list endpoint")
    parser.add_argument("--stats-requests", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the schema and its data")
    parser.add_argument("--reuse", action="store_true",
                        help="use the data a --keep run left (no load)")
    parser.add_argument("--workers", type=int, default=1,
                        help="server processes; the first deals connections to the others "
                             "in turn, as `callhub run --workers N`")
    parser.add_argument("--endpoints", default="calls,worklist,stats",
                        help="which to measure (comma-separated)")
    parser.add_argument("--event-loop", choices=EVENT_LOOPS, default="auto",
                        help="the server's loop (default auto: uvloop where installed, as "
                             "`callhub run`)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--deal-to", type=int, nargs="*", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--channel", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.database_url:
        parser.error("needs PostgreSQL: --database-url or CALLHUB_TEST_DATABASE_URL")
    if args.serve:
        from callhub import loops
        loops.run(serve(args.database_url, args.schema, args.deal_to, args.channel),
                  args.event_loop)
        return 0

    results: dict[str, Any] = {"cpus": os.cpu_count(), "clients": args.clients}
    if args.reuse:
        print(f"data: reusing schema {args.schema}", flush=True)
    else:
        print(f"data: loading {args.calls} calls over {args.months} months into schema "
              f"{args.schema} ...", flush=True)
        loaded = asyncio.run(load(args.database_url, args.schema, args.calls, args.months,
                                  args.seed))
        print("data: " + ", ".join(f"{k}={v}" for k, v in loaded.items()), flush=True)
        results.update({f"load_{k}": v for k, v in loaded.items()})
    f = asyncio.run(facts(args.database_url, args.schema))
    results["calls_in_db"] = f["count"]
    results["calls_per_month"] = round(f["count"] / max(
        (f["last"] - f["first"]).total_seconds() / (30.44 * 86400), 1))
    results["workers"] = args.workers
    command = [sys.executable, str(Path(__file__).resolve()), "--serve", "--database-url",
               args.database_url, "--schema", args.schema, "--event-loop", args.event_loop]
    from callhub import loops
    results["event_loop"] = loops.resolve(args.event_loop)
    from callhub.api import handoff

    pairs = [handoff.channel_pair() for _ in range(args.workers - 1)]
    mine = [a.fileno() for a, _ in pairs]
    servers: list[subprocess.Popen[Any]] = [subprocess.Popen(
        [*command, "--deal-to", *map(str, mine)], pass_fds=mine, stdout=subprocess.PIPE,
        text=True)]
    for _, theirs in pairs:
        servers.append(subprocess.Popen([*command, "--channel", str(theirs.fileno())],
                                        pass_fds=[theirs.fileno()]))
    for a, b in pairs:
        a.close()
        b.close()
    try:
        assert servers[0].stdout is not None
        port = int(servers[0].stdout.readline())
        results.update(asyncio.run(measure(f"http://127.0.0.1:{port}", f, args,
                                           [s.pid for s in servers])))
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait(10)
        if not args.keep:
            asyncio.run(_drop(args.database_url, args.schema))
    print(json.dumps(results, ensure_ascii=False, default=str))
    return 0


async def _drop(url: str, schema: str) -> None:
    import asyncpg
    conn = await asyncpg.connect(asyncpg_dsn(url))
    await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    await conn.close()


if __name__ == "__main__":
    sys.exit(main())
