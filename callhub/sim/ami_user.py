"""What Asterisk sends one AMI user: a stream cut by that user's `read` classes and
`eventfilter` lines from a manager.conf, as a stand-in PBX must cut it to be fair.

Asterisk's main/manager.c sends a session an event when the event's category is
wholly within the user's read permissions (`(readperm & category) == category`)
and it passes the user's filters: with include filters (`eventfilter = regex`),
it must match one of them; with exclude filters (`eventfilter = !regex`), none.
A legacy filter is a regular expression searched for in the event's whole text.
An event's category is named in its own `Privilege:` header (`call,all`: the
class, then `all`, which every category is part of).

Only what the shipped deploy/asterisk/manager.conf uses is read here: one
section's `read` and legacy `eventfilter` lines. The newer
`eventfilter(name(...),header(...))` form is refused with a clear error rather
than guessed at. Used by bench/fleet.py's PBXs and by the test that the traces,
cut so, still give their ground truth; not by the daemon.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_PRIVILEGE = re.compile(rb"^Privilege: ([^\r\n]*)\r?$", re.M)


@dataclass(frozen=True)
class AmiUser:
    """The event classes an AMI user reads and its event filters."""

    read: frozenset[str]
    includes: tuple[re.Pattern[bytes], ...] = ()
    excludes: tuple[re.Pattern[bytes], ...] = ()

    @classmethod
    def from_manager_conf(cls, path: Path, user: str = "callhub") -> AmiUser:
        """The `[user]` section of a manager.conf."""
        read: frozenset[str] | None = None
        includes: list[re.Pattern[bytes]] = []
        excludes: list[re.Pattern[bytes]] = []
        section = None
        for number, raw in enumerate(path.read_text("utf-8").splitlines(), 1):
            line = re.sub(r"(?<!\\);.*", "", raw).strip()
            if not line:
                continue
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1].strip()
                continue
            if section != user:
                continue
            name, sep, value = (part.strip() for part in line.partition("="))
            if not sep:
                raise ValueError(f"{path}:{number}: not `name = value`: {raw!r}")
            if name == "read":
                read = frozenset(c.strip() for c in value.split(",") if c.strip())
            elif name == "eventfilter":
                pattern = value.replace("\\;", ";")
                exclude = pattern.startswith("!")
                compiled = re.compile(pattern[1:].encode() if exclude else pattern.encode())
                (excludes if exclude else includes).append(compiled)
            elif name.startswith("eventfilter("):
                raise ValueError(f"{path}:{number}: the eventfilter(...) form is not "
                                 "supported by this stand-in")
        if read is None:
            raise ValueError(f"{path}: no `read` in [{user}]")
        return cls(read, tuple(includes), tuple(excludes))

    def sends(self, event: bytes) -> bool:
        """Whether Asterisk sends this event (one event's text) to the user."""
        found = _PRIVILEGE.search(event)
        if found is not None and "all" not in self.read:
            classes = {c.strip() for c in found.group(1).decode().split(",")} - {"all"}
            if not classes <= self.read:
                return False
        if self.includes and not any(p.search(event) for p in self.includes):
            return False
        return not any(p.search(event) for p in self.excludes)

    def cut(self, data: bytes, offsets: list[int]) -> tuple[bytes, list[int]]:
        """The events of `data` (event i is data[offsets[i]:offsets[i + 1]]) the user is
        sent, and where each event would start in them: event i's place is the new
        offsets[i], so the events up to i of the whole stream are new[:offsets[i]]."""
        kept: list[bytes] = []
        places = [0]
        size = 0
        for i in range(len(offsets) - 1):
            event = data[offsets[i]:offsets[i + 1]]
            if self.sends(event):
                kept.append(event)
                size += len(event)
            places.append(size)
        return b"".join(kept), places


def event_offsets(data: bytes) -> list[int]:
    """Where each message of an AMI stream starts, and its end: message i is
    data[offsets[i]:offsets[i + 1]] (the greeting line rides with the first)."""
    return [0, *(m.end() for m in re.finditer(b"\r\n\r\n", data))]
