"""Ingestion benchmark: a large synthetic AMI stream over loopback TCP, end to end.

    python bench/ingest.py                      # 1,000,000 events (the default)
    python bench/ingest.py --events 200000      # smaller
    python bench/ingest.py --database-url postgresql+asyncpg://...   # also the writer

The stream (bench/synthetic.py: recorded calls renamed and re-timed, merged
by time) is served by bench/amiserver.py in its own process. Each
measurement runs in a fresh process of its own, so its memory figures are
its own and it has a core to itself:

- `panoramisk`: panoramisk 1.4's `AMIProtocol.data_received` on the socket,
  events dispatched to a no-op factory (its bare parse: no correlation);
- `callhub`: callhub's ingestion as PbxIngest does it minus the connection
  book-keeping: socket -> MessageSplitter (with the correlator's event filter: the
  events it does not read are skipped unparsed) -> Correlator ->
  CallhubMetrics.observe_call;
- `pbxingest`: the real thing, `PbxIngest` (AmiConnection: login,
  CoreShowChannels resync, panoramisk request handling) against the same
  server;
- `writer` (with --database-url or CALLHUB_TEST_DATABASE_URL): PbxIngest
  handing records to the CallWriter on PostgreSQL; then the writer alone
  with every record of the stream submitted at once (its capacity).

Each phase proves nothing was lost: as many records as the stream has
calls, each with the outcome its generator expected. Figures are printed as
they come; the last line is one JSON object with all of them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic import END_EVENT, Manifest, bench_pbx, load_manifest, stream

HERE = Path(__file__).resolve().parent
LOGIN = (b"Action: Login\r\nActionID: 1\r\nUsername: bench\r\nSecret: bench\r\n\r\n"
         b"Action: CoreShowChannels\r\nActionID: 2\r\n\r\n")
PHASES = ("panoramisk", "callhub", "pbxingest", "writer")


def rss_mb() -> float:
    """Resident set size of this process, from /proc (Linux)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class RecordCheck:
    """Counts records and compares each call's outcome with what was generated."""

    def __init__(self, manifest: Manifest) -> None:
        self.expected = manifest.outcomes
        self.records = 0
        self.wrong = 0
        self.unknown = 0
        self.incomplete = 0
        self.seen: set[str] = set()
        self.duplicates = 0

    def __call__(self, record: Any) -> None:
        self.records += 1
        want = self.expected.get(record.linkedid)
        if want is None:
            self.unknown += 1
        elif want != record.outcome:
            self.wrong += 1
        if record.linkedid in self.seen:
            self.duplicates += 1
        self.seen.add(record.linkedid)
        self.incomplete += bool(record.incomplete)

    def figures(self, prefix: str) -> dict[str, Any]:
        return {f"{prefix}_records": self.records,
                f"{prefix}_lost_calls": len(set(self.expected) - self.seen),
                f"{prefix}_wrong_outcome": self.wrong,
                f"{prefix}_duplicate_records": self.duplicates,
                f"{prefix}_incomplete": self.incomplete}


class Sampler:
    """RSS at the start, when half the events are in, and at the end."""

    def __init__(self, half: int) -> None:
        self.half = half
        self.start = rss_mb()
        self.mid: float | None = None

    def maybe_mid(self, events: int) -> None:
        if self.mid is None and events >= self.half:
            self.mid = rss_mb()

    def figures(self, prefix: str) -> dict[str, Any]:
        end = rss_mb()
        mid = self.mid if self.mid is not None else end
        return {f"{prefix}_rss_start_mb": round(self.start, 1),
                f"{prefix}_rss_growth_mb": round(end - self.start, 1),
                f"{prefix}_rss_growth_second_half_mb": round(end - mid, 1)}


# -- phases (each runs in its own process) ------------------------------------------------

