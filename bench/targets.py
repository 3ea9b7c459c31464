"""Every target of issue 15 in one command: the benches in turns, and how often each met.

The figures of one bench run depend on the minute (this VM's 2 cores are
shared with the bench's own clients, servers and PostgreSQL), so a target is
judged by how many of several runs met it, each bench taking its turn:
`route.py` (FastAGI, file and shared), the writer phases of `ingest.py`,
`api.py` and `fleet.py`, `--rounds` times, then the issue's "done when"
command, `ingest.py --events 300000 --rounds 3`, once. Each bench runs as a
process of its own with its default arguments (the issue's), as its own
command line would, and its last-line JSON is read; a bench that fails
counts as a run that met nothing.

`api.py` loads its 1,000,000 calls once (~1 min) into a schema of this run
and later rounds reuse them (`--reuse`); its last run drops the schema
unless `--keep-api`.
PostgreSQL comes from `--database-url` or `CALLHUB_TEST_DATABASE_URL`; its
user needs CREATEDB for the fleet's database.

Prints each run's figures as it goes; the last line is one JSON object:
`targets` (each: runs, met, figures in run order) and `all_met`.

    python bench/targets.py [--rounds 3] [--skip fleet,...]   (~4 min a round)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent


@dataclass(frozen=True, slots=True)
class Bench:
    """One bench command, and for each of its targets the figure that judges it."""

    name: str
    args: tuple[str, ...]
    figures: dict[str, str]  # target name in its targets_met -> its figure's key


ROUTE = Bench("route", ("route.py", "--modes", "file,shared"), {
    "file_p99_lt_5ms": "file_concurrent_p99_ms",
    "shared_p99_lt_5ms": "shared_concurrent_p99_ms"})
WRITER = Bench("writer", ("ingest.py", "--phases", "writer", "--no-live", "--rounds", "3"), {
    "writer_ge_20000_calls_per_s": "writer_capacity_calls_per_s",
    "writer_steady_lag_p99_lt_20ms": "writer_steady_lag_p99_ms"})
API = Bench("api", ("api.py",), {
    "calls_p99_lt_50ms": "calls_p99_ms",
    "worklist_p99_lt_50ms": "worklist_p99_ms",
    "stats_month_hourly_p99_lt_100ms": "stats_month_hourly_p99_ms"})
FLEET = Bench("fleet", ("fleet.py",), {
    "lag_p99_lt_1s": "lag_p99_ms",
    "nothing_lost_or_twice": "calls_stored",
    "no_ami_session_dropped": "callhub_ami_drops",
    "offered_rate_kept": "events_per_s_achieved"})
INGEST = Bench("ingest", ("ingest.py", "--events", "300000", "--rounds", "3"), {
    "ratio_ge_2": "ratio",
    "pbxingest_ratio_ge_2": "pbxingest_ratio",
    "rss_growth_lt_50mb": "rss_growth_mb"})
IN_TURNS = (ROUTE, WRITER, API, FLEET)


@dataclass(slots=True)
class Tally:
    """A target's runs so far: met or not, and the figure of each."""

    runs: int = 0
    met: int = 0
    figures: list[Any] = field(default_factory=list)


def run_bench(bench: Bench, extra: list[str], env: dict[str, str],
              timeout: float, save: Path | None) -> dict[str, Any] | None:
    """Run one bench; its last-line JSON, or None (said why) when it failed.

    With `save`, the run's whole output goes to a file there, to read what a
    missed figure's run said besides the figure.
    """
    command = [sys.executable, str(BENCH / bench.args[0]), *bench.args[1:], *extra]
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop(proc)
            print(f"  {bench.name}: no answer within {timeout:.0f} s", flush=True)
            return None
        except BaseException:  # Ctrl-C or SIGTERM here: the bench cleans up first
            stop(proc)
            raise
    if save is not None:
        stamp = time.strftime("%H%M%S")
        (save / f"{stamp}-{bench.name}.out").write_text(
            f"$ {' '.join(command)}\n{stdout}\n--- stderr\n{stderr}")
    lines = stdout.strip().splitlines()
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (stderr.strip().splitlines() or ["(no output)"])[-1]
        print(f"  {bench.name}: failed (exit {proc.returncode}): {tail}", flush=True)
        return None
    return result


