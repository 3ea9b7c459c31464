"""One process per spool directory: an exclusive lock on `<spool_dir>/callhub.lock`.

Two instances of a pair on one host (tests, a compose file with two
replicas on one volume) must not share a spool: each would append to and
checkpoint the other's log, and read the other's AMI state file. The second
one to start fails with a clear message instead. The lock (flock) ends with
the process, so a crash never leaves a stale one. A spool directory that
cannot be created or written is not fatal here: the writer reports that and
keeps calls in memory (callhub.store.writer).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

LOCK_FILE = "callhub.lock"


class SpoolInUse(RuntimeError):
    """Another running callhub holds the spool directory."""


class SpoolLock:
    """Held from `acquire()` until `release()` (or the process ends)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock; SpoolInUse when another process holds it."""
        path = self.directory / LOCK_FILE
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            log.warning("spool.lock_unavailable", spool=str(self.directory),
                        error=exc.strerror or str(exc))
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise SpoolInUse(
                f"the spool directory {self.directory} is in use by another callhub (pid "
                f"{holder}); give each instance of a pair its own spool_dir "
                f"(CALLHUB_SPOOL_DIR)") from None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