async def phase_panoramisk(port: int, manifest: Manifest) -> dict[str, Any]:
    from panoramisk.ami_protocol import AMIProtocol

    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    # Events dispatched: the stream's, plus FullyBooted, CoreShowChannelsComplete, BenchEnd.
    target = manifest.events + 3
    sampler = Sampler(manifest.events // 2)

    class Factory:
        """What AMIProtocol needs of its Manager; dispatch does nothing but count."""

        def __init__(self) -> None:
            self.events = 0
            self.forgetable_actions: tuple[str, ...] = ()
            self.awaiting_actions: list[Any] = []

        def dispatch(self, message: Any) -> None:
            self.events += 1
            if self.events == target:
                done.set_result(None)
            elif self.events == target // 2:
                sampler.maybe_mid(self.events)

        def connection_lost(self, exc: Any) -> None:
            if not done.done():
                done.set_exception(ConnectionError("server closed the connection"))

    factory = Factory()

    class Baseline(AMIProtocol):  # type: ignore[misc]
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            self.factory = factory
            self.encoding = "utf-8"
            transport.write(LOGIN)  # type: ignore[attr-defined]

    started, cpu = time.perf_counter(), time.process_time()
    transport, _ = await loop.create_connection(Baseline, "127.0.0.1", port)
    await done
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    transport.close()
    return {"panoramisk_seconds": round(elapsed, 2),
            "panoramisk_events": factory.events - 3,
            "panoramisk_events_per_s": round(manifest.events / elapsed),
            "panoramisk_events_per_cpu_s": round(manifest.events / cpu),
            **sampler.figures("panoramisk")}


def _hot_path() -> str:
    """compiled or python: how callhub's parser and correlator run in the callhub phases
    (callhub/ami/native.py; CALLHUB_PURE_PYTHON=1 compares the two)."""
    from callhub.ami import native

    return native.CHOSEN.runs


async def phase_callhub(port: int, manifest: Manifest) -> dict[str, Any]:
    from callhub.ami.correlator import Correlator
    from callhub.ami.parser import EventFilter, MessageSplitter
    from callhub.lifecycle import settle_heap
    from callhub.metrics.collectors import CallhubMetrics

    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    pbx = bench_pbx()
    correlator = Correlator(pbx)
    metrics = CallhubMetrics(agents=pbx.agents, pbxs=[pbx.name])
    wanted = correlator.event_filter() | EventFilter(frozenset({END_EVENT}))
    splitter = MessageSplitter(wanted=wanted)
    check = RecordCheck(manifest)
    sampler = Sampler(manifest.events // 2)
    settle_heap()  # as `callhub run` does once started (panoramisk's phase runs bare)

    class Pipeline(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            transport.write(LOGIN)  # type: ignore[attr-defined]

        def data_received(self, data: bytes) -> None:
            feed = correlator.feed
            for message in splitter.feed(data):
                for record in feed(message):
                    metrics.observe_call(record)
                    check(record)
                if message.get("Event") == END_EVENT:
                    done.set_result(None)
            sampler.maybe_mid(splitter.messages + splitter.skipped)

        def connection_lost(self, exc: Exception | None) -> None:
            if not done.done():
                done.set_exception(ConnectionError("server closed the connection"))

    started, cpu = time.perf_counter(), time.process_time()
    transport, _ = await loop.create_connection(Pipeline, "127.0.0.1", port)
    await done
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    transport.close()
    return {"callhub_seconds": round(elapsed, 2),
            "callhub_events": splitter.messages + splitter.skipped - 5,  # login, resync, BenchEnd
            "callhub_events_per_s": round(manifest.events / elapsed),
            "callhub_events_per_cpu_s": round(manifest.events / cpu),
            "callhub_malformed": splitter.malformed,
            "callhub_correlator_errors": correlator.errors,
            "callhub_open_calls_left": correlator.active_calls,
            **check.figures("callhub"), **sampler.figures("callhub")}


def _quiet_logs() -> None:
    from callhub.logs import configure_logging
    configure_logging("warning", stream=sys.stderr, json=True)


async def _ingest_run(port: int, manifest: Manifest, prefix: str,
                      on_record: Callable[[Any], None]) -> tuple[dict[str, Any], Any]:
    """PbxIngest against the server until BenchEnd; its figures and the ingest."""
    from callhub.ami.ingest import PbxIngest
    from callhub.ami.parser import EventFilter
    from callhub.lifecycle import settle_heap
    from callhub.metrics.collectors import CallhubMetrics
    from callhub.routing.busy import BusyTracker

    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    pbx = bench_pbx(port=port, username="bench", secret="bench")
    metrics = CallhubMetrics(agents=pbx.agents, pbxs=[pbx.name])
    check = RecordCheck(manifest)
    sampler = Sampler(manifest.events // 2)

    def record_to(record: Any) -> None:
        metrics.observe_call(record)
        check(record)
        on_record(record)

    ingest = PbxIngest(pbx, record_to, metrics=metrics, ping_interval=3600.0,
                       expire_interval=3600.0)

    def listener(event: dict[str, str]) -> None:
        if event.get("Event") == END_EVENT and not done.done():
            done.set_result(None)
        else:
            sampler.maybe_mid(ingest.events)

    # As in `callhub run`: routing's busy tracker reads device states; the bench's own
    # listener reads its end marker and the calls' first events (parsed anyway).
    busy = BusyTracker()
    ingest.add_listener(busy.feed, BusyTracker.EVENTS)
    ingest.add_listener(listener, EventFilter(frozenset({END_EVENT, "Newchannel"})))
    settle_heap()  # as `callhub run` does once started (panoramisk's phase runs bare)
    started, cpu = time.perf_counter(), time.process_time()
    await ingest.start()
    await done
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    await ingest.stop()
    figures = {f"{prefix}_seconds": round(elapsed, 2),
               f"{prefix}_events": ingest.events - 1,
               f"{prefix}_events_per_s": round(manifest.events / elapsed),
               f"{prefix}_events_per_cpu_s": round(manifest.events / cpu),
               f"{prefix}_malformed": ingest.malformed,
               f"{prefix}_open_calls_left": ingest.correlator.active_calls,
               **check.figures(prefix), **sampler.figures(prefix)}
    return figures, ingest


async def phase_pbxingest(port: int, manifest: Manifest) -> dict[str, Any]:
    _quiet_logs()
    figures, _ = await _ingest_run(port, manifest, "pbxingest", lambda record: None)
    return figures


async def _empty(db: Any) -> None:
    import sqlalchemy as sa
    async with db.begin() as conn:
        await conn.execute(sa.text("TRUNCATE calls, agents, worklist_entries CASCADE"))


class BackendCpu:
    """CPU seconds of the PostgreSQL backends an engine opened (on this host, from /proc;
    None when PostgreSQL runs elsewhere). Backends that ended count no more."""

    def __init__(self, db: Any) -> None:
        self.pids: set[int] = set()
        self.remote = False  # a backend not on this host: no figure
        self.watch(db)

    def watch(self, db: Any) -> None:
        """Count the backends `db`'s engine opens too (the writer's own)."""
        import sqlalchemy as sa
        sa.event.listen(db.engine.sync_engine, "connect", self._connected)

    def _connected(self, dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("SELECT pg_backend_pid()")
        pid = int(cursor.fetchone()[0])
        cursor.close()
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                local = b"postgres" in fh.read()
        except OSError:
            local = False
        if not local:
            self.remote = True
        self.pids.add(pid)

    def seconds(self) -> float | None:
        if self.remote:
            return None
        total = 0.0
        for pid in self.pids:
            try:
                with open(f"/proc/{pid}/stat") as fh:
                    stat = fh.read().rsplit(")", 1)[1].split()
            except OSError:  # ended
                continue
            total += (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
        return total


async def _capacity(db: Any, settings: Any, records: list[Any], backends: BackendCpu, *,
                    bulk: bool, batch_size: int | None) -> dict[str, Any]:
    """All `records` submitted at once to a CallWriter (its default batch size unless
    given) on empty tables: wall time, this process's CPU, the PostgreSQL backends' CPU.

    The writer is warmed first, as a running daemon's is: its connection opened and its
    statements prepared by a batch of other calls, then the tables emptied."""
    from dataclasses import replace

    from callhub.store import bulk as bulk_path
    from callhub.store.writer import CallWriter

    bulk_path.ENABLED = bulk
    try:
        writer = CallWriter(db, settings, max_buffer=len(records) + 1,
                            **({} if batch_size is None else {"batch_size": batch_size}))
        backends.watch(writer.writes)
        await writer.start()
        for n, record in enumerate(records[:2 * bulk_path.COPY_FROM]):
            writer.submit(replace(record, linkedid=f"warm-{n}", agent=None, agent_name=None))
        async with asyncio.timeout(60):
            await writer.wait_written()
        await _empty(db)
        postgres = backends.seconds()
        started, cpu = time.perf_counter(), time.process_time()
        for record in records:
            writer.submit(record)
        async with asyncio.timeout(600):
            await writer.wait_written()
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        after = backends.seconds()
        postgres = None if postgres is None or after is None else after - postgres
        await writer.stop()
    finally:
        bulk_path.ENABLED = True
    return {"seconds": elapsed, "calls_per_s": round(len(records) / elapsed),
            "cpu_s": round(cpu, 2),
            "postgres_cpu_s": None if postgres is None else round(postgres, 2),
            "calls_per_cpu_s": None if postgres is None
            else round(len(records) / (cpu + postgres)),
            "batch_size": writer.batch_size}


def _capacity_figures(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians of each path's runs, and the COPY path's ratio to the baseline."""
    out: dict[str, Any] = {}
    for name, prefix in (("copy", "writer_capacity"), ("executemany", "writer_baseline")):
        these = runs[name]
        out[f"{prefix}_calls_per_s"] = round(statistics.median(r["calls_per_s"] for r in these))
        out[f"{prefix}_calls_per_s_runs"] = [r["calls_per_s"] for r in these]
        out[f"{prefix}_cpu_s"] = statistics.median(r["cpu_s"] for r in these)
        per_cpu = [r["calls_per_cpu_s"] for r in these if r["calls_per_cpu_s"] is not None]
        if per_cpu:
            out[f"{prefix}_postgres_cpu_s"] = statistics.median(
                r["postgres_cpu_s"] for r in these)
            out[f"{prefix}_calls_per_cpu_s"] = round(statistics.median(per_cpu))
    out["writer_capacity_batch_size"] = runs["copy"][-1]["batch_size"]
    out["writer_capacity_ratio"] = round(out["writer_capacity_calls_per_s"]
                                         / out["writer_baseline_calls_per_s"], 2)
    if "writer_capacity_calls_per_cpu_s" in out and "writer_baseline_calls_per_cpu_s" in out:
        out["writer_capacity_cpu_ratio"] = round(out["writer_capacity_calls_per_cpu_s"]
                                                 / out["writer_baseline_calls_per_cpu_s"], 2)
    return out


async def phase_writer(port: int, manifest: Manifest, database_url: str,
                       rounds: int = 3, live: bool = True,
                       batch_size: int | None = None) -> dict[str, Any]:
    """PbxIngest -> CallWriter on PostgreSQL, then the writer alone at full speed."""
    import sqlalchemy as sa

    from callhub.config import Settings
    from callhub.store import bulk as bulk_path
    from callhub.store.db import Database
    from callhub.store.migrate import upgrade
    from callhub.store.writer import CallWriter

    _quiet_logs()
    url = database_url.replace("postgresql://", "postgresql+asyncpg://", 1)
    schema = f"bench_{os.getpid()}"
    admin = Database.connect(url)
    async with admin.begin() as conn:
        await conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    db = Database.connect(url, schema=schema)
    backends = BackendCpu(db)
    spool_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"callhub-bench-spool-{os.getpid()}"
    figures: dict[str, Any] = {}
    try:
        await upgrade(db)
        settings = Settings(pbxs=(bench_pbx(),), database_url=url, spool_dir=str(spool_dir))
        from callhub.lifecycle import settle_heap

        settle_heap()  # as `callhub run` does once started (the calls come after)

        submitted: dict[str, float] = {}
        lags: list[float] = []

        def stored(batch: Any, _saved: Any) -> None:
            now = time.perf_counter()
            lags.extend(now - submitted[r.linkedid] for r in batch)

        def submit(record: Any) -> None:
            submitted[record.linkedid] = time.perf_counter()
            writer.submit(record)

        # 1. live: calls stored while the stream is read
        if live:
            writer = CallWriter(db, settings)
            writer.listeners.append(stored)
            await writer.start()

            started = time.perf_counter()
            ingest_figures, _ = await _ingest_run(port, manifest, "writer_ingest", submit)
            async with asyncio.timeout(600):
                await writer.wait_written()
            elapsed = time.perf_counter() - started
            await writer.stop()
            lags.sort()
            async with db.connection() as conn:
                rows = (await conn.execute(sa.text("SELECT count(*), count(DISTINCT linkedid) "
                                                   "FROM calls"))).one()
            figures.update(ingest_figures)
            figures.update({
                "writer_live_calls_per_s": round(writer.written / elapsed),
                "writer_lag_p50_ms": round(_pct(lags, 50) * 1000, 1),
                "writer_lag_p99_ms": round(_pct(lags, 99) * 1000, 1),
                "writer_lag_max_ms": round(lags[-1] * 1000, 1) if lags else None,
                "writer_rows": rows[0], "writer_distinct_rows": rows[1],
                "writer_rows_missing": manifest.calls - rows[1],
            })
            print(f"  live: {writer.written} calls stored in {elapsed:.1f} s, lag p50 "
                  f"{figures['writer_lag_p50_ms']} ms p99 {figures['writer_lag_p99_ms']} ms",
                  flush=True)

        # 2. capacity: the same records again into an empty table, all submitted at once;
        # the COPY path and, as the baseline, the executemany path, alternating
        # (by turns, so that a busy neighbour on the machine slows both alike)
        records = _records_of(manifest)
        capacity: dict[str, list[dict[str, Any]]] = {"executemany": [], "copy": []}
        for name in [*capacity] * rounds:
            # The baseline as it was: the executemany path in batches of 500.
            result = await _capacity(db, settings, records, backends, bulk=name == "copy",
                                     batch_size=batch_size if name == "copy" else 500)
            capacity[name].append(result)
            print(f"  capacity ({name}): {len(records)} calls submitted at once, stored in "
                  f"{result['seconds']:.2f} s: {result['calls_per_s']} calls/s; CPU "
                  f"{result['cpu_s']:.2f} s here + {result['postgres_cpu_s']} s PostgreSQL",
                  flush=True)
        figures.update(_capacity_figures(capacity))

        # 3. lag at a steady rate below capacity: a call's end to its row committed
        # (both paths, the baseline first)
        rate = 100.0
        for name, prefix in (("executemany", "writer_baseline_steady"),
                             ("copy", "writer_steady")):
            await _empty(db)
            bulk_path.ENABLED = name == "copy"
            try:
                writer = CallWriter(db, settings)
                submitted.clear()
                lags.clear()
                writer.listeners.append(stored)
                await writer.start()
                started = time.perf_counter()
                for n, record in enumerate(records[:1000]):
                    await asyncio.sleep(max(0.0, started + n / rate - time.perf_counter()))
                    submit(record)
                async with asyncio.timeout(600):
                    await writer.wait_written()
                await writer.stop()
            finally:
                bulk_path.ENABLED = True
            lags.sort()
            figures.update({f"{prefix}_lag_p50_ms": round(_pct(lags, 50) * 1000, 1),
                            f"{prefix}_lag_p99_ms": round(_pct(lags, 99) * 1000, 1)})
            print(f"  steady {rate:g} calls/s ({name}): lag p50 "
                  f"{figures[f'{prefix}_lag_p50_ms']} ms, p99 {figures[f'{prefix}_lag_p99_ms']} ms",
                  flush=True)
        figures["writer_steady_rate_calls_per_s"] = rate
    finally:
        await db.close()
        async with admin.begin() as conn:
            await conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        await admin.close()
        with contextlib.suppress(OSError):
            for child in spool_dir.iterdir():
                child.unlink()
            spool_dir.rmdir()
    return figures


def _records_of(manifest: Manifest) -> list[Any]:
    from callhub.ami.parser import iter_file_messages
    from callhub.ami.replay import replay_messages
    return list(replay_messages(iter_file_messages(manifest.path), bench_pbx()))


def _pct(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(pct) - 1]


def _resolved_loop(choice: str) -> str:
    from callhub import loops
    return loops.resolve(choice)


def run_phase(args: argparse.Namespace) -> None:
    manifest = load_manifest(Path(args.stream))
    if manifest is None:
        raise SystemExit(f"no valid stream at {args.stream}")
    from callhub import loops
    if args.phase == "panoramisk":
        figures = loops.run(phase_panoramisk(args.port, manifest), args.event_loop)
    elif args.phase == "callhub":
        figures = loops.run(phase_callhub(args.port, manifest), args.event_loop)
    elif args.phase == "pbxingest":
        figures = loops.run(phase_pbxingest(args.port, manifest), args.event_loop)
    else:
        figures = loops.run(phase_writer(args.port, manifest, args.database_url,
                                         args.rounds, not args.no_live,
                                         args.writer_batch_size), args.event_loop)
    print(json.dumps(figures), flush=True)


# -- the orchestrating process ---------------------------------------------------------------

def _child(phase: str, port: int, manifest: Manifest, args: argparse.Namespace
           ) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--phase", phase, "--port", str(port),
           "--stream", str(manifest.path)]
    if args.database_url:
        cmd += ["--database-url", args.database_url]
    cmd += ["--rounds", str(args.rounds)] + (["--no-live"] if args.no_live else [])
    cmd += ["--event-loop", args.event_loop]
    if args.writer_batch_size:
        cmd += ["--writer-batch-size", str(args.writer_batch_size)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False,
                          timeout=args.timeout)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    for line in lines[:-1]:
        print(line, flush=True)
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"phase {phase} failed (exit {proc.returncode})")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _combine(phase: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One phase's figures over its runs: median rate, worst memory and losses."""
    out = dict(runs[-1])
    if len(runs) > 1:
        for key in runs[0]:
            values = [r[key] for r in runs]
            if key.endswith(("_events_per_s", "_events_per_cpu_s")):
                out[key] = round(statistics.median(values))
                out[key + "_runs"] = values
            elif key.endswith("_seconds"):
                out[key] = statistics.median(values)
            elif key.endswith(("_mb", "_lost_calls", "_wrong_outcome", "_duplicate_records",
                               "_malformed", "_errors", "_incomplete", "_left")):
                out[key] = max(values)
    return out


def main(argv: list[str] | None = None) -> int:
    from callhub.loops import EVENT_LOOPS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000,
                        help="events in the synthetic stream (default 1,000,000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rate", type=float, default=30.0,
                        help="calls per minute of PBX time (overlap grows with it)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="where the generated stream is kept and reused "
                             "(default $CALLHUB_BENCH_CACHE or $TMPDIR/callhub-bench)")
    parser.add_argument("--database-url",
                        default=os.environ.get("CALLHUB_TEST_DATABASE_URL"),
                        help="PostgreSQL URL for the writer phase "
                             "(default $CALLHUB_TEST_DATABASE_URL; none: phase skipped)")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help=f"comma-separated subset of {','.join(PHASES)}")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating panoramisk/callhub runs; medians are reported")
    parser.add_argument("--no-live", action="store_true",
                        help="writer phase: skip the run behind PbxIngest (only the capacity "
                             "and the steady lag, ~1 min)")
    parser.add_argument("--writer-batch-size", type=int, default=None,
                        help="writer phase: the CallWriter's batch_size for the capacity runs "
                             "(default: its default)")
    parser.add_argument("--event-loop", choices=EVENT_LOOPS, default="auto",
                        help="every phase's loop, panoramisk's too (default auto: uvloop where "
                             "installed, as `callhub run`)")
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--stream", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase:
        run_phase(args)
        return 0

    phases = [p for p in args.phases.split(",") if p]
    if "writer" in phases and not args.database_url:
        print("writer: skipped (no --database-url and no CALLHUB_TEST_DATABASE_URL)")
        phases.remove("writer")
    manifest = stream(args.events, seed=args.seed, rate_per_minute=args.rate,
                      cache_dir=args.cache_dir)
    results: dict[str, Any] = {
        "events": manifest.events, "calls": manifest.calls,
        "stream_mb": round(manifest.bytes / 1e6, 1),
        "expected_outcomes": dict(manifest.expected_outcomes), "cpus": os.cpu_count(),
        "python": sys.version.split()[0], "event_loop": _resolved_loop(args.event_loop),
        "ami_hot_path": _hot_path()}
    print(f"stream: kinds {manifest.kinds}; expected outcomes {results['expected_outcomes']}")
    server = subprocess.Popen([sys.executable, str(HERE / "amiserver.py"), str(manifest.path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        # The parse measurements (and PbxIngest) alternate, round after round, so that a
        # busy neighbour on the machine slows them alike; medians are reported.
        paired = [p for p in ("panoramisk", "callhub", "pbxingest") if p in phases]
        runs: dict[str, list[dict[str, Any]]] = {}
        order = paired * args.rounds + [p for p in phases if p not in paired]
        for phase in order:
            print(f"{phase}: running ...", flush=True)
            figures = _child(phase, port, manifest, args)
            runs.setdefault(phase, []).append(figures)
            print(f"{phase}: " + ", ".join(f"{k}={v}" for k, v in figures.items()), flush=True)
    finally:
        server.terminate()
        server.wait(10)
    for phase, phase_runs in runs.items():
        results.update(_combine(phase, phase_runs))
    if "panoramisk_events_per_s" in results and "callhub_events_per_s" in results:
        ratios = [c["callhub_events_per_s"] / p["panoramisk_events_per_s"]
                  for p, c in zip(runs["panoramisk"], runs["callhub"], strict=True)]
        cpu_ratios = [c["callhub_events_per_cpu_s"] / p["panoramisk_events_per_cpu_s"]
                      for p, c in zip(runs["panoramisk"], runs["callhub"], strict=True)]
        results["ratio"] = round(statistics.median(ratios), 2)
        results["ratio_runs"] = [round(r, 2) for r in ratios]
        results["cpu_ratio"] = round(statistics.median(cpu_ratios), 2)
        results["cpu_ratio_runs"] = [round(r, 2) for r in cpu_ratios]
        print(f"callhub {results['callhub_events_per_s']} events/s vs panoramisk bare parse "
              f"{results['panoramisk_events_per_s']} events/s (medians of {args.rounds}): "
              f"ratio {results['ratio']}x, per round {results['ratio_runs']} (target >= 2.0)")
        print(f"per CPU second (what neighbours on the machine do not change): callhub "
              f"{results['callhub_events_per_cpu_s']}, panoramisk "
              f"{results['panoramisk_events_per_cpu_s']}: ratio {results['cpu_ratio']}x, "
              f"per round {results['cpu_ratio_runs']}")
    if "pbxingest" in runs and "panoramisk" in runs:
        pbx_ratios = [i["pbxingest_events_per_s"] / p["panoramisk_events_per_s"]
                      for p, i in zip(runs["panoramisk"], runs["pbxingest"], strict=True)]
        results["pbxingest_ratio"] = round(statistics.median(pbx_ratios), 2)
        results["pbxingest_ratio_runs"] = [round(r, 2) for r in pbx_ratios]
        print(f"PbxIngest {results['pbxingest_events_per_s']} events/s: ratio "
              f"{results['pbxingest_ratio']}x, per round {results['pbxingest_ratio_runs']}")
    if "callhub_rss_growth_mb" in results:
        results["rss_growth_mb"] = results["callhub_rss_growth_mb"]
        print(f"callhub RSS growth {results['rss_growth_mb']} MB (target < 50)")
    targets: dict[str, bool] = {}
    if "ratio" in results:
        targets["ratio_ge_2"] = results["ratio"] >= 2.0
    if "pbxingest_ratio" in results:
        targets["pbxingest_ratio_ge_2"] = results["pbxingest_ratio"] >= 2.0
    if "rss_growth_mb" in results:
        targets["rss_growth_lt_50mb"] = results["rss_growth_mb"] < 50
    for phase in ("callhub", "pbxingest", "writer_ingest"):
        if f"{phase}_records" in results:
            targets[f"{phase}_nothing_lost"] = (
                results[f"{phase}_records"] == manifest.calls
                and results[f"{phase}_lost_calls"] == 0
                and results[f"{phase}_duplicate_records"] == 0)
    if "writer_capacity_calls_per_s" in results:
        print(f"writer {results['writer_capacity_calls_per_s']} calls/s (COPY and merge), "
              f"baseline {results['writer_baseline_calls_per_s']} (executemany), ratio "
              f"{results['writer_capacity_ratio']}x (medians of {args.rounds}); per CPU "
              f"second (writer + PostgreSQL): {results.get('writer_capacity_calls_per_cpu_s')} vs "
              f"{results.get('writer_baseline_calls_per_cpu_s')}; steady "
              f"{results['writer_steady_rate_calls_per_s']:g} calls/s lag p99 "
              f"{results['writer_steady_lag_p99_ms']} ms, baseline "
              f"{results['writer_baseline_steady_lag_p99_ms']} ms (targets >= 20000, < 20 ms)")
        targets["writer_ge_20000_calls_per_s"] = results["writer_capacity_calls_per_s"] >= 20000
        targets["writer_steady_lag_p99_lt_20ms"] = results["writer_steady_lag_p99_ms"] < 20
    if "writer_rows" in results:
        targets["writer_rows_all_there"] = results["writer_rows_missing"] == 0 and \
            results["writer_rows"] == results["writer_distinct_rows"]
    results["targets_met"] = targets
    print("targets: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in targets.items()))
    print(json.dumps(results, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
