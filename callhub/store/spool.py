"""The spool: finished calls the database could not take yet, in a local file.

Append-only JSON lines of `CallRecord.to_dict()`, flushed and fsynced before
`append` returns, so a call handed to the spool survives a crash. The writer
drains it front to back with `read` (a byte offset, kept in memory) and
`clear`s it once everything is stored; a crash mid-drain replays from the
start, which the upsert makes harmless. A torn last line (a crash during a
write) is skipped and counted, never fatal.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

import structlog

from callhub.records import CallRecord

log = structlog.get_logger(__name__)

SPOOL_FILE = "calls.jsonl"


class Spool:
    """One spool file in `directory` (created on first use)."""

    def __init__(self, directory: str | Path, name: str = SPOOL_FILE) -> None:
        self.directory = Path(directory)
        self.path = self.directory / name
        self.skipped = 0
        self._count = self._count_lines()

    def __len__(self) -> int:
        """Records in the file (read or not)."""
        return self._count

    def _count_lines(self) -> int:
        try:
            with self.path.open("rb") as fh:
                return sum(1 for line in fh if line.strip())
        except FileNotFoundError:
            return 0

    def append(self, records: Iterable[CallRecord]) -> None:
        """Add records at the end; durable when this returns.

        A failed write (disk full) is cut back off, so the file never keeps half
        a line that the next record would be glued to; the OSError is raised.
        """
        data = "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n"
                       for r in records).encode("utf-8")
        if not data:
            return
        lines = data.count(b"\n")
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            start = os.lseek(fd, 0, os.SEEK_END)
            if start and os.pread(fd, 1, start - 1) != b"\n":
                data = b"\n" + data  # a torn line from a crash stays a line of its own
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
                raise
        finally:
            os.close(fd)
        self._count += lines

    def read(self, offset: int, limit: int) -> tuple[list[CallRecord], int]:
        """Up to `limit` records from byte `offset`; the offset after them."""
        records: list[CallRecord] = []
        try:
            fh = self.path.open("rb")
        except FileNotFoundError:
            return records, offset
        with fh:
            fh.seek(offset)
            while len(records) < limit:
                line = fh.readline()
                if not line:
                    break
                if not line.endswith(b"\n"):
                    # An append in progress elsewhere, or a torn write: stop before it.
                    break
                offset += len(line)
                if not line.strip():
                    continue
                try:
                    records.append(CallRecord.from_dict(json.loads(line)))
                except (ValueError, TypeError, KeyError) as exc:
                    self.skipped += 1
                    log.warning("spool.line_skipped", path=str(self.path),
                                byte=offset - len(line), error=type(exc).__name__)
        return records, offset

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def clear(self) -> None:
        """Forget everything (all of it is stored)."""
        self.path.unlink(missing_ok=True)
        self._count = 0
        _fsync_dir(self.directory)

    def rewrite(self, records: Iterable[CallRecord]) -> None:
        """Replace the file with `records` atomically (used to put older calls first)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        lines = [json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in records]
        with tmp.open("w", encoding="utf-8") as fh:
            fh.writelines(lines)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        _fsync_dir(self.directory)
        self._count = len(lines)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
