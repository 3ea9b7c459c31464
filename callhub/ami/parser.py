"""AMI wire format: bytes in, messages (header dicts) out.

AMI messages are `Key: Value` lines ended by `\\r\\n`, a blank line ends a
message. This splitter works on bytes and decodes only complete messages,
so a UTF-8 character split across two TCP reads survives (panoramisk 1.4
decodes every read on its own and drops such characters). A message that
is not `Key: Value` lines, or is larger than `max_message_bytes`, is
counted in `malformed` and skipped; the stream goes on.

It is the hot path of ingestion (every event of every PBX passes here), so
`feed` decodes all complete messages of a read at once (cutting at a
terminator never splits a UTF-8 character: its bytes are all >= 0x80) and
`parse_text` takes the common `Key: Value` shape in one pass, checking the
keys of a message together; anything unusual goes the careful way.

Most of a real stream is events nobody downstream reads (VarSet of other
variables, CEL, Newexten of other applications, DeviceStateChange when no
router listens). With an `EventFilter` the splitter reads only the first line
of such a message (and one header of a VarSet) and counts it in `skipped`
instead of building its dict. Replies and the events of an action's reply
(`ActionID`) are always parsed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

AmiMessage = dict[str, str]


@dataclass(frozen=True, slots=True)
class EventFilter:
    """The events worth parsing: their names, and for VarSet the variables read.

    `varset_variables` None means every VarSet (when "VarSet" is in `events`).
    """

    events: frozenset[str]
    varset_variables: frozenset[str] | None = None

    def __or__(self, other: EventFilter) -> EventFilter:
        """What either of two readers needs."""
        if self._every_varset() or other._every_varset():
            variables = None
        else:
            variables = (self.varset_variables or frozenset()) | (
                other.varset_variables or frozenset())
        return EventFilter(self.events | other.events, variables)

    def _every_varset(self) -> bool:
        return "VarSet" in self.events and self.varset_variables is None

    def wants(self, block: str) -> bool:
        """Whether one message's text (without its blank line) is worth parsing."""
        if not block.startswith("Event: "):
            return True  # a reply, or something malformed: parse (and count) it
        end = block.find("\r\n")
        name = block[7:end] if end >= 0 else block[7:]
        if name not in self.events:
            return "\r\nActionID: " in block  # an event of an action's reply list
        if name == "VarSet" and self.varset_variables is not None:
            at = block.find("\r\nVariable: ")
            if at < 0:
                return True
            at += 12
            end = block.find("\r\n", at)
            return block[at:end if end >= 0 else None] in self.varset_variables
        return True

TERMINATOR = b"\r\n\r\n"
MAX_MESSAGE_BYTES = 256 * 1024



class MessageSplitter:
    """Incremental AMI message splitter; feed it bytes as they arrive."""

    def __init__(self, max_message_bytes: int = MAX_MESSAGE_BYTES,
                 wanted: EventFilter | None = None) -> None:
        self._buffer = bytearray()
        self.wanted = wanted
        self.skipped = 0
        self._skipping = False
        self.max_message_bytes = max_message_bytes
        self.banner: str | None = None
        self.messages = 0
        self.malformed = 0

    def feed(self, data: bytes) -> list[AmiMessage]:
        """Add bytes; return every message they complete, in order."""
        buf = self._buffer
        buf += data
        out: list[AmiMessage] = []
        start = 0
        if self.banner is None and not self._skipping:
            end = buf.find(b"\r\n")
            if end < 0:
                return out
            first = bytes(buf[:end])
            if b": " not in first and first.startswith(b"Asterisk Call Manager"):
                self.banner = first.decode("utf-8", "replace")
                start = end + 2
            else:
                self.banner = ""
        if self._skipping:
            end = buf.find(TERMINATOR, start)
            if end >= 0:
                self._skipping = False
                start = end + 4
        if not self._skipping:
            last = buf.rfind(TERMINATOR, start)
            if last >= 0:
                malformed = skipped = 0
                wants = self.wanted.wants if self.wanted is not None else None
                for block in buf[start:last].decode("utf-8", "replace").split("\r\n\r\n"):
                    if wants is not None and not wants(block):
                        skipped += 1
                        continue
                    message = parse_text(block)
                    if message is None:
                        malformed += 1
                    elif message:
                        out.append(message)
                self.messages += len(out)
                self.malformed += malformed
                self.skipped += skipped
                start = last + 4
        del buf[:start]
        if len(buf) > self.max_message_bytes:
            # Too large to be AMI: drop it and everything up to the next terminator.
            if not self._skipping:
                self.malformed += 1
            self._skipping = True
            keep = buf[-3:]
            buf.clear()
            buf += keep
        return out

    def reset(self) -> None:
        """Forget partial input (a new connection starts with a banner again)."""
        self._buffer.clear()
        self._skipping = False
        self.banner = None


def parse_message(raw: bytes) -> AmiMessage | None:
    """One message's bytes to a header dict; None when it is not AMI.

    Lines split on the first ': '. A header repeated in one message (ChanVariable,
    Variable) keeps its first value, as panoramisk does for plain headers. Empty
    input (stray blank lines) gives an empty dict.
    """
    return parse_text(raw.decode("utf-8", "replace"))


def parse_text(text: str) -> AmiMessage | None:
    """`parse_message` on decoded text: one message's lines without the blank line."""
    text = text.strip("\r\n")
    if not text:
        return {}
    message: AmiMessage = {}
    for line in text.split("\r\n"):
        key, sep, value = line.partition(": ")
        if not sep:
            return _parse_careful(text)  # `Key:value` or not a header line at all
        if key in message:
            continue  # a repeated header keeps its first value
        if not key.isalnum() and (
                not key or ":" in key or "\n" in key or key != key.strip()):
            return _parse_careful(text)
        message[key] = value
    if "Event" not in message and "Response" not in message and "Action" not in message:
        return None
    return message


def _parse_careful(text: str) -> AmiMessage | None:
    """Every line checked on its own: `Key:value` without the space, odd keys refused."""
    message: AmiMessage = {}
    for line in text.split("\r\n"):
        key, sep, value = line.partition(":")
        if not sep or not key or key != key.strip() or "\n" in key:
            return None
        message.setdefault(key, value[1:] if value.startswith(" ") else value)
    if "Event" not in message and "Response" not in message and "Action" not in message:
        return None
    return message


def iter_messages(chunks: Iterable[bytes], splitter: MessageSplitter | None = None
                  ) -> Iterator[AmiMessage]:
    """Messages from a sequence of byte chunks (TCP reads, file blocks)."""
    splitter = splitter or MessageSplitter()
    for chunk in chunks:
        yield from splitter.feed(chunk)


def iter_file_messages(path: str | Path, splitter: MessageSplitter | None = None
                       ) -> Iterator[AmiMessage]:
    """Messages of a recorded `.ami` file, read in blocks."""
    with open(path, "rb") as fh:
        yield from iter_messages(iter(lambda: fh.read(65536), b""), splitter)
