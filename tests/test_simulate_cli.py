"""`callhub simulate` as an operator runs it: what it refuses before it listens, and how it
stops. Real processes: the command's own start-up and signal handling are what is tested."""

from __future__ import annotations

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
