"""The spool: a write-ahead log of finished calls, so that a call handed over survives a crash.

Every finished call is appended here (and fsynced, in groups) before the
database sees it; the writer stores calls from here and records how far it
got. On disk, in `spool_dir` (mode 0700, files 0600):

- `wal-<16 digits>.jsonl`: segments, numbered in order. One JSON object per
  line, `CallRecord.to_plain()` (the record's fields as in DESIGN.md, times as
  POSIX seconds), UTF-8, in the order the calls finished. A new
  segment is started on every open (so nothing is ever appended after a line
  torn by a crash) and when the current one passes `segment_bytes`.
- `wal.checkpoint`: `{"segment": n, "offset": b}` padded with spaces to 64
  bytes: every call before byte b of segment n, and in every earlier segment,
  is in the database (or in its quarantine). Rewritten in place (one small
  write) after each stored batch; not fsynced, as an older checkpoint only
  makes the next start store a few calls again, which the store's upsert on
  (pbx, linkedid) makes harmless; an unreadable one means "from the oldest
  segment". Segments wholly before it are deleted.

A position is `(segment, byte offset)`, the end of a record's line; they
compare in log order. A torn last line (a crash mid-append) is skipped, never
fatal. A whole line that cannot be read back as a call (a disk fault) is
skipped too, counted and handed to the writer (`damaged`), which keeps it in
the quarantine table before the checkpoint passes it: the segment holding it
is deleted after. A field this version does not know (a spool of a newer
callhub, after a downgrade) is dropped, not the call. `calls.jsonl`, the
spool of earlier versions, is taken over as the oldest segment.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import structlog

from callhub.records import CallRecord

log = structlog.get_logger(__name__)

Position = tuple[int, int]
LEGACY_FILE = "calls.jsonl"
CHECKPOINT_FILE = "wal.checkpoint"
CHECKPOINT_BYTES = 64
SEGMENT = re.compile(r"^wal-(\d{16})\.jsonl$")
SEGMENT_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Damaged:
    """A spool line that could not be read back as a call, kept for the quarantine."""

    at: Position  # the end of the line
    line: bytes
    error: str  # the exception's type and first line


class Lines:
    """Records encoded for the spool: their lines end to end in one buffer, and each
    line's length.

    One buffer, not a bytes object a line: 2,000 lines kept as they came from
    orjson (each in a fresh allocation of the C heap) cost ~1.2 page faults a
    line, 2.5 us each on a VM, and the join before the write copied them all
    again: 6.0 against 3.3 us a call to encode and join (bench/README.md)."""

    __slots__ = ("data", "lengths")

    def __init__(self) -> None:
        self.data = bytearray()
        self.lengths: list[int] = []

    def __len__(self) -> int:
        return len(self.lengths)

    def add(self, records: Sequence[CallRecord]) -> None:
        """Encode `records` after the lines already here."""
        data, lengths = self.data, self.lengths
        for record in records:
            line = _line(record)
            data += line
            lengths.append(len(line))


def encode(records: Sequence[CallRecord]) -> Lines:
    """One JSON line per record, times as POSIX seconds (exact).

    orjson writes the dataclass as `to_plain` would, in less than half the
    time of json (6 against 13 us a call: the spool's thread holds the GIL
    meanwhile, and the writer's batches wait for it). It cannot write a lone
    surrogate and writes a NaN or an infinity as null: such a record goes as
    json's ASCII, escapes and NaN included, which reads back the same."""
    lines = Lines()
    lines.add(records)
    return lines


def _line(record: CallRecord) -> bytes:
    if _finite(record):
        try:
            return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
        except orjson.JSONEncodeError:
            pass
    return json.dumps(record.to_plain()).encode("ascii") + b"\n"


def _loads(line: bytes) -> Any:
    """A line as written by `encode`: orjson's, or json's (NaN) when orjson refuses it."""
    try:
        return orjson.loads(line)
    except ValueError:
        return json.loads(line)


def _finite(r: CallRecord) -> bool:
    """Whether every float of the record is finite (their sum is NaN or infinite if not;
    one too large to add only costs the slower line)."""
    total = (r.arrived_at + r.ended_at + r.ring_seconds + r.wait_seconds + r.talk_seconds
             + r.hold_seconds + (r.ring_started_at or 0.0) + (r.answered_at or 0.0))
    for a in r.attempts:
        total += (a.offered_at + a.ring_seconds + (a.ring_started_at or 0.0)
                  + (a.ended_at or 0.0))
    for t in r.transfers:
        total += t.at
    return math.isfinite(total)


class Spool:
    """The log in `directory`: appends (one thread at a time), reads, the checkpoint."""

    def __init__(self, directory: str | Path, *, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self.skipped = 0  # damaged lines passed over, each counted once
        self.damaged: list[Damaged] = []  # those the writer has not quarantined yet
        self._skipped_upto: Position = (0, 0)  # a line read again is not counted again
        self._dropped_fields: set[str] = set()  # a newer callhub's, already logged
        self.checkpoint: Position = (0, 0)
        self._sizes: dict[int, int] = {}  # every segment on disk: its size
        self._fd: int | None = None
        self._seg = 0  # the segment appends go to (created on the first append)
        self._size = 0
        self._torn = False  # a failed append left bytes that could not be cut off
        self._checkpoint_fd: int | None = None
        self._recover()

    # -- opening -----------------------------------------------------------------------

    def segment_path(self, seg: int) -> Path:
        return self.directory / f"wal-{seg:016d}.jsonl"

    def _recover(self) -> None:
        """Find the segments and the checkpoint; drop segments already stored."""
        if not self.directory.is_dir():
            self._seg = 1
            return
        for child in self.directory.iterdir():
            found = SEGMENT.match(child.name)
            if found:
                self._sizes[int(found.group(1))] = child.stat().st_size
        self.checkpoint = self._read_checkpoint()
        legacy = self.directory / LEGACY_FILE
        if legacy.exists():
            seg = min([*self._sizes, max(self.checkpoint[0], 1)]) - 1
            if seg < 0:
                raise RuntimeError(f"{legacy}: no segment number left for the old spool")
            os.replace(legacy, self.segment_path(seg))
            self._sizes[seg] = self.segment_path(seg).stat().st_size
            self.checkpoint = (seg, 0)
            self._write_checkpoint()
        if not self._sizes or self.checkpoint < (min(self._sizes), 0):
            self.checkpoint = (min(self._sizes, default=self.checkpoint[0]), 0)
        self._drop_stored()
        self._seg = max([*self._sizes, self.checkpoint[0]]) + 1

    def _read_checkpoint(self) -> Position:
        try:
            data = json.loads((self.directory / CHECKPOINT_FILE).read_bytes())
            return int(data["segment"]), int(data["offset"])
        except FileNotFoundError:
            return (0, 0)
        except (OSError, ValueError, KeyError, TypeError, OverflowError, RecursionError) as exc:
            # Torn by a power cut, or damaged: start from the oldest segment (stored calls
            # are stored again, harmlessly).
            log.warning("spool.checkpoint_unreadable", error=str(exc))
            return (0, 0)

    @property
    def end(self) -> Position:
        """The end of the last complete line on disk when opened, before any append."""
        for seg in sorted(self._sizes, reverse=True):
            if (seg, self._sizes[seg]) <= self.checkpoint:
                return self.checkpoint
            last = self._last_line_end(seg)
            if last > 0:
                return (seg, last)
        return self.checkpoint

    def _last_line_end(self, seg: int) -> int:
        try:
            data = self.segment_path(seg).read_bytes()
        except FileNotFoundError:
            return 0
        return data.rfind(b"\n") + 1

    def count(self, start: Position | None = None) -> int:
        """Records from `start` (default: the checkpoint) to the end."""
        start = self.checkpoint if start is None else start
        n = 0
        for seg in sorted(self._sizes):
            if seg < start[0]:
                continue
            try:
                with self.segment_path(seg).open("rb") as fh:
                    if seg == start[0]:
                        fh.seek(start[1])
                    n += sum(1 for line in fh if line.endswith(b"\n") and line.strip())
            except FileNotFoundError:
                continue
        return n

    def size(self) -> int:
        """Bytes in the segments on disk."""
        return sum(size for _, size in list(self._sizes.items()))

    def segments(self) -> list[Path]:
        """The segment files on disk, oldest first."""
        return [self.segment_path(s) for s in sorted(list(self._sizes))]

    def __len__(self) -> int:
        """Records not yet stored (after the checkpoint)."""
        return self.count()

    # -- appending ---------------------------------------------------------------------

    def append(self, records: Sequence[CallRecord]) -> list[Position]:
        """Add records at the end, durable (fsynced) when this returns; their positions.

        A failed write (disk full) is cut back off, so no half line stays for the
        next record to be glued to; the OSError is raised and the records are not
        in the log.
        """
        return self.append_lines(encode(records))

    def append_lines(self, lines: Lines) -> list[Position]:
        """`append` of records already encoded (`encode`): the part that waits for the
        disk, for a worker thread (one at a time), which holds no GIL while it waits."""
        if not lines:
            return []
        if self._fd is not None and self._size >= self.segment_bytes:
            self._close_segment()
        if self._fd is None:
            self._open_segment()
        assert self._fd is not None
        start = self._size
        # After a torn write the next line starts on a line of its own.
        parts = (b"\n", lines.data) if self._torn else (lines.data,)
        try:
            for part in parts:
                view = memoryview(part)
                while view:
                    view = view[os.write(self._fd, view):]
            os.fsync(self._fd)
        except OSError:
            try:
                os.ftruncate(self._fd, start)
                os.lseek(self._fd, start, os.SEEK_SET)
            except OSError:
                self._torn = True
                self._size = os.lseek(self._fd, 0, os.SEEK_END)
            raise
        ends: list[Position] = []
        offset = start + (1 if self._torn else 0)
        self._torn = False
        for length in lines.lengths:
            offset += length
            ends.append((self._seg, offset))
        self._size = offset
        self._sizes[self._seg] = offset
        return ends

    def _open_segment(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.segment_path(self._seg)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._size = os.lseek(self._fd, 0, os.SEEK_END)
        self._sizes[self._seg] = self._size
        _fsync_dir(self.directory)  # the new name survives a power cut too

    def _close_segment(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = None
        self._seg += 1
        self._size = 0

    def close(self) -> None:
        for fd in (self._fd, self._checkpoint_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd = self._checkpoint_fd = None

    # -- reading -----------------------------------------------------------------------

    def read(self, start: Position, limit: int, end: Position
             ) -> tuple[list[CallRecord], Position]:
        """Up to `limit` records after `start`, none past `end`; the position after them."""
        records: list[CallRecord] = []
        dropped: set[str] = set()  # fields of a newer callhub's records
        pos = start
        for seg in sorted(s for s in list(self._sizes) if s >= start[0]):
            if len(records) >= limit or (seg, 0) >= end:
                break
            try:
                fh = self.segment_path(seg).open("rb")
            except FileNotFoundError:
                continue
            with fh:
                offset = start[1] if seg == start[0] else 0
                fh.seek(offset)
                while len(records) < limit:
                    line = fh.readline()
                    if not line.endswith(b"\n") or (seg, offset + len(line)) > end:
                        break  # the end, a torn line, or not yet fsynced
                    offset += len(line)
                    pos = (seg, offset)
                    if not line.strip():
                        continue
                    try:
                        records.append(CallRecord.from_dict(_loads(line), dropped))
                    except Exception as exc:  # whatever the disk holds, it cannot stop the writer
                        if pos > self._skipped_upto:
                            self._skipped_upto = pos
                            self._skip(pos, line, exc)
        if dropped - self._dropped_fields:
            self._dropped_fields |= dropped
            log.warning("spool.fields_dropped", fields=sorted(dropped),
                        hint="written by a newer callhub; its calls are stored without them")
        return records, pos

    def _skip(self, at: Position, line: bytes, exc: Exception) -> None:
        self.skipped += 1
        text = str(exc).splitlines()
        self.damaged.append(Damaged(at, line.rstrip(b"\r\n"),
                                    f"{type(exc).__name__}: {text[0] if text else ''}"))
        log.warning("spool.line_skipped", segment=at[0], offset=at[1] - len(line),
                    error=type(exc).__name__)

    def unstored(self) -> list[CallRecord]:
        """Every record after the checkpoint (for tests and tools)."""
        return self.read(self.checkpoint, 1 << 62, (1 << 62, 0))[0]

    # -- progress ----------------------------------------------------------------------

    def set_checkpoint(self, pos: Position) -> None:
        """Everything up to `pos` is stored: remember it, delete the segments before it."""
        self.checkpoint = pos
        self._write_checkpoint()
        self._drop_stored()

    def _write_checkpoint(self) -> None:
        """One small write in place (a sector: all or nothing), padded to a fixed size."""
        if self._checkpoint_fd is None:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._checkpoint_fd = os.open(self.directory / CHECKPOINT_FILE,
                                          os.O_WRONLY | os.O_CREAT, 0o600)
        data = json.dumps({"segment": self.checkpoint[0], "offset": self.checkpoint[1]})
        os.pwrite(self._checkpoint_fd, data.encode("ascii").ljust(CHECKPOINT_BYTES), 0)

    def _drop_stored(self) -> None:
        """Delete the segments wholly before the checkpoint (not the one being appended to)."""
        seg, offset = self.checkpoint
        sizes = list(self._sizes.items())  # a snapshot: an append thread may add a segment
        done = [s for s, size in sizes if s < seg
                or (s == seg and offset >= size and s != self._seg)]
        for s in done:
            self.segment_path(s).unlink(missing_ok=True)
            del self._sizes[s]

    def clear(self) -> None:
        """Everything is stored: remove every segment and the checkpoint (a clean spool)."""
        self.close()
        with contextlib.suppress(OSError):  # a directory that never was (unwritable)
            for s in list(self._sizes):
                self.segment_path(s).unlink(missing_ok=True)
            (self.directory / CHECKPOINT_FILE).unlink(missing_ok=True)
        self._sizes.clear()
        self._seg += 1
        self._size = 0
        self.checkpoint = (self._seg, 0)
        if self.directory.is_dir():
            _fsync_dir(self.directory)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
