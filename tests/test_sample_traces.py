"""The sample traces in callhub/sim/traces: one copy, the simulator's templates, and the
`replay` and `simulate` examples run on them from the repository as a newcomer types them."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from ami_fixtures import Collector, make_ingest

from callhub.ami.groundtruth import compare, load_truth, pbx_from_truth
from callhub.sim.recording import load_trace
from callhub.sim.templates import SCENARIOS, TRACES_DIR

REPO = Path(__file__).resolve().parents[1]
SAMPLES = Path("callhub/sim/traces")  # as the README writes it, from the repository's root
HUNT = SAMPLES / "06_huntgroup_rna_then_answer.ami"


def _shell_env() -> dict[str, str]:
    """The environment of a shell where `callhub` is this interpreter's command."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLHUB_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def test_the_templates_are_the_sample_traces() -> None:
    assert (REPO / SAMPLES).resolve() == TRACES_DIR.resolve()
    traces = sorted(TRACES_DIR.glob("*.ami"))
    assert traces
    for trace in traces:  # every sample carries its ground truth
        assert load_truth(trace)["expected"]["calls"]
    used = {name for s in SCENARIOS.values() for name in (s.local, s.pjsip) if name}
    assert used <= {t.stem for t in traces}


def test_replay_check_of_the_samples_as_written(tmp_path: Path) -> None:
    result = subprocess.run(
        ["sh", "-c", f"callhub replay --check {SAMPLES}/*.ami"], cwd=REPO, env=_shell_env(),
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    count = len(list((REPO / SAMPLES).glob("*.ami")))
    lines = result.stdout.splitlines()
    assert sum(line.startswith("ok ") for line in lines) == count
    assert lines[-1] == f"{count} of {count} traces match"


async def test_simulate_a_sample_trace_as_written() -> None:
    """`callhub simulate --trace` on a sample (docs/development.md's example, on a free port
    and ten times faster), read by callhub's own AMI client: the records are the trace's
    ground truth."""
    truth = load_truth(REPO / HUNT)
    proc = await asyncio.create_subprocess_exec(
        "sh", "-c", f"exec callhub simulate --trace {HUNT} --listen 127.0.0.1:0 --speed 10",
        cwd=REPO, env=_shell_env(), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    collector = Collector()
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        assert "listening on 127.0.0.1:" in line, line
        port = int(line.split("127.0.0.1:")[1].split()[0])
        pbx = replace(pbx_from_truth(truth), host="127.0.0.1", port=port,
                      username="callhub", secret="callhub-secret")  # simulate's defaults
        ingest = make_ingest(pbx, collector)
        await ingest.start()
        try:
            events = len(load_trace(REPO / HUNT))
            await collector.until(lambda: len(collector.events) >= events, within=30)
            await collector.until(
                lambda: len(collector.records) >= len(truth["expected"]["calls"]), within=10)
        finally:
            await ingest.stop()
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, stderr.decode()
    assert compare(collector.records, truth) == []
