"""The cost of one info log line: callhub's pipeline against the one it replaced.

callhub writes an info line per routed call (`fastagi.routed`) and per stored call
(`call.finished`). Its events are rendered by structlog (orjson) and written straight
to the stream (callhub/logs.py); the baseline, built here as it was until 2026-12-02,
handed each event to the standard library as a `LogRecord` for a `ProcessorFormatter`.
Both write the same JSON line to /dev/null; rounds alternate, medians are reported.
The last line is one JSON object.

    python bench/logs.py [--lines 50000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from collections.abc import Callable

import structlog

from callhub.logs import configure_logging


def callhub_pipeline(stream: object) -> None:
    configure_logging("info", stream=stream, json=True)  # type: ignore[arg-type]


def stdlib_pipeline(stream: object) -> None:
    """The pipeline before: structlog -> logging.Logger -> ProcessorFormatter -> json."""
    shared = [structlog.contextvars.merge_contextvars, structlog.stdlib.add_log_level,
              structlog.processors.TimeStamper(fmt="iso", utc=True)]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.stdlib.LoggerFactory(), cache_logger_on_first_use=False)
    handler = logging.StreamHandler(stream)  # type: ignore[arg-type]
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,
                    structlog.processors.JSONRenderer(ensure_ascii=False)]))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def per_line_us(setup: Callable[[object], None], lines: int) -> float:
    with open(os.devnull, "w", encoding="utf-8") as stream:
        setup(stream)
        log = structlog.get_logger("callhub.routing.fastagi")
        for _ in range(1000):  # warm
            log.info("fastagi.routed", line="hotline", result="routed", targets=3, ms=1.23,
                     channel="PJSIP/trunk-00000001", uniqueid="1.1", caller="*******0000")
        started = time.perf_counter()
        for _ in range(lines):
            log.info("fastagi.routed", line="hotline", result="routed", targets=3, ms=1.23,
                     channel="PJSIP/trunk-00000001", uniqueid="1.1", caller="*******0000")
        return (time.perf_counter() - started) / lines * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    ours: list[float] = []
    before: list[float] = []
    for _ in range(args.rounds):
        ours.append(per_line_us(callhub_pipeline, args.lines))
        before.append(per_line_us(stdlib_pipeline, args.lines))
        print(f"callhub {ours[-1]:.2f} µs a line, the pipeline before {before[-1]:.2f}",
              flush=True)
    result = {"lines": args.lines, "callhub_us_per_line": round(statistics.median(ours), 2),
              "before_us_per_line": round(statistics.median(before), 2)}
    result["ratio"] = round(result["before_us_per_line"] / result["callhub_us_per_line"], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
