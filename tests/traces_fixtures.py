"""The recorded Asterisk traces in ../shared/traces and helpers to use them in tests."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from callhub.ami.correlator import Correlator
from callhub.ami.groundtruth import load_truth, pbx_from_truth
from callhub.ami.parser import AmiMessage, iter_file_messages
from callhub.config import PbxConfig
from callhub.records import CallRecord

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


def only_record(name: str, messages: list[AmiMessage]) -> CallRecord:
    """The one call `messages` (a trace's, changed) make, with the trace's PBX; no call
    left open."""
    correlator = Correlator(trace_pbx(name))
    records = [r for m in messages for r in correlator.feed(m)]
    assert correlator.active_calls == 0, "a call stayed open"
    (record,) = records
    return record


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


# -- the same calls as Asterisk 18 with chan_sip would report them ------------------------

CHAN_SIP_BANNER = "Asterisk Call Manager/7.0.3"  # AMI of Asterisk 18
_TECH_CAUSE_BUSY = "486"


def as_chan_sip(messages: list[AmiMessage]) -> list[AmiMessage]:
    """A chan_pjsip trace rewritten as Asterisk 18 with chan_sip (no `call-limit`) reports
    the same calls; no chan_sip recording exists here, so exactly these differences:

    - channels and interfaces `PJSIP/...` are `SIP/...` (same `-0000002a` suffix form);
    - a new SIP channel starts `Down` (state 0) and goes `Ring` (4) by a `Newstate` right
      after its `Newchannel` (chan_pjsip creates an incoming one in `Ring`);
    - no `TechCause` header (chan_pjsip's SIP response code);
    - a caller's CANCEL ends its channel with cause 16 (chan_pjsip says 127);
    - no `HangupRequest` on a dialled channel that answered 486 Busy (chan_sip raises BUSY
      as a control frame, not a queued hangup);
    - no `QueueMemberStatus` and no `DeviceStateChange` of a SIP device: without
      `call-limit` chan_sip reports every peer NOT_INUSE all the time, so its state never
      changes.
    """
    renamed = rewritten(messages, {"PJSIP/": "SIP/"})
    dialled = {m.get("DestChannel") for m in renamed if m.get("Event") == "DialBegin"}
    out: list[AmiMessage] = []
    for m in renamed:
        event = m.get("Event")
        channel = m.get("Channel", "")
        sip = channel.startswith("SIP/")
        if event == "QueueMemberStatus" or (
                event == "DeviceStateChange" and m.get("Device", "").startswith("SIP/")):
            continue
        if (event == "HangupRequest" and channel in dialled
                and m.get("TechCause") == _TECH_CAUSE_BUSY):
            continue
        m = {k: v for k, v in m.items() if k != "TechCause"}
        if event in ("Hangup", "HangupRequest", "SoftHangupRequest") and sip \
                and m.get("Cause") == "127":
            m = {**m, "Cause": "16", "Cause-txt": "Normal Clearing"}
        if event == "Newchannel" and sip and m.get("ChannelStateDesc") == "Ring":
            out.append({**m, "ChannelState": "0", "ChannelStateDesc": "Down"})
            m = like(m, "Newstate", ChannelState="4", ChannelStateDesc="Ring")
        out.append(m)
    return out


def chan_sip_truth(truth: dict[str, Any]) -> dict[str, Any]:
    """A trace's ground truth with its interfaces renamed as `as_chan_sip` renames them."""
    renamed: dict[str, Any] = json.loads(json.dumps(truth).replace("PJSIP/", "SIP/"))
    return renamed
