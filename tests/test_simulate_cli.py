"""`callhub simulate` as an operator runs it: what it refuses before it listens, and how it
stops. Real processes: the command's own start-up and signal handling are what is tested."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def simulate(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """`callhub simulate ARGS` to its end (a simulator that listened instead is killed at
    `timeout`, failing the test)."""
    return subprocess.run([sys.executable, "-m", "callhub", "simulate",
                           "--listen", "127.0.0.1:0", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


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
