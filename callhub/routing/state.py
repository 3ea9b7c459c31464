"""Routing state on disk: the active rota and each line's rotation position.

Both are small JSON files in one state directory (default
`<spool_dir>/routing`), replaced atomically by rename, so a crash leaves
the old or the new file, never half of one. They live on local disk and
not in the database on purpose: FastAGI must answer even while the
database is down, and the position changes on every call.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from callhub.config import Settings
from callhub.lifecycle import Retries
from callhub.routing.model import EMPTY_ROTA, Rota
from callhub.routing.rota_file import (
    RotaError,
    atomic_write,
    load_rota,
    rota_from_data,
    save_rota,
)
from callhub.routing.rota_schema import MAX_NAME

log = structlog.get_logger(__name__)

ROTA_FILE = "rota.json"
POSITION_FILE = "rotation.json"
STATE_DIR_ENV = "CALLHUB_ROUTING_STATE_DIR"


def state_dir(settings: Settings, env: dict[str, str] | None = None) -> Path:
    """Where routing keeps its state: $CALLHUB_ROUTING_STATE_DIR, else <spool_dir>/routing."""
    env = dict(os.environ) if env is None else env
    if env.get(STATE_DIR_ENV):
        return Path(env[STATE_DIR_ENV])
    return Path(settings.spool_dir) / "routing"


@dataclass(frozen=True, slots=True)
class Position:
    """The agent offered a line's previous call, and that agent's rotation index then."""

    agent: str
    index: int
    at: float


# What the shared position's row can hold (callhub.store.tables.rotation_positions): a
# value past these (a damaged or hand-edited file) made every reconcile fail, so the pair
# never shared its rotation again. The newest time a datetime holds: year 9999.
MAX_INDEX = 2**31 - 1
LATEST = 253402300799.0


def _position(line: str, item: Any) -> Position | None:
    """A line's position as the file has it, or None when the file's is unusable; a time
    that is no time (NaN, out of range) becomes 0: older than any move."""
    if not isinstance(item, dict) or len(line) > MAX_NAME:
        return None
    agent, index, at = item.get("agent"), item.get("index"), item.get("at", 0.0)
    if not isinstance(agent, str) or not 0 < len(agent) <= MAX_NAME:
        return None
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index <= MAX_INDEX:
        return None
    if not isinstance(at, int | float) or isinstance(at, bool) or not 0.0 <= at <= LATEST:
        at = 0.0  # also NaN, which compares false
    return Position(agent, index, float(at))


SAVE_DELAY = 0.05  # seconds a burst of calls is gathered into one write of the file


class RotationState:
    """Per-line rotation position, kept in memory and written through to a JSON file.

    Inside an event loop the file is written off the loop: at most one write per
    SAVE_DELAY, in a worker thread, so no FastAGI answer waits on the disk (a rename
    takes milliseconds on a busy filesystem). A crash loses at most that last
    fraction of a second of moves: the next call may start one agent early.
    Outside a loop, and at `flush()` (shutdown), it is written at once.
    """

    def __init__(self, path: Path | None, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        self._lines: dict[str, Position] = {}
        self.write_errors = 0
        self.save_retries = Retries()  # the file failing write after write (a full disk)
        self._save_pending = False
        self._version = 0  # bumped by every move; a write never replaces a newer one
        self._written = 0
        self._write_lock = threading.Lock()
        self._timer: asyncio.TimerHandle | None = None
        self._inflight: asyncio.Future[None] | None = None
        self.writes = 0  # files written (a burst of moves is one)
        if path is not None:
            self._load(path)

    def _load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            lines = data.get("lines", {})
            if not isinstance(lines, dict):
                raise ValueError(f"lines: expected an object, got {type(lines).__name__}")
        except FileNotFoundError:
            return
        except (OSError, ValueError, AttributeError, RecursionError) as exc:
            # A damaged file costs the rotation position, never routing itself.
            log.warning("routing.position_unreadable", hint="starting from the top", path=str(path),
                        error=str(exc))
            return
        unusable = 0
        for line, item in lines.items():
            position = _position(line, item)
            if position is None:
                unusable += 1
            else:
                self._lines[line] = position
        if unusable:
            log.warning("routing.position_unreadable", path=str(path), lines=unusable,
                        hint="those lines start from the top")

    def get(self, line: str) -> Position | None:
        return self._lines.get(line)

    def items(self) -> list[tuple[str, Position]]:
        """Every line's position (a copy)."""
        return list(self._lines.items())

    def set(self, line: str, agent: str, index: int, at: float | None = None) -> None:
        """Move the position (`at`: when, default now) and schedule the file's write."""
        self._lines[line] = Position(agent, index, self.clock() if at is None else at)
        self._version += 1
        if self.path is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.save()
            return
        if not self._save_pending:
            self._save_pending = True
            self._timer = loop.call_later(SAVE_DELAY, self._save_in_thread, loop)

    def _save_in_thread(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        if not self._save_pending:  # flushed meanwhile
            return
        self._save_pending = False
        version, text = self._snapshot()
        inflight = self._inflight = loop.run_in_executor(None, self._write, version, text)
        inflight.add_done_callback(lambda done: self._written_by(done))

    def _written_by(self, done: asyncio.Future[None]) -> None:
        if self._inflight is done:
            self._inflight = None

    async def written(self) -> None:
        """Wait until the file holds every move made so far (without the SAVE_DELAY)."""
        if self._timer is not None:
            self._timer.cancel()
            self._save_in_thread(asyncio.get_running_loop())
        if self._inflight is not None:
            await asyncio.shield(self._inflight)

    def flush(self) -> None:
        """Write now unless the file already holds every move (also on shutdown)."""
        if self._save_pending or self._written < self._version:
            self._save_pending = False
            self.save()

    def save(self) -> None:
        if self.path is None:
            return
        self._write(*self._snapshot())

    def _snapshot(self) -> tuple[int, str]:
        data: dict[str, Any] = {"lines": {
            line: {"agent": p.agent, "index": p.index, "at": p.at}
            for line, p in sorted(self._lines.items())}}
        return self._version, json.dumps(data, ensure_ascii=False)

    def _write(self, version: int, text: str) -> None:
        """Replace the file with `text` unless a newer version is already written."""
        assert self.path is not None
        with self._write_lock:
            if version < self._written:
                return
            try:
                atomic_write(self.path, text)
            except OSError as exc:
                # Routing goes on from memory; the position is only lost on a restart. Said
                # once per error: a full disk would be an error line at every call.
                self.write_errors += 1
                kind = f"{type(exc).__name__}({exc.errno})"  # the message names a temp file
                say = log.error if self.save_retries.failed(kind) else log.debug
                say("routing.position_save_failed", path=str(self.path), error=str(exc),
                    tries=self.save_retries.tries)
                return
            self._written = version
            self.writes += 1
            if tries := self.save_retries.succeeded():
                log.info("routing.position_saved", path=str(self.path), tries=tries)


class RotaStore:
    """The active rota: read from the state directory, reloaded when the file changes.

    `callhub rota load` and the API write `rota.json`; a running daemon sees
    the new file on its next call (an mtime check at most once a second).
    On first start without `rota.json`, `settings.rota_file` seeds it.
    """

    def __init__(self, directory: Path | None, seed_file: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.directory = directory
        self.clock = clock
        self._rota: Rota = EMPTY_ROTA
        self._mtime: tuple[int, int] | None = None
        self._checked = float("-inf")
        path = self.path
        if path is not None and path.exists():
            self._reload(force=True)
        elif seed_file:
            self._rota = load_rota(seed_file)
            if path is not None:
                save_rota(self._rota, path)
                self._mtime = _mtime(path)
        self._checked = self.clock()

    @property
    def path(self) -> Path | None:
        return None if self.directory is None else self.directory / ROTA_FILE

    @property
    def rota(self) -> Rota:
        if self.clock() - self._checked >= 1.0:
            self._reload()
        return self._rota

    def replace(self, rota: Rota) -> None:
        """Check `rota` (RotaError if wrong), make it the active one and persist it."""
        rota = rota_from_data(rota.to_data(), source=str(self.path or "rota"))
        path = self.path
        if path is not None:
            save_rota(rota, path)
            self._mtime = _mtime(path)
        self._rota = rota

    def _reload(self, force: bool = False) -> None:
        self._checked = self.clock()
        path = self.path
        if path is None:
            return
        mtime = _mtime(path)
        if mtime is None or (mtime == self._mtime and not force):
            return
        try:
            self._rota = load_rota(path)
        except RotaError as exc:
            # Keep routing with the last good rota.
            log.error("routing.saved_rota_invalid", hint="keeping the previous one", error=str(exc))
        self._mtime = mtime


def _mtime(path: Path) -> tuple[int, int] | None:
    """Modification time and inode: a rename-replaced file always looks new."""
    try:
        st = path.stat()
        return st.st_mtime_ns, st.st_ino
    except OSError:
        return None
