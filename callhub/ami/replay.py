"""`callhub replay`: recorded AMI streams through the correlator, records out.

Time comes from the events' own `Timestamp` headers; the clock only serves
events without one, and stale calls are closed by event time, so a replay
gives the same records however fast it runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

from callhub.ami.correlator import Correlator, event_time
from callhub.ami.groundtruth import compare, load_truth, pbx_from_truth, truth_path
from callhub.ami.parser import MessageSplitter, iter_file_messages
from callhub.argtypes import not_empty
from callhub.config import ConfigError, PbxConfig, load_settings
from callhub.records import CallRecord


class _EventClock:
    """The time of the last event seen: replay's injected clock."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def replay_messages(messages: Iterable[dict[str, str]], pbx: PbxConfig,
                    stale_after: float = 4 * 3600.0) -> Iterator[CallRecord]:
    """Feed messages through a fresh correlator; yield records as calls finish."""
    clock = _EventClock()
    correlator = Correlator(pbx, clock=clock, stale_after=stale_after)
    next_expiry = 0.0
    for message in messages:
        stamp = event_time(message.get("Timestamp"))
        if stamp is not None:
            clock.now = stamp
        yield from correlator.feed(message)
        if clock.now >= next_expiry:
            yield from correlator.expire(clock.now)
            next_expiry = clock.now + 60.0
    yield from correlator.flush()


def replay_file(path: str | Path, pbx: PbxConfig,
                splitter: MessageSplitter | None = None) -> list[CallRecord]:
    """Every record of one recorded `.ami` file."""
    return list(replay_messages(iter_file_messages(path, splitter), pbx))


def replay_files(paths: Iterable[str | Path], pbx: PbxConfig) -> list[CallRecord]:
    """Records of several files, each replayed on its own (their calls do not mix)."""
    return [record for path in paths for record in replay_file(path, pbx)]


def add_parser(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "replay", help="replay recorded AMI traces and print the call records",
        description="Feed recorded AMI streams (.ami files, every byte the AMI session "
                    "received) through the call correlator and print one record per call. "
                    "The PBX settings come from --config (first [[pbx]] or --pbx NAME); "
                    "without a config, a trace's ground-truth .json beside it supplies "
                    "them, else built-in defaults.")
    parser.add_argument("traces", nargs="+", metavar="TRACE.ami",
                        help="a recorded AMI stream, or a directory: every .ami file in it, "
                             "in name order")
    parser.add_argument("--pbx", metavar="NAME", type=not_empty,
                        help="which [[pbx]] of the config to use")
    parser.add_argument("--format", choices=("jsonl", "table"), default="jsonl",
                        help="one JSON object per call (default) or an aligned table")
    parser.add_argument("--check", action="store_true",
                        help="compare each trace with its ground-truth .json; exit 1 on a "
                             "difference")
    parser.set_defaults(func=replay_command)


def _pbx_for(trace: str, args: argparse.Namespace) -> PbxConfig:
    if args.config or args.pbx:
        settings = load_settings(args.config)
        if args.pbx:
            return settings.pbx(args.pbx)
        if not settings.pbxs:
            raise ConfigError("pbx: the config defines no [[pbx]] to replay with")
        return settings.pbxs[0]
    if truth_path(trace).exists():
        return pbx_from_truth(load_truth(trace))
    return PbxConfig(name="replay")


def trace_files(paths: list[str]) -> list[str]:
    """The traces named: a directory stands for its .ami files, in name order."""
    traces: list[str] = []
    for path in paths:
        if Path(path).is_dir():
            found = sorted(str(trace) for trace in Path(path).glob("*.ami") if trace.is_file())
            if not found:
                raise FileNotFoundError(f"no .ami traces in the directory {path!r}")
            traces.extend(found)
        elif Path(path).is_file():
            traces.append(path)
        else:
            raise FileNotFoundError(f"no such file {path!r}")
    return traces


def replay_command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    all_records: list[CallRecord] = []
    failures = 0
    try:
        traces = trace_files(args.traces)
    except FileNotFoundError as exc:
        print(f"callhub replay: {exc}", file=sys.stderr)
        return 2
    not_ami: list[str] = []
    for trace in traces:
        pbx = _pbx_for(trace, args)
        messages = _EventCount(iter_file_messages(trace))
        records = list(replay_messages(messages, pbx))
        if not messages.events:  # a binary, a log, the wrong file: not silently nothing
            print(f"callhub replay: no AMI events in {trace} (not a recorded AMI stream)",
                  file=sys.stderr)
            not_ami.append(trace)
            continue
        all_records.extend(records)
        if args.check:
            if not truth_path(trace).exists():
                print(f"{trace}: no ground truth beside it", file=sys.stderr)
                failures += 1
                continue
            problems = compare(records, load_truth(trace))
            failures += bool(problems)
            status = "ok" if not problems else "MISMATCH"
            print(f"{status:8} {trace}", file=out)
            for problem in problems:
                print(f"         {problem}", file=out)
    if args.check:
        print(f"{len(traces) - failures - len(not_ami)} of {len(traces)} traces match",
              file=out)
        return 2 if not_ami else 1 if failures else 0
    if args.format == "jsonl":
        for record in all_records:
            print(json.dumps(record.to_dict(), ensure_ascii=False), file=out)
    else:
        print_table(all_records, out)
    return 2 if not_ami else 0


class _EventCount:
    """The messages of a file, passed on, counting its AMI events (`Event:` headers)."""

    def __init__(self, messages: Iterable[dict[str, str]]) -> None:
        self._messages = messages
        self.events = 0

    def __iter__(self) -> Iterator[dict[str, str]]:
        for message in self._messages:
            self.events += "Event" in message
            yield message


TABLE_COLUMNS = ("linkedid", "direction", "called_number", "caller_number", "outcome", "reason",
                 "rings", "ring_seconds", "talk_seconds", "agent", "hangup_by")


def print_table(records: list[CallRecord], out: TextIO) -> None:
    rows = [[_cell(r.to_dict()[c]) for c in TABLE_COLUMNS] for r in records]
    widths = [max([len(c)] + [len(row[i]) for row in rows]) for i, c in enumerate(TABLE_COLUMNS)]
    print("  ".join(c.ljust(w) for c, w in zip(TABLE_COLUMNS, widths, strict=True)), file=out)
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip(), file=out)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)
