"""`callhub simulate`: an Asterisk-like AMI server to point callhub (or anything) at.

With `--agi HOST:PORT` it also plays the dialplan's part for inbound calls: each
call asks callhub's FastAGI as Asterisk would (callhub.sim.routed_calls), then the
hunt it asked for is emitted as AMI events.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import structlog

from callhub.argtypes import above_zero
from callhub.config import ConfigError, parse_listen
from callhub.lifecycle import stopped_by_signals
from callhub.logs import configure_logging
from callhub.sim.ami_server import AmiSimulator
from callhub.sim.calls import CallFactory
from callhub.sim.hunt import Behaviour
from callhub.sim.mix import DEFAULT_MIX, DEMO_DIDS, DEMO_ENDPOINTS
from callhub.sim.recording import load_trace
from callhub.sim.routed_calls import AgiCallSimulator
from callhub.sim.templates import SCENARIOS

log = structlog.get_logger(__name__)

EPILOG = """\
examples:
  callhub simulate --mix --rate 12
      steady synthetic traffic, 12 calls a minute, on 127.0.0.1:5038
  callhub simulate --listen 127.0.0.1:5039 --trace callhub/sim/traces/06_*.ami --speed 10
      replay a recorded trace ten times faster once a client has logged in
  callhub simulate --mix --rate 30 --pjsip --kinds answered=3,abandoned=1,busy=1

inbound calls routed by callhub's rota (AGI mode), beside a running callhub:
  callhub --config callhub.toml rota load rota.toml
  callhub --config callhub.toml run      # [[pbx]] host 127.0.0.1, port 5038,
                                         # secret "callhub-secret"; FastAGI on :4573
  callhub simulate --agi 127.0.0.1:4573 --agi-rate 6 --dids 4008001004,4008001005
      once callhub has logged in to AMI, every call asks callhub's FastAGI as the
      dialplan in deploy/asterisk/extensions.conf does, then rings the agents it
      returned, each for its own ring timeout, then the fallback; a phone answers
      3 times in 4 after 2-12 s, else rings out. Without an answer from callhub
      it dials --agi-default, as the dialplan does.

