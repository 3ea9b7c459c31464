"""The `callhub` command imports only the sub-command it runs, and lists them all."""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from callhub.cli import COMMANDS, build_parser, command_in


def _subcommand_helps(parser: argparse.ArgumentParser) -> dict[str, str | None]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {choice.dest: choice.help for choice in action._choices_actions}
    raise AssertionError("no sub-commands")


def test_the_listed_help_of_each_command_is_the_one_its_module_gives() -> None:
    full = _subcommand_helps(build_parser())
    listed = {name: summary for name, (_, summary) in COMMANDS.items()}
    assert full == listed


@pytest.mark.parametrize(("argv", "command"), [
    (["run"], "run"),
    (["--config", "run", "report", "--period", "day"], "report"),
    (["--config=x.toml", "db", "upgrade"], "db"),
    (["-h"], None),
    (["bogus", "run"], None),
    ([], None),
])
def test_the_command_is_found_before_parsing(argv: list[str], command: str | None) -> None:
    assert command_in(argv) == command


def _modules_after(argv: list[str], cwd: Path) -> tuple[int, set[str], str]:
    probe = ("import sys; from callhub.cli import main\n"
             "try:\n    code = main(sys.argv[1:])\n"
             "except SystemExit as exc:\n    code = exc.code\n"
             "loaded = [m for m in sys.modules if m.startswith('callhub')]\n"
             "print('\\n'.join(loaded), file=sys.stderr)\n"
             "raise SystemExit(code)\n")
    result = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True,
                            text=True, timeout=120, cwd=cwd)
    return result.returncode, set(result.stderr.split()), result.stdout


def test_a_command_imports_its_own_module_and_no_other_command(tmp_path: Path) -> None:
    config = tmp_path / "callhub.toml"
    config.write_text('database_url = "sqlite+aiosqlite:///calls.db"\n', encoding="utf-8")
    code, loaded, out = _modules_after(["config", "check", str(config)], tmp_path)
    assert code == 0, out
    assert "callhub.config_cli" in loaded
    others = {module for name, (module, _) in COMMANDS.items() if name != "config"}
    assert loaded & others == set()
    assert not any(m.startswith("callhub.sim") for m in loaded)


def test_help_lists_every_command_without_importing_them(tmp_path: Path) -> None:
    code, loaded, out = _modules_after(["--help"], tmp_path)
    assert code == 0
    for name, (module, summary) in COMMANDS.items():
        assert name in out and summary in out
        assert module not in loaded


def test_run_without_demo_loads_no_simulator(tmp_path: Path) -> None:
    """`callhub run --help` defines run in full; the simulator comes only with --demo."""
    code, loaded, out = _modules_after(["run", "--help"], tmp_path)
    assert code == 0 and "--demo" in out
    assert "callhub.run_cli" in loaded
    assert not any(m.startswith("callhub.sim") for m in loaded)


@pytest.mark.parametrize(("argv", "says"), [
    # The daemon started, then stopped on a ValueError (nan), or hung where SIGTERM did not
    # reach it (--demo-speed 0, --demo-rate inf).
    (["run", "--demo", "--demo-rate", "nan"], "--demo-rate: must be above 0 and at most"),
    (["run", "--demo", "--demo-rate", "inf"], "--demo-rate: must be above 0 and at most"),
    (["run", "--demo", "--demo-rate", "-5"], "--demo-rate: must be above 0 and at most"),
    (["run", "--demo", "--demo-rate", "ten"], "--demo-rate: expected a number, got 'ten'"),
    (["run", "--demo", "--demo-speed", "0"], "--demo-speed: must be above 0 and at most"),
    (["run", "--demo", "--demo-speed", "1e9"], "--demo-speed: must be above 0 and at most"),
    # An OverflowError traceback on SQLite; a negative LIMIT an error on PostgreSQL.
    (["db", "restore", "99999999999999999999999"], "ID: must be 1 to"),
    (["db", "restore", "0"], "ID: must be 1 to"),
    (["db", "quarantine", "--limit", "-1"], "--limit: must be 1 to"),
    (["db", "quarantine", "--limit", "0"], "--limit: must be 1 to"),
    (["report", "--rings", "0"], "--rings: must be 1 to 100"),
    (["run", "--workers", "65"], "--workers: must be 1 to 64"),
    (["report", "--rings", "3.5"], "--rings: expected a whole number, got '3.5'"),
])
def test_a_number_out_of_range_is_refused_before_anything_starts(
        argv: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert says in err and err.strip().splitlines()[-1].startswith("callhub ")


@pytest.mark.parametrize("argv", [["run", "--demo", "--demo-rate", "0.5", "--demo-speed", "1000"],
                                  ["db", "restore", str(2**63 - 1)],
                                  ["db", "quarantine", "--limit", "1"],
                                  ["report", "--rings", "100"],
                                  ["run", "--workers", "64"]])
def test_the_numbers_at_the_bounds_are_taken(argv: list[str]) -> None:
    build_parser().parse_args(argv)


SAMPLE_TRACES = Path(__file__).resolve().parent.parent / "callhub" / "sim" / "traces"


def test_output_into_a_pipe_nobody_reads_stops_quietly() -> None:
    """`callhub replay ... | head`: the reader gone, callhub ended in a BrokenPipeError
    traceback. It stops quietly now, with the exit status of a filter SIGPIPE ends."""
    traces = sorted(map(str, SAMPLE_TRACES.glob("*.ami")))
    read_end, write_end = os.pipe()
    os.close(read_end)  # gone before the first line: every write fails
    try:
        done = subprocess.run(
            [sys.executable, "-m", "callhub", "replay", *traces],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60, check=False)
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (141, "")


def test_a_broken_pipe_not_of_stdout_is_not_taken_for_a_reader_gone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Only stdout's reader gone makes callhub stop quietly: a BrokenPipeError of a socket
    or of another pipe, stdout fine, is a fault shown as it is."""
    from callhub import cli

    def broken(_args: argparse.Namespace) -> int:
        raise BrokenPipeError(32, "Broken pipe")  # a socket's, say

    monkeypatch.setattr(cli, "build_parser", lambda *_a, **_k: _parser_running(broken))
    with pytest.raises(BrokenPipeError):
        cli.main(["anything"])
    read_end, write_end = os.pipe()
    os.close(read_end)
    gone = os.fdopen(write_end, "w")
    try:
        monkeypatch.setattr(sys, "stdout", gone)
        assert cli._stdout_broken()  # and a stdout whose reader went away is
    finally:
        monkeypatch.undo()
        with contextlib.suppress(BrokenPipeError):  # what it holds cannot go
            gone.close()


def _parser_running(func: Any) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("word")
    parser.set_defaults(func=func)
    return parser
