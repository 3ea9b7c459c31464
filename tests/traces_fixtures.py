"""The recorded Asterisk traces in ../shared/traces and helpers to use them in tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from callhub.ami.groundtruth import load_truth, pbx_from_truth
from callhub.ami.parser import AmiMessage, iter_file_messages
from callhub.config import PbxConfig

TRACES_DIR = Path(os.environ.get(
    "CALLHUB_TRACES_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "traces"))


def all_traces() -> list[Path]:
    """Every recorded trace; a trace added to the folder is picked up without code changes."""
    traces = sorted(TRACES_DIR.glob("*.ami"))
    if not traces:
        raise RuntimeError(f"no traces in {TRACES_DIR}: set CALLHUB_TRACES_DIR")
    return traces


def trace(name: str) -> Path:
    """One trace by its file name without `.ami` (e.g. '01_answered_caller_hangup')."""
    return TRACES_DIR / f"{name}.ami"


def trace_messages(name: str) -> list[AmiMessage]:
    return list(iter_file_messages(trace(name)))


def trace_pbx(name: str) -> PbxConfig:
    return pbx_from_truth(load_truth(trace(name)))


@pytest.fixture(scope="session")
def traces_dir() -> Path:
    return TRACES_DIR


# -- rewriting recorded events into cases no trace shows --------------------------------


def stamped(messages: list[AmiMessage]) -> list[AmiMessage]:
    """The events of a trace (every event has a Timestamp; responses and the banner do not)."""
    return [m for m in messages if "Timestamp" in m]


def rewritten(messages: list[AmiMessage], renames: dict[str, str]) -> list[AmiMessage]:
    """Copies with every header value's substrings renamed (channels, ids, contexts)."""
    def value(v: str) -> str:
        for old, new in renames.items():
            v = v.replace(old, new)
        return v
    return [{k: value(v) for k, v in m.items()} for m in messages]


def shifted(messages: list[AmiMessage], seconds: float) -> list[AmiMessage]:
    """Copies stamped `seconds` later."""
    return [{**m, "Timestamp": f"{float(m['Timestamp']) + seconds:.6f}"} for m in messages]


def merged_by_time(*streams: list[AmiMessage]) -> list[AmiMessage]:
    """Several event streams interleaved by Timestamp (each stream keeps its order)."""
    keyed = [(float(m["Timestamp"]), n, i, m) for n, stream in enumerate(streams)
             for i, m in enumerate(stream)]
    return [m for *_, m in sorted(keyed, key=lambda x: x[:3])]


def about(m: AmiMessage, *channels: str) -> bool:
    """True when an event names one of `channels` (a name or a unique part of one)."""
    return any(c in m.get(k, "") for c in channels
               for k in ("Channel", "DestChannel", "TargetChannel"))


def first(messages: list[AmiMessage], event: str, *channels: str) -> int:
    """Index of the first `event` about one of `channels` (any channel if none given)."""
    return next(i for i, m in enumerate(messages) if m.get("Event") == event
                and (not channels or about(m, *channels)))


def like(m: AmiMessage, event: str, **headers: str) -> AmiMessage:
    """A copy of a recorded event turned into another kind, with headers replaced."""
    return {**m, "Event": event, **headers}