log in with the --username/--secret given here (defaults: callhub / callhub-secret).
scenario kinds: """ + ", ".join(SCENARIOS)


# The highest --rate / --agi-rate, as `run --demo-rate`'s: the calls in flight at once grow
# with the rate, and a higher one queued more than memory holds ("inf" started every call
# at once in a loop that never yielded to a stop; "nan" was a traceback).
MAX_RATE = 60_000


def _rate(value: str) -> float:
    """Calls a minute, `N` or `N/min`."""
    return above_zero(MAX_RATE)(value.removesuffix("/min"))


def _speed(value: str) -> float:
    """--speed: 0 (as fast as possible) or a finite factor above it; a negative one, NaN or
    infinity played as nothing the help says."""
    try:
        speed = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not 0 <= speed < math.inf:
        raise argparse.ArgumentTypeError(f"must be 0 (as fast as possible) or above, "
                                         f"got {value!r}")
    return speed


def _kinds(value: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in value.split(","):
        kind, _, weight = item.strip().partition("=")
        if kind not in SCENARIOS:
            raise argparse.ArgumentTypeError(
                f"unknown kind {kind!r} (kinds: {', '.join(SCENARIOS)})")
        try:
            out[kind] = float(weight or 1)
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad weight in {item!r}") from None
        if not 0 <= out[kind] < math.inf:
            raise argparse.ArgumentTypeError(f"a weight is 0 or above, got {item!r}")
    if not any(out.values()):  # the mix's random choice had nothing to choose: a traceback
        raise argparse.ArgumentTypeError("at least one kind needs a weight above 0")
    return out


def _dids(value: str) -> tuple[str, ...]:
    dids = tuple(d.strip() for d in value.split(","))
    if not all(dids):
        raise argparse.ArgumentTypeError(f"expected DIDs separated by commas, got {value!r}")
    return dids


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def add_parser(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "simulate", help="run an AMI simulator (replayed traces or synthetic calls)",
        description="Serve AMI like Asterisk 22 does (banner, Login, Ping, "
                    "CoreShowChannels, Logoff, events) until Ctrl-C or SIGTERM. Events come from "
                    "recorded traces (--trace) and/or a steady mix of synthetic calls "
                    "(--mix) cut from recorded Asterisk calls, renamed and re-timed.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", default="127.0.0.1:5038", metavar="HOST:PORT",
                        help="address to listen on (default 127.0.0.1:5038; port 0 picks one)")
    parser.add_argument("--username", default="callhub", help="AMI user to accept")
    parser.add_argument("--secret", default="callhub-secret", help="its secret")
    parser.add_argument("--trace", action="append", default=[], metavar="FILE.ami",
                        help="replay a recorded trace once a client has logged in "
                             "(repeatable; played in order)")
    parser.add_argument("--speed", type=_speed, default=1.0, metavar="X",
                        help="time compression: 1 = recorded/real timing (default), "
                             "10 = ten times faster, 0 = as fast as possible")
    parser.add_argument("--loop", action="store_true",
                        help="replay the traces again and again")
    parser.add_argument("--mix", action="store_true",
                        help="generate overlapping synthetic calls (Poisson arrivals) once a "
                             "client has logged in")
    parser.add_argument("--rate", type=_rate, default=6.0, metavar="N/min",
                        help=f"calls per minute for --mix, up to {MAX_RATE:,} (default 6)")
    parser.add_argument("--kinds", type=_kinds, default=None, metavar="KIND=W,...",
                        help="scenario weights for --mix (default: "
                             + ", ".join(f"{k}={w:g}" for k, w in DEFAULT_MIX.items()) + ")")
    parser.add_argument("--seed", type=int, default=None, help="random seed for --mix and --agi")
    agi = parser.add_argument_group(
        "AGI mode", "inbound calls routed by callhub's FastAGI, as the shipped dialplan does")
    agi.add_argument("--agi", metavar="HOST:PORT[,HOST:PORT]",
                     help="ask this FastAGI (callhub's fastagi.listen, e.g. 127.0.0.1:4573) "
                          "where to ring each inbound call, and when it does not answer the "
                          "second (the other callhub of a pair), as the dialplan does; calls "
                          "start at the first AMI login")
    agi.add_argument("--agi-rate", type=_rate, default=6.0, metavar="N/min",
                     help=f"inbound calls per minute in AGI mode, up to {MAX_RATE:,} "
                          "(default 6)")
    agi.add_argument("--dids", type=_dids, default=DEMO_DIDS, metavar="DID,...",
                     help="the numbers the calls arrive on (default "
                          + ",".join(DEMO_DIDS) + "); the rota's lines list them")
    agi.add_argument("--agi-default", default="PJSIP/1000", metavar="DEVICE",
                     help="dialled when callhub does not answer (the dialplan's "
                          "CALLHUB_DEFAULT; default PJSIP/1000)")
    parser.add_argument("--max-calls", type=_positive, default=None, metavar="N",
                        help="stop generating after N calls (--mix, --agi; default: endless)")
    parser.add_argument("--pjsip", action="store_true",
                        help="PJSIP-style devices (PJSIP/trunk, PJSIP/100N) where a PJSIP "
                             "recording exists, Local channels otherwise")
    parser.add_argument("--log-level", default="info",
                        choices=("debug", "info", "warning", "error"),
                        help="what it logs on stderr (default info; debug also names "
                             "every call it starts)")
    parser.set_defaults(func=simulate_command)


def simulate_command(args: argparse.Namespace) -> int:
    host, port = parse_listen(args.listen, "--listen")
    if args.agi is not None:
        _agi_addresses(args.agi)
    for trace in args.trace:
        if (wrong := trace_problem(trace)) is not None:
            print(f"callhub simulate: {wrong}", file=sys.stderr)
            return 2
    configure_logging(args.log_level)
    if not args.trace and not args.mix and not args.agi:
        log.info("simulate.idle", hint="no --trace, --mix or --agi: only logins, pings and "
                                       "CoreShowChannels will be answered")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_simulate(args, host, port))
    return 0


def trace_problem(path: str) -> str | None:
    """Why `--trace path` cannot be played, or None. Judged before listening, as `callhub
    replay` judges its files: a trace is read only once a client has logged in, so a
    misspelt name listened as if all were well and failed (or played nothing) later."""
    if not Path(path).is_file():
        return (f"{path!r} is a directory, not a trace" if Path(path).is_dir()
                else f"no such file {path!r}")
    try:
        events = load_trace(path)
    except OSError as exc:
        return f"cannot read {path!r}: {exc.strerror or exc}"
    if not events:  # a binary, a log, the wrong file: not silently nothing
        return f"no AMI events in {path} (not a recorded AMI stream)"
    return None


async def _simulate(args: argparse.Namespace, host: str, port: int) -> None:
    sim = AmiSimulator(host, port, username=args.username, secret=args.secret)
    sim.endpoints = dict(DEMO_ENDPOINTS)
    stop = asyncio.Event()
    # Until SIGINT or SIGTERM, as `callhub run`; taken before the line that says it listens,
    # which a script waits for: a SIGTERM sent on it killed the process outright.
    with stopped_by_signals(stop):
        try:
            await sim.start()
        except OSError as exc:
            raise ConfigError(f"--listen: cannot listen on {host}:{port}: {exc}") from None
        print(f"AMI simulator listening on {host}:{sim.port} (user {args.username!r})",
              flush=True)
        jobs: list[asyncio.Task[Any]] = []
        speed = args.speed or None
        if args.trace:
            jobs.append(asyncio.create_task(_replay(sim, args.trace, speed, args.loop)))
        if args.mix:
            jobs.append(asyncio.create_task(_mix(sim, args)))
        if args.agi:
            jobs.append(asyncio.create_task(_agi_calls(sim, args, speed)))
        try:
            await _serve_until(stop, jobs)
        finally:
            for job in jobs:
                job.cancel()
            await sim.stop()


async def _serve_until(stop: asyncio.Event, jobs: list[asyncio.Task[Any]]) -> None:
    """Until `stop` is set; a job that fails ends it sooner, with the job's error.

    The jobs are waited on themselves, not through `asyncio.gather`: a gather cancelled
    at the stop ended with the jobs' CancelledError as its exception, which nothing
    retrieved, and asyncio logged "_GatheringFuture exception was never retrieved" with
    a traceback at every Ctrl-C."""
    stopped = asyncio.ensure_future(stop.wait())
    running: set[asyncio.Future[Any]] = set(jobs)
    try:
        while not stopped.done():
            done, running = await asyncio.wait({stopped, *running},
                                               return_when=asyncio.FIRST_COMPLETED)
            running.discard(stopped)
            for job in done - {stopped}:
                job.result()  # a job's failure is the command's
    finally:
        stopped.cancel()


async def _mix(sim: AmiSimulator, args: argparse.Namespace) -> None:
    """--mix: once a client has logged in, as the traces and --agi start. At --speed 0 it
    plays as fast as possible, as the help says (the mix took 0 for 1: real time), and
    that is only worth it to a client there: a burst started at launch was over before
    anyone logged in."""
    await sim.wait_logins(1, within=None)
    await sim.run_mix(args.rate, args.seed, pjsip=args.pjsip, kinds=args.kinds,
                      speed=args.speed, max_calls=args.max_calls)


async def _replay(sim: AmiSimulator, traces: list[str], speed: float | None,
                  loop: bool) -> None:
    await sim.wait_logins(1, within=None)
    while True:
        for path in traces:
            sent = await sim.replay(path, speed)
            log.info("simulate.replayed", trace=path, events=sent)
        if not loop:
            return


async def _agi_calls(sim: AmiSimulator, args: argparse.Namespace, speed: float | None) -> None:
    """--agi: once a client has logged in, a Poisson stream of inbound calls, each routed
    by callhub's FastAGI (callhub.sim.routed_calls), its hunt emitted on `sim`."""
    (host, port), *rest = _agi_addresses(args.agi)
    rng = random.Random(args.seed)
    # Beside --mix, the routed calls count their ids in a range of their own.
    factory = (CallFactory(seed=args.seed, uniqueid_counter=500_000, channel_counter=0x80000)
               if args.mix else None)
    agi = AgiCallSimulator(sim, host, port, behaviour=lambda device: _phone(rng),
                           default_target=args.agi_default, factory=factory,
                           second=rest[0] if rest else None)
    log.info("simulate.agi_waiting", hint="calls start at the first AMI login", agi=args.agi)
    await sim.wait_logins(1, within=None)
    arrivals = agi_arrivals(args.agi_rate, args.dids, rng, sim.clock(), args.max_calls)
    await agi.run(arrivals, speed=speed, keep=False)
    log.info("simulate.agi_done", calls=args.max_calls)


