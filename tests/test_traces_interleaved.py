"""Property: recorded calls interleaved at random give each call the record it has alone.

Hypothesis picks several recorded traces of one set-up (the same trace may come
twice), gives every copy fresh ids (Uniqueid/Linkedid, channel suffixes, bridge
ids) and a start time of its own, merges them by time as a PBX would emit
them, serialises the stream to AMI bytes, cuts it at random byte positions and
feeds the pieces through MessageSplitter (with the correlator's event filter)
and one Correlator. Every call must come out exactly as when its trace is
replayed alone, once its ids and times are mapped back, and nothing else. The SIP
traces rewritten as Asterisk 18 with chan_sip reports them are a set-up too.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Callable
from functools import cache

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from traces_fixtures import (
    all_traces,
    as_chan_sip,
    chan_sip_truth,
    merged_by_time,
    stamped,
    trace,
    trace_messages,
    trace_pbx,
)

from callhub.ami.correlator import Correlator
from callhub.ami.groundtruth import load_truth, pbx_from_truth
from callhub.ami.parser import AmiMessage, MessageSplitter
from callhub.config import PbxConfig
from callhub.records import CallRecord
from callhub.sim.ami_server import format_message

_ID = re.compile(r"\d+\.\d+")
_SUFFIX = re.compile(r"-([0-9a-f]{8})(?=;[12]$|$)")
BANNER = b"Asterisk Call Manager/11.0.0\r\n"


SIP18 = "chan_sip:"  # prefix of a trace name played as Asterisk 18 with chan_sip


@cache
def _setups() -> dict[str, list[str]]:
    """Trace names grouped by the PBX settings they replay with (one correlator each);
    the SIP traces also as chan_sip reports them (`as_chan_sip`), a set-up of its own."""
    groups: dict[str, list[str]] = {}
    for path in all_traces():
        groups.setdefault(repr(trace_pbx(path.stem)), []).append(path.stem)
        if "PJSIP/" in repr(trace_pbx(path.stem)):
            groups.setdefault("chan_sip", []).append(SIP18 + path.stem)
    return groups


def _events(name: str) -> list[AmiMessage]:
    if name.startswith(SIP18):
        return stamped(as_chan_sip(trace_messages(name.removeprefix(SIP18))))
    return stamped(trace_messages(name))


def _pbx(name: str) -> PbxConfig:
    if name.startswith(SIP18):
        truth = chan_sip_truth(load_truth(trace(name.removeprefix(SIP18))))
        return pbx_from_truth(truth)
    return trace_pbx(name)


@cache
def _alone(name: str) -> tuple[CallRecord, ...]:
    correlator = Correlator(_pbx(name))
    return tuple(r for m in _events(name) for r in correlator.feed(m))


@dataclasses.dataclass
class _Copy:
    """One trace copied with fresh ids, `shift` seconds later."""

    name: str
    shift: float
    ids: dict[str, str]  # original id -> fresh id (Uniqueid/Linkedid)
    events: list[AmiMessage]


def fresh_copy(name: str, start: float, fresh: Callable[[], int]) -> _Copy:
    """The trace's events with every id renamed consistently and times moved to `start`."""
    events = _events(name)
    shift = start - float(events[0]["Timestamp"])
    ids: dict[str, str] = {}
    suffixes: dict[str, str] = {}
    bridges: dict[str, str] = {}

    def new_id(match: re.Match[str]) -> str:
        return ids.setdefault(match.group(0), f"2000000000.{fresh()}")

    def new_suffix(match: re.Match[str]) -> str:
        return "-" + suffixes.setdefault(match.group(1), f"{fresh():08x}")

    def value(key: str, v: str) -> str:
        lower = key.lower()
        if key == "Timestamp":
            return f"{float(v) + shift:.6f}"
        if "bridge" in lower:
            return bridges.setdefault(v, f"bridge-{fresh()}") if v else v
        if lower.endswith(("uniqueid", "linkedid")):
            return _ID.sub(new_id, v)
        if "channel" in lower:
            return _SUFFIX.sub(new_suffix, v)
        return v

    copied = [{k: value(k, v) for k, v in m.items()} for m in events]
    return _Copy(name, shift, ids, copied)


def moved(record: CallRecord, seconds: float, linkedid: str) -> CallRecord:
    """A record `seconds` earlier under `linkedid`, times to the millisecond (the float
    noise of a shift)."""
    def t(value: float | None) -> float | None:
        return None if value is None else round(value - seconds, 3)

    return dataclasses.replace(
        record, linkedid=linkedid,
        arrived_at=t(record.arrived_at), ring_started_at=t(record.ring_started_at),
        answered_at=t(record.answered_at), ended_at=t(record.ended_at),
        attempts=[dataclasses.replace(a, offered_at=t(a.offered_at),
                                      ring_started_at=t(a.ring_started_at),
                                      ended_at=t(a.ended_at)) for a in record.attempts],
        transfers=[dataclasses.replace(x, at=t(x.at)) for x in record.transfers])


def unshifted(record: CallRecord, copy: _Copy) -> CallRecord:
    """A copy's record with its ids and times mapped back to the original trace's."""
    back = {new: old for old, new in copy.ids.items()}
    return moved(record, copy.shift, back[record.linkedid])


def feed_in_pieces(pbx: PbxConfig, data: bytes, cuts: list[int]) -> tuple[list[CallRecord],
                                                                           Correlator]:
    correlator = Correlator(pbx)
    splitter = MessageSplitter(wanted=correlator.event_filter())
    records: list[CallRecord] = []
    bounds = [0, *sorted(c for c in set(cuts) if 0 < c < len(data)), len(data)]
    for begin, end in itertools.pairwise(bounds):
        for message in splitter.feed(data[begin:end]):
            records.extend(correlator.feed(message))
    assert splitter.malformed == 0
    return records, correlator


@st.composite
def interleavings(draw: st.DrawFn) -> tuple[str, list[tuple[str, float]], list[int]]:
    setup = draw(st.sampled_from(sorted(_setups())))
    names = draw(st.lists(st.sampled_from(_setups()[setup]), min_size=2, max_size=6))
    starts = draw(st.lists(st.integers(0, 30_000), min_size=len(names),
                           max_size=len(names)))
    cuts = draw(st.lists(st.integers(0, 2_000_000), max_size=60))
    return setup, [(n, s / 1000.0) for n, s in zip(names, starts, strict=True)], cuts


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(interleavings())
def test_interleaved_fresh_copies_of_recorded_calls_keep_their_records(
        case: tuple[str, list[tuple[str, float]], list[int]]) -> None:
    setup, picks, cuts = case
    counter = itertools.count(1)
    base = 1_900_000_000.0
    copies = [fresh_copy(name, base + start, lambda: next(counter)) for name, start in picks]
    stream = merged_by_time(*(c.events for c in copies))
    data = BANNER + b"".join(format_message(m) for m in stream)
    cuts = [c % len(data) for c in cuts]
    pbx = _pbx(_setups()[setup][0])
    records, correlator = feed_in_pieces(pbx, data, cuts)

    owner = {new: copy for copy in copies for new in copy.ids.values()}
    got: dict[tuple[int, str], CallRecord] = {}
    for record in records:
        copy = owner[record.linkedid]
        back = unshifted(record, copy)
        got[(copies.index(copy), back.linkedid)] = back
    expected = {(i, r.linkedid): moved(r, 0.0, r.linkedid) for i, copy in enumerate(copies)
                for r in _alone(copy.name)}
    assert len(records) == len(expected), "a call recorded twice, or a call too many"
    assert got == expected
    assert correlator.active_calls == 0 and correlator.orphans == 0