def stop(proc: subprocess.Popen[str], grace: float = 60) -> None:
    """SIGTERM, so that the bench stops its servers and drops its database; SIGKILL
    if it has not ended within `grace` seconds."""
    proc.terminate()
    try:
        proc.communicate(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


def record(bench: Bench, result: dict[str, Any] | None, tallies: dict[str, Tally]) -> None:
    """Count each of the bench's targets (a failed run met none) and print the run."""
    met = (result or {}).get("targets_met", {})
    said = []
    for target, key in bench.figures.items():
        tally = tallies.setdefault(target, Tally())
        tally.runs += 1
        figure = (result or {}).get(key)
        tally.figures.append(figure)
        ok = bool(met.get(target, False))
        tally.met += ok
        said.append(f"{key} {figure} ({'met' if ok else 'NOT met'})")
    print(f"  {bench.name}: " + "; ".join(said), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of route, writer, api and fleet, in turns")
    parser.add_argument("--skip", default="",
                        help="comma-separated benches to leave out: "
                             + ", ".join(b.name for b in (*IN_TURNS, INGEST)))
    parser.add_argument("--database-url", default=os.environ.get("CALLHUB_TEST_DATABASE_URL"),
                        help="PostgreSQL (default $CALLHUB_TEST_DATABASE_URL)")
    parser.add_argument("--keep-api", action="store_true",
                        help="keep api.py's schema and its 1,000,000 calls at the end")
    parser.add_argument("--timeout", type=float, default=900,
                        help="seconds one bench run may take")
    parser.add_argument("--save", type=Path, metavar="DIR",
                        help="write each run's whole output to a file in DIR")
    args = parser.parse_args()
    # SIGTERM stops the bench running now as Ctrl-C does (run_bench), then this.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    skip = {name for name in args.skip.split(",") if name}
    unknown = skip - {b.name for b in (*IN_TURNS, INGEST)}
    if unknown:
        parser.error(f"--skip: no bench named {', '.join(sorted(unknown))}")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if not args.database_url and {"route", "writer", "api", "fleet"} - skip:
        parser.error("route (shared), writer, api and fleet need PostgreSQL: give "
                     "--database-url or set CALLHUB_TEST_DATABASE_URL (or --skip them)")
    if args.save is not None:
        args.save.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if args.database_url:
        env["CALLHUB_TEST_DATABASE_URL"] = args.database_url
    schema = f"bench_targets_{uuid.uuid4().hex[:8]}"
    tallies: dict[str, Tally] = {}
    started = time.monotonic()
    loaded = False
    for n in range(1, args.rounds + 1):
        print(f"round {n} of {args.rounds} ({os.getloadavg()[0]:.2f} load)", flush=True)
        for bench in IN_TURNS:
            if bench.name in skip:
                continue
            extra: list[str] = []
            if bench is API:
                keep = n < args.rounds or args.keep_api
                extra = ["--schema", schema, *(["--keep"] if keep else []),
                         *(["--reuse"] if loaded else [])]
            result = run_bench(bench, extra, env, args.timeout, args.save)
            loaded = loaded or (bench is API and result is not None)
            record(bench, result, tallies)
    if INGEST.name not in skip:
        print("the issue's done-when: ingest.py --events 300000 --rounds 3", flush=True)
        record(INGEST, run_bench(INGEST, [], env, args.timeout, args.save), tallies)
    print(f"{time.monotonic() - started:.0f} s; met in how many runs:")
    for target, tally in tallies.items():
        print(f"  {target}: {tally.met} of {tally.runs}  {tally.figures}")
    all_met = all(t.met == t.runs for t in tallies.values())
    print(json.dumps({"rounds": args.rounds, "cpus": os.cpu_count(),
                      "targets": {k: {"runs": t.runs, "met": t.met, "figures": t.figures}
                                  for k, t in tallies.items()},
                      "all_met": all_met}))
    return 0 if all_met else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("targets: stopped; the bench that was running stopped first", file=sys.stderr)
        sys.exit(130)