def _agi_addresses(text: str) -> list[tuple[str, int]]:
    """--agi HOST:PORT[,HOST:PORT]: one callhub, or the two of a pair in the order asked."""
    parts = text.split(",")
    if len(parts) > 2:
        raise ConfigError("--agi: one HOST:PORT, or two separated by a comma (a pair)")
    return [parse_listen(part.strip(), "--agi") for part in parts]


def _phone(rng: random.Random) -> Behaviour:
    """How a simulated phone reacts to one ring: mostly answered after a few seconds."""
    return Behaviour(answers=rng.random() < 0.75, ring_seconds=rng.uniform(2.0, 12.0),
                     talk_seconds=rng.uniform(15.0, 120.0))


def agi_arrivals(rate_per_minute: float, dids: Sequence[str], rng: random.Random,
                 start: float, max_calls: int | None = None
                 ) -> Iterator[tuple[float, str, str]]:
    """Inbound calls `(at, did, caller)` in time order: Poisson arrivals from `start`, on a
    random one of `dids`, from random mobile numbers; endless unless `max_calls`."""
    at = start
    made = 0
    while max_calls is None or made < max_calls:
        yield at, rng.choice(list(dids)), f"+86138{rng.randrange(10**8):08d}"
        made += 1
        at += rng.expovariate(rate_per_minute / 60.0)
