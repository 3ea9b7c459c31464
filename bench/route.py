"""FastAGI routing latency: Asterisk's side of many AGI sessions against callhub's server.

Measures the round trip as the dialplan sees it (connect, environment, every
SET VARIABLE answered, close), sequentially and with N concurrent sessions,
and compares it with a bare TCP connect+close to the same loop as baseline.
Prints figures as it goes; the last line is one JSON object.

    python bench/route.py [--calls 2000] [--concurrency 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

from callhub.config import Settings
from callhub.logs import configure_logging
from callhub.routing.service import start_routing
from callhub.sim.agi_client import agi_request, asterisk_environment
from callhub.sim.demo_rota import demo_rota

AGENTS = {f"PJSIP/10{i:02d}": f"Agent {i}" for i in range(1, 9)}
LINES = {"hotline": ["4008001000"]}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def bare_connect(host: str, port: int) -> float:
    started = time.perf_counter()
    _, writer = await asyncio.open_connection(host, port)
    writer.close()
    await writer.wait_closed()
    return time.perf_counter() - started


async def main(calls: int, concurrency: int) -> dict[str, float]:
    service = await start_routing(Settings(), rota=demo_rota(AGENTS, LINES),
                                  host="127.0.0.1", port=0)
    assert service.address is not None
    host, port = service.address
    env = asterisk_environment(did="4008001000", caller="+8613800000001", port=port)
    try:
        sequential = []
        for _ in range(calls):
            answer = await agi_request(host, port, env)
            assert answer.answered, answer
            sequential.append(answer.seconds)
        print(f"sequential: {calls} routed calls, p50 {percentile(sequential, .5)*1e3:.2f} ms, "
              f"p99 {percentile(sequential, .99)*1e3:.2f} ms", flush=True)
        baseline = [await bare_connect(host, port) for _ in range(calls // 4)]
        print(f"baseline TCP connect+close: p50 {percentile(baseline, .5)*1e3:.2f} ms",
              flush=True)

        gate = asyncio.Semaphore(concurrency)

        async def one() -> float:
            async with gate:
                answer = await agi_request(host, port, env)
                assert answer.answered, answer
                return answer.seconds

        started = time.perf_counter()
        concurrent = await asyncio.gather(*(one() for _ in range(calls)))
        wall = time.perf_counter() - started
        print(f"{concurrency} concurrent: p50 {percentile(concurrent, .5)*1e3:.2f} ms, "
              f"p99 {percentile(concurrent, .99)*1e3:.2f} ms, {calls / wall:.0f} calls/s",
              flush=True)
    finally:
        await service.close()
    return {
        "calls": calls,
        "sequential_p50_ms": round(percentile(sequential, .5) * 1e3, 3),
        "sequential_p99_ms": round(percentile(sequential, .99) * 1e3, 3),
        "baseline_connect_p50_ms": round(statistics.median(baseline) * 1e3, 3),
        "ratio_p50_to_connect": round(percentile(sequential, .5) / statistics.median(baseline),
                                      2),
        "concurrent_p50_ms": round(percentile(concurrent, .5) * 1e3, 3),
        "concurrent_p99_ms": round(percentile(concurrent, .99) * 1e3, 3),
        "concurrent_calls_per_s": round(calls / wall, 1),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args()
    configure_logging("warning")
    print(json.dumps(asyncio.run(main(args.calls, args.concurrency))))
