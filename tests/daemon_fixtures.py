"""`callhub run` as a real child process, and a config pointing it at a test AMI server.

Used by the tests that break the daemon as an operator would (SIGTERM, SIGKILL,
a database that goes away): the process is real, its JSON log lines are read
as they come, and waits are on what it logs, not on sleeps.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ami_fixtures import SIM_SECRET, SIM_USER

from callhub.sim.ami_server import AmiSimulator
from callhub.sim.templates import load_template

WAIT = 30.0


def fault_seed(default: int) -> int:
    """A fault test's seed: `default`, or `CALLHUB_TEST_SEED` to soak other random kill
    points and fault rhythms (docs/development.md). A test's guards that it is not
    vacuous were set with its default; another seed may fail one of those alone."""
    return int(os.environ.get("CALLHUB_TEST_SEED", default))


def write_config(tmp_path: Path, sim: AmiSimulator, *, database_url: str | None = None,
                 template: str = "01_answered_caller_hangup", pbx: str = "lab") -> Path:
    """A callhub.toml for `sim` as PBX `pbx` (contexts and agents of `template`'s lab),
    JSON logs at info, spool in tmp_path/spool, SQLite tmp_path/calls.db unless given."""
    return write_pbxs_config(tmp_path, {pbx: sim}, database_url=database_url,
                             template=template)


def write_pbxs_config(directory: Path, sims: Mapping[str, AmiSimulator], *,
                      database_url: str | None = None,
                      template: str = "01_answered_caller_hangup",
                      tokens: Sequence[str] = ()) -> Path:
    """directory/callhub.toml with one [[pbx]] per simulator (name -> simulator), each with
    the contexts and agents of `template`'s lab; JSON logs at info, spool in
    directory/spool, SQLite directory/calls.db unless given, API `tokens` ('role:token').
    The API and FastAGI listen on ports the system picks at each start (read them from
    `daemon.api` / `fastagi.listening`): a port picked once for the config was free when
    picked, and taken by another test's socket before a later restart now and then."""
    config = load_template(template).config
    agents = "\n".join(f'"{k}" = "{v}"' for k, v in config["agents"].items())
    url = database_url or f"sqlite+aiosqlite:///{directory / 'calls.db'}"
    tables = "".join(f"""
[[pbx]]
name = "{name}"
host = "127.0.0.1"
port = {sim.port}
username = "{SIM_USER}"
secret = "{SIM_SECRET}"
inbound_contexts = {json.dumps(config.get("inbound_contexts", ["from-pstn"]))}
outbound_contexts = {json.dumps(config.get("outbound_contexts", ["to-pstn"]))}
voicemail_extensions = {json.dumps(config.get("voicemail_extensions", ["voicemail"]))}

[pbx.agents]
{agents}
""" for name, sim in sims.items())
    path = directory / "callhub.toml"
    path.write_text(f"""
database_url = "{url}"
spool_dir = "{directory / 'spool'}"
log_level = "info"

[api]
listen = "127.0.0.1:0"
tokens = {json.dumps(list(tokens))}

[fastagi]
listen = "127.0.0.1:0"
{tables}""", encoding="utf-8")
    return path


class Daemon:
    """`callhub run` as a child process; its JSON log lines, read as they come."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.lines: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CALLHUB_")}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "callhub", "--config", str(self.config), "run", env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        async for raw in self.proc.stderr:
            self.lines.append(raw.decode("utf-8", "replace"))
            self._changed.set()
        self._changed.set()

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for line in self.lines:
            if f'"{name}"' in line and line.startswith("{"):
                event = json.loads(line)
                if event.get("event") == name:
                    out.append(event)
        return out

    async def until(self, predicate: Callable[[], bool], within: float = WAIT) -> None:
        async def _wait() -> None:
            while not predicate():
                if self._reader is not None and self._reader.done():
                    raise AssertionError("callhub run ended:\n" + "".join(self.lines[-30:]))
                self._changed.clear()
                await self._changed.wait()
        try:
            await asyncio.wait_for(_wait(), within)
        except TimeoutError:
            raise AssertionError("waited in vain; callhub run said:\n"
                                 + "".join(self.lines[-30:])) from None

    async def stop(self) -> int:
        """SIGTERM, and the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.proc.wait(), WAIT)
        if self._reader is not None:
            await self._reader
        return code

    async def kill(self) -> None:
        """SIGKILL (nothing runs on the way out), if it still runs."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            await self._reader
