"""`callhub simulate`: an Asterisk-like AMI server to point callhub (or anything) at."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from typing import Any

import structlog

from callhub.ami.simulator import AmiSimulator
from callhub.ami.synth import DEFAULT_MIX, SCENARIOS
from callhub.config import ConfigError, parse_listen
from callhub.logs import configure_logging

log = structlog.get_logger(__name__)

EPILOG = """\
examples:
  callhub simulate --mix --rate 12
      steady synthetic traffic, 12 calls a minute, on 127.0.0.1:5038
  callhub simulate --listen 127.0.0.1:5039 --trace ../shared/traces/06_*.ami --speed 10
      replay a recorded trace ten times faster once a client has logged in
  callhub simulate --mix --rate 30 --pjsip --kinds answered=3,abandoned=1,busy=1

log in with the --username/--secret given here (defaults: callhub / callhub-secret).
scenario kinds: """ + ", ".join(SCENARIOS)


def _rate(value: str) -> float:
    text = value.removesuffix("/min")
    try:
        rate = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected calls per minute, got {value!r}") from None
    if rate <= 0:
        raise argparse.ArgumentTypeError("the rate must be > 0")
    return rate


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
    return out


def add_parser(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "simulate", help="run an AMI simulator (replayed traces or synthetic calls)",
        description="Serve AMI like Asterisk 22 does (banner, Login, Ping, "
                    "CoreShowChannels, Logoff, events) until Ctrl-C. Events come from "
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
    parser.add_argument("--speed", type=float, default=1.0, metavar="X",
                        help="time compression: 1 = recorded/real timing (default), "
                             "10 = ten times faster, 0 = as fast as possible")
    parser.add_argument("--loop", action="store_true",
                        help="replay the traces again and again")
    parser.add_argument("--mix", action="store_true",
                        help="generate overlapping synthetic calls (Poisson arrivals)")
    parser.add_argument("--rate", type=_rate, default=6.0, metavar="N/min",
                        help="calls per minute for --mix (default 6)")
    parser.add_argument("--kinds", type=_kinds, default=None, metavar="KIND=W,...",
                        help="scenario weights for --mix (default: "
                             + ", ".join(f"{k}={w:g}" for k, w in DEFAULT_MIX.items()) + ")")
    parser.add_argument("--seed", type=int, default=None, help="random seed for --mix")
    parser.add_argument("--pjsip", action="store_true",
                        help="PJSIP-style devices (PJSIP/trunk, PJSIP/100N) where a PJSIP "
                             "recording exists, Local channels otherwise")
    parser.add_argument("--log-level", default="info",
                        choices=("debug", "info", "warning", "error"))
    parser.set_defaults(func=simulate_command)


def simulate_command(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    host, port = parse_listen(args.listen, "--listen")
    if not args.trace and not args.mix:
        log.info("simulate.idle", hint="no --trace or --mix: only logins, pings and "
                                       "CoreShowChannels will be answered")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_simulate(args, host, port))
    return 0


async def _simulate(args: argparse.Namespace, host: str, port: int) -> None:
    sim = AmiSimulator(host, port, username=args.username, secret=args.secret)
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
        jobs.append(asyncio.create_task(sim.run_mix(
            args.rate, args.seed, pjsip=args.pjsip, kinds=args.kinds,
            speed=args.speed or 1.0)))
    try:
        if jobs:
            await asyncio.gather(*jobs)
        await asyncio.Event().wait()  # keep serving until Ctrl-C
    finally:
        for job in jobs:
            job.cancel()
        await sim.stop()


async def _replay(sim: AmiSimulator, traces: list[str], speed: float | None,
                  loop: bool) -> None:
    await sim.wait_logins(1, within=None)
    while True:
        for path in traces:
            sent = await sim.replay(path, speed)
            log.info("simulate.replayed", trace=path, events=sent)
        if not loop:
            return
