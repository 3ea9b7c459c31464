"""`callhub simulate` as an operator runs it: what it refuses before it listens, and how it
stops. Real processes: the command's own start-up and signal handling are what is tested."""

from __future__ import annotations

import asyncio
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from ami_fixtures import SIM_SECRET, Collector, make_ingest, sim_pbx

from callhub.sim.ami_server import AmiSimulator

REPO = Path(__file__).resolve().parent.parent


def _two_gigabytes_at_most() -> None:
    """A simulator that should have refused its arguments and ran away instead ("--rate
    inf" took 20 GB) fails the test rather than the machine."""
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


def simulate(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """`callhub simulate ARGS` to its end (a simulator that listened instead is killed at
    `timeout`, failing the test)."""
    return subprocess.run([sys.executable, "-m", "callhub", "simulate",
                           "--listen", "127.0.0.1:0", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          preexec_fn=_two_gigabytes_at_most)


@pytest.mark.parametrize(("name", "content", "says"), [
    ("nothere.ami", None, "no such file '{path}'"),
    ("notes.ami", "a log line\nnot AMI at all\n", "no AMI events in {path} "
                                                   "(not a recorded AMI stream)"),
    ("traces", "", "'{path}' is a directory, not a trace"),
], ids=["missing", "not-ami", "directory"])
def test_a_trace_it_cannot_play_is_said_in_one_line_before_it_listens(
        tmp_path: Path, name: str, content: str | None, says: str) -> None:
    """As `callhub replay` says of its files; it listened, and the trace was read (or not
    found) only when a client logged in."""
    path = tmp_path / name
    if content == "":
        path.mkdir()
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    done = simulate("--trace", str(path))
    assert done.returncode == 2, done
    assert done.stdout == ""  # never "listening"
    assert done.stderr.splitlines() == ["callhub simulate: " + says.format(path=path)]


@pytest.mark.parametrize(("args", "says"), [
    # "inf" started every call at once in a loop no stop reached, until memory ran out.
    (("--mix", "--rate", "inf"), "argument --rate: must be above 0 and at most 60,000, "
                                 "got 'inf'"),
    (("--mix", "--rate", "nan/min"), "argument --rate: must be above 0 and at most 60,000, "
                                     "got 'nan'"),  # a traceback
    (("--agi", "127.0.0.1:9", "--agi-rate", "inf"),
     "argument --agi-rate: must be above 0 and at most 60,000, got 'inf'"),
    (("--mix", "--speed", "-1"), "argument --speed: must be 0 (as fast as possible) or "
                                 "above, got '-1'"),
    (("--mix", "--speed", "nan"), "argument --speed: must be 0 (as fast as possible) or "
                                  "above, got 'nan'"),
    (("--mix", "--kinds", "answered=0"),  # a traceback when the first call was chosen
     "argument --kinds: at least one kind needs a weight above 0"),
    (("--mix", "--kinds", "answered=1,busy=-1"),
     "argument --kinds: a weight is 0 or above, got 'busy=-1'"),
    (("--mix", "--kinds", "answered=inf,busy=1"),  # a traceback
     "argument --kinds: a weight is 0 or above, got 'answered=inf'"),
], ids=["rate-inf", "rate-nan", "agi-rate-inf", "speed-negative", "speed-nan", "kinds-zero",
        "kinds-negative", "kinds-inf"])
def test_a_number_it_cannot_play_is_a_usage_error(args: tuple[str, ...], says: str) -> None:
    done = simulate(*args)
    assert (done.returncode, done.stdout) == (2, ""), done
    assert done.stderr.splitlines()[-1] == f"callhub simulate: error: {says}"


HUNT = REPO / "callhub" / "sim" / "traces" / "06_huntgroup_rna_then_answer.ami"


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
@pytest.mark.parametrize("job", [("--trace", str(HUNT)), ("--mix",), ("--agi", "127.0.0.1:9")],
                         ids=["trace", "mix", "agi"])
async def test_a_stop_while_it_waits_for_a_login_is_quiet(
        stop: signal.Signals, job: tuple[str, ...]) -> None:
    """Every job waits for the first login; stopped then, it stops as at any other time:
    exit 0 and nothing on stderr. It logged "_GatheringFuture exception was never
    retrieved" with a traceback. The stop is sent as soon as it says it listens."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "callhub", "simulate", "--listen", "127.0.0.1:0", *job,
        "--log-level", "warning", cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        assert "listening on 127.0.0.1:" in line, line
    finally:
        proc.send_signal(stop)
        try:
            _, stderr = await asyncio.wait_for(proc.communicate(), 20)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError(f"simulate did not stop on {stop.name}") from None
    assert (proc.returncode, stderr.decode()) == (0, "")


async def test_a_mix_at_speed_0_plays_as_fast_as_possible() -> None:
    """As --speed's help says of 0; the mix took it for 1 and played in real time (twelve
    calls at the default 6 a minute: two minutes and more)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "callhub", "simulate", "--listen", "127.0.0.1:0", "--mix",
        "--speed", "0", "--max-calls", "12", "--seed", "5", "--secret", SIM_SECRET,
        "--log-level", "warning", cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    collector = Collector()
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        port = int(line.split("127.0.0.1:")[1].split()[0])
        ingest = make_ingest(sim_pbx(AmiSimulator(port=port)), collector)
        await ingest.start()
        try:
            await ingest.wait_connected(10)
            await collector.until(lambda: len(collector.records) >= 12, within=20)
        finally:
            await ingest.stop()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 20)
    assert (proc.returncode, stderr.decode()) == (0, "")
    assert len({r.linkedid for r in collector.records}) == 12
