"""Recorded AMI sessions read back: the events of a `.ami` file, with or without times.

A recording holds every byte the recording session received: its banner, the
responses to its own actions and the event lists answering them, then the
PBX's events. Simulators replay only the PBX's events.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from callhub.ami.parser import AmiMessage, MessageSplitter

SESSION_EVENTS = frozenset({"FullyBooted", "SuccessfulAuth"})

T = TypeVar("T")


@dataclass
class TimedMessage:
    """A recorded message and when (seconds from the recording's start) it arrived."""

    at: float
    message: AmiMessage


def is_session_message(message: AmiMessage) -> bool:
    """Messages of the recording session itself, not of any call."""
    return "Event" not in message or message["Event"] in SESSION_EVENTS


def _without_session(items: Iterable[tuple[T, AmiMessage]]) -> Iterator[tuple[T, AmiMessage]]:
    """Drop responses, the event lists answering them and the session's own events."""
    answered_ids: set[str] = set()
    for tag, message in items:
        if "Event" not in message:
            if "ActionID" in message:
                answered_ids.add(message["ActionID"])
            continue
        if message.get("ActionID") in answered_ids or message["Event"] in SESSION_EVENTS:
            continue
        yield tag, message


def recorded_events(messages: Sequence[AmiMessage]) -> list[AmiMessage]:
    """A recording's events without its banner, responses and their event lists."""
    return [message for _, message in _without_session((None, m) for m in messages)]


def load_trace(path: str | Path) -> list[TimedMessage]:
    """A recorded `.ami` file as events with times, without its banner and responses.

    Times come from the `.ami.timing` file beside it (per TCP read) when there is
    one, else from the events' Timestamp headers. Event lists answering the
    recording session's own actions are left out too.
    """
    path = Path(path)
    data = path.read_bytes()
    timing = Path(str(path) + ".timing")
    chunks: list[tuple[float | None, bytes]] = []
    if timing.exists():
        for line in timing.read_text().split("\n"):
            if line.strip():
                at, offset, length = line.split()
                chunks.append((float(at), data[int(offset):int(offset) + int(length)]))
    else:
        chunks.append((None, data))
    splitter = MessageSplitter()

    def messages() -> Iterator[tuple[float | None, AmiMessage]]:
        for chunk_at, chunk in chunks:
            for message in splitter.feed(chunk):
                yield chunk_at, message

    out: list[TimedMessage] = []
    first_stamp: float | None = None
    for chunk_at, message in _without_session(messages()):
        when = chunk_at
        if when is None:
            stamp = float(message.get("Timestamp") or first_stamp or 0.0)
            first_stamp = stamp if first_stamp is None else first_stamp
            when = stamp - first_stamp
        out.append(TimedMessage(when, message))
    return out
