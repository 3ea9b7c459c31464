"""A large synthetic AMI stream for the benchmarks, cached on disk.

Calls come from `callhub.sim` (mix, calls): recorded Asterisk 22 calls (Local and
PJSIP set-ups) renamed and re-timed, so every event sequence is one a real
PBX produced. Two Poisson streams (Local channels with the full mix of
answered, abandoned, missed, busy, hunt, queue and outbound calls; PJSIP
channels with the kinds recorded over SIP) share one factory, so uniqueids
and channel suffixes never collide, and their events are merged by
Timestamp: calls overlap as on a busy desk. Caller names include UTF-8
(张三, Müller).

The stream file holds exactly what an AMI client would read after login
(no banner); the manifest beside it says how many events and calls it holds
and the expected outcome of every call, so a benchmark can prove nothing
was lost.
"""

from __future__ import annotations

import heapq
import itertools
import json
import os
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from callhub.config import PbxConfig
from callhub.sim.calls import CallFactory, SynthCall
from callhub.sim.mix import DEFAULT_MIX, MixSettings, generate_mix
from callhub.sim.templates import SCENARIOS

FORMAT_VERSION = 2
START = 1_780_000_000.0  # 2026-05-28, a fixed origin so the cached stream is reproducible
BANNER = b"Asterisk Call Manager/11.0.0\r\n"
END_EVENT = "BenchEnd"

LOCAL_AGENTS = {f"Local/agent{i}@agentsim": f"Agent {i}" for i in (1, 2, 3)} | {
    f"Local/200{i}@agentsim": f"Agent {i}" for i in (1, 2, 3)}
PJSIP_AGENTS = {f"PJSIP/100{i}": f"Agent {i}" for i in (1, 2, 3)}


def bench_pbx(**ami: Any) -> PbxConfig:
    """The PBX settings the stream is read with: both set-ups' agents, the traces' contexts."""
    return PbxConfig(name="bench", inbound_contexts=("from-pstn",),
                     outbound_contexts=("to-pstn",), voicemail_extensions=("voicemail",),
                     agents={**LOCAL_AGENTS, **PJSIP_AGENTS}, **ami)


def format_message(message: Mapping[str, str]) -> bytes:
    """AMI wire form: `Key: Value` lines and a blank line."""
    return ("".join(f"{k}: {v}\r\n" for k, v in message.items()) + "\r\n").encode("utf-8")


def end_marker() -> bytes:
    """The event the benchmark server sends after the stream: readers stop on it."""
    return format_message({"Event": END_EVENT, "Privilege": "system,all"})


@dataclass
class Manifest:
    """What a stream file holds."""

    path: Path
    events: int
    calls: int
    bytes: int
    kinds: dict[str, int]
    outcomes: dict[str, str]  # linkedid -> expected outcome
    seconds_of_traffic: float

    @property
    def expected_outcomes(self) -> Counter[str]:
        return Counter(self.outcomes.values())


def _calls(rate_per_minute: float, seed: int) -> Iterator[SynthCall]:
    """Local and PJSIP calls, start-ordered, from one factory (counters shared)."""
    factory = CallFactory(seed=seed, uniqueid_counter=1)
    local = generate_mix(START, MixSettings(rate_per_minute=rate_per_minute * 0.8,
                                            kinds=dict(DEFAULT_MIX)),
                         seed=seed, factory=factory)
    sip_kinds = {k: w for k, w in DEFAULT_MIX.items() if SCENARIOS[k].pjsip}
    sip = generate_mix(START, MixSettings(rate_per_minute=rate_per_minute * 0.2,
                                          kinds=sip_kinds),
                       seed=seed + 1, pjsip=True, factory=factory)
    return heapq.merge(local, sip, key=lambda c: c.start)


def write_stream(path: Path, events: int, *, seed: int = 1,
                 rate_per_minute: float = 30.0) -> Manifest:
    """Generate whole calls until at least `events` events; write them merged by time."""
    heap: list[tuple[float, int, int, SynthCall]] = []
    calls = _calls(rate_per_minute, seed)
    outcomes: dict[str, str] = {}
    kinds: Counter[str] = Counter()
    generated = written = size = 0
    seq = itertools.count()
    pending: SynthCall | None = next(calls)
    tmp = path.with_suffix(".part")
    first_ts = last_ts = START
    with open(tmp, "wb") as out:
        buf: list[bytes] = []
        while heap or pending is not None:
            # Admit every call that has started before the earliest pending event.
            while pending is not None and (not heap or pending.start <= heap[0][0]):
                heapq.heappush(heap, (float(pending.messages[0]["Timestamp"]), next(seq), 0,
                                      pending))
                outcomes[pending.linkedid] = str(pending.expected.get("outcome"))
                kinds[pending.kind] += 1
                generated += len(pending.messages)
                pending = next(calls) if generated < events else None
            at, _, index, call = heapq.heappop(heap)
            data = format_message(call.messages[index])
            buf.append(data)
            size += len(data)
            written += 1
            last_ts = at
            if index + 1 < len(call.messages):
                heapq.heappush(heap, (float(call.messages[index + 1]["Timestamp"]),
                                      next(seq), index + 1, call))
            if len(buf) >= 4096:
                out.write(b"".join(buf))
                buf.clear()
        out.write(b"".join(buf))
    os.replace(tmp, path)
    manifest = Manifest(path, written, len(outcomes), size, dict(kinds), outcomes,
                        last_ts - first_ts)
    _manifest_path(path).write_text(json.dumps({
        "version": FORMAT_VERSION, "events": written, "calls": len(outcomes), "bytes": size,
        "kinds": manifest.kinds, "outcomes": outcomes,
        "seconds_of_traffic": manifest.seconds_of_traffic}), "utf-8")
    return manifest


def _manifest_path(path: Path) -> Path:
    return path.with_suffix(".json")


def load_manifest(path: Path) -> Manifest | None:
    """The manifest of a stream file, None when missing, stale or of another version."""
    try:
        data = json.loads(_manifest_path(path).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    if data.get("version") != FORMAT_VERSION or not path.exists() or \
            path.stat().st_size != data["bytes"]:
        return None
    return Manifest(path, data["events"], data["calls"], data["bytes"], data["kinds"],
                    data["outcomes"], data["seconds_of_traffic"])


def default_cache_dir() -> Path:
    return Path(os.environ.get("CALLHUB_BENCH_CACHE",
                               Path(tempfile.gettempdir()) / "callhub-bench"))


def stream(events: int, *, seed: int = 1, rate_per_minute: float = 30.0,
           cache_dir: Path | None = None, log: Any = print) -> Manifest:
    """The stream of at least `events` events, generated once and then reused."""
    directory = cache_dir or default_cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"stream-v{FORMAT_VERSION}-{events}-s{seed}-r{rate_per_minute:g}.ami"
    manifest = load_manifest(path)
    if manifest is not None:
        log(f"stream: reusing {path} ({manifest.events} events, {manifest.calls} calls, "
            f"{manifest.bytes / 1e6:.0f} MB)")
        return manifest
    log(f"stream: generating >= {events} events into {path} ...")
    started = time.perf_counter()
    manifest = write_stream(path, events, seed=seed, rate_per_minute=rate_per_minute)
    log(f"stream: {manifest.events} events, {manifest.calls} calls, "
        f"{manifest.bytes / 1e6:.0f} MB, {manifest.seconds_of_traffic / 3600:.1f} h of "
        f"traffic, generated in {time.perf_counter() - started:.0f} s")
    return manifest
