"""`callhub run`: the daemon from the command line, with the demo's parts on `--demo`.

The daemon itself (callhub.daemon) knows no simulator; this is where the
command composes it with callhub.sim.demo when `--demo` asks for a simulated
PBX, and turns start-up failures into one readable line and an exit code.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import SQLAlchemyError

from callhub import loops
from callhub.argtypes import above_zero, whole
from callhub.config import load_settings
from callhub.daemon import (
    Daemon,
    PartFailed,
    StartupError,
    StoppedWhileStarting,
    heap_settled,
    serve,
)
from callhub.logs import configure_logging
from callhub.store.db import settle_sqlite_workers
from callhub.store.oneshot import does_not_exist, missing_sqlite_file

if TYPE_CHECKING:
    from callhub.sim.demo import Demo


# The demo's bounds: 0 or less, NaN or infinity stopped the daemon with a ValueError after
# it started, or hung it in a loop that SIGTERM did not stop (--demo-speed 0).
MAX_DEMO_RATE = 60_000
MAX_DEMO_SPEED = 1_000


def add_parser(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "run", help="run the daemon (AMI ingestion, writer, API, FastAGI routing)",
        description="Listen to every configured PBX's AMI, store each finished call, keep "
                    "the worklist, route calls over FastAGI and serve the HTTP API and /metrics. "
                    "SIGTERM/SIGINT stop it cleanly.")
    parser.add_argument("--demo", action="store_true",
                        help="use the built-in AMI simulator as the PBX (a steady call mix)")
    parser.add_argument("--no-migrate", action="store_true",
                        help="do not apply database migrations on start")
    parser.add_argument("--demo-rate", type=above_zero(MAX_DEMO_RATE), default=12.0, metavar="N",
                        help=f"--demo: calls per minute, up to {MAX_DEMO_RATE:,} (default 12)")
    parser.add_argument("--demo-speed", type=above_zero(MAX_DEMO_SPEED), default=1.0, metavar="X",
                        help=f"--demo: run the simulated clock X times faster, up to "
                             f"{MAX_DEMO_SPEED:,} (default 1)")
    parser.add_argument("--workers", type=whole(1, 64), default=None, metavar="N",
                        help="API processes on the API's port, 1 to 64 (default: [api] "
                             "workers, 1); "
                             "the extra ones serve the API only")
    parser.set_defaults(func=run_command)


def _demo(args: argparse.Namespace) -> Demo:
    """The simulated PBX, imported only when asked for: a plain `run` loads no simulator."""
    from callhub.sim.demo import Demo
    return Demo(rate=args.demo_rate, speed=args.demo_speed)


def run_command(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    if args.no_migrate and (path := missing_sqlite_file(settings.database_url)) is not None:
        # Connecting would create the file, and --no-migrate would then refuse its empty
        # schema and leave it behind: say what is missing before anything starts.
        hint = " (`callhub db upgrade` creates it, or drop --no-migrate)"
        print(f"callhub: {does_not_exist(settings.database_url, path, hint)}", file=sys.stderr)
        return 2
    if args.workers is not None:
        settings = dataclasses.replace(settings, api_workers=args.workers)
    configure_logging(settings.log_level)
    d = Daemon(settings, migrate=not args.no_migrate)
    demo = _demo(args) if args.demo else None
    async def run() -> None:
        try:
            if demo is None:
                await serve(d, after=[heap_settled])
            else:
                await serve(d, before=demo.before, after=[*demo.after, heap_settled])
        finally:
            await settle_sqlite_workers()  # no thread may outlive the loop it reports to

    try:
        loops.run(run(), settings.event_loop)
    except StoppedWhileStarting:
        return 0  # asked to stop before it was up (the log says so)
    except StartupError as exc:
        print(f"callhub: {exc}", file=sys.stderr)
        return 2
    except PartFailed as exc:
        print(f"callhub: {exc}", file=sys.stderr)
        return 1
    except (OSError, SQLAlchemyError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        print(f"callhub: {type(exc).__name__}: {reason}", file=sys.stderr)
        return 1
    return 0
