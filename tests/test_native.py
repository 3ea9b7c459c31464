"""The AMI hot path runs compiled only when built from the very source beside it, and the
Python fallback gives the same records (callhub/ami/native.py, setup.py)."""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from traces_fixtures import all_traces

from callhub.ami import native, parser

ROOT = Path(__file__).resolve().parent.parent
MODULES = ("pkg.fast", "pkg.faster")


def build(directory: Path, *, compiled: tuple[str, ...] = ("fast", "faster")) -> Path:
    """A package directory as setup.py leaves one: sources, extensions (empty files: found,
    never loaded, by `decide`), and the record of what was compiled."""
    directory.mkdir(parents=True)
    for name in ("fast", "faster"):
        (directory / f"{name}.py").write_text(f"NAME = {name!r}\n")
    for name in compiled:
        (directory / f"{name}{importlib.machinery.EXTENSION_SUFFIXES[0]}").touch()
    record = {f"pkg.{name}": hashlib.sha256((directory / f"{name}.py").read_bytes())
              .hexdigest() for name in ("fast", "faster")}
    (directory / native.RECORD).write_text(json.dumps(record))
    return directory


def test_compiled_from_these_sources_runs_compiled(tmp_path: Path) -> None:
    choice = native.decide(build(tmp_path / "pkg"), MODULES, environ={})
    assert (choice.runs, choice.stale) == ("compiled", False)


def test_a_source_edited_since_it_was_compiled_runs_as_python(tmp_path: Path) -> None:
    directory = build(tmp_path / "pkg")
    with (directory / "faster.py").open("a") as source:
        source.write("# a developer's change\n")
    choice = native.decide(directory, MODULES, environ={})
    assert (choice.runs, choice.stale) == ("python", True)
    assert "pkg.faster changed" in choice.reason


def test_a_missing_record_or_a_partial_build_runs_as_python(tmp_path: Path) -> None:
    directory = build(tmp_path / "pkg")
    (directory / native.RECORD).write_text("{not json")
    assert native.decide(directory, MODULES, environ={}).stale
    partial = build(tmp_path / "partial" / "pkg", compiled=("fast",))
    choice = native.decide(partial, MODULES, environ={})
    assert (choice.runs, choice.stale) == ("python", True)
    assert "pkg.faster" in choice.reason


def test_not_compiled_or_asked_for_python_is_not_stale(tmp_path: Path) -> None:
    plain = native.decide(build(tmp_path / "pkg", compiled=()), MODULES, environ={})
    assert (plain.runs, plain.stale) == ("python", False)
    asked = native.decide(build(tmp_path / "asked" / "pkg"), MODULES,
                          environ={native.PURE_PYTHON: "1"})
    assert (asked.runs, asked.stale) == ("python", False)
    assert native.PURE_PYTHON in asked.reason


def run(code: str, env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, cwd=cwd,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


LOADED = ("import json; from callhub.ami import native, parser, correlator; "
          "print(json.dumps([native.CHOSEN.runs, native.CHOSEN.stale, "
          "parser.__file__, correlator.__file__]))")


@pytest.mark.skipif(not native.compiled_modules(),
                    reason="callhub was installed without its compiled modules (no C "
                           "compiler, or CALLHUB_PURE_PYTHON=1): nothing to find stale")
def test_an_installed_copy_whose_correlator_was_edited_runs_its_source(tmp_path: Path) -> None:
    """As an operator patching an installed callhub would: the edit is what runs."""
    copy = tmp_path / "site" / "callhub"
    shutil.copytree(ROOT / "callhub", copy, ignore=shutil.ignore_patterns("__pycache__"))
    with (copy / "ami" / "correlator.py").open("a") as source:
        source.write("\nPATCHED = True\n")
    code = LOADED + "; assert correlator.PATCHED"
    runs, stale, parser_file, correlator_file = json.loads(
        run(code, {"PYTHONPATH": str(tmp_path / "site")}, tmp_path))
    assert (runs, stale) == ("python", True)
    assert parser_file == str(copy / "ami" / "parser.py")  # the two go together
    assert correlator_file == str(copy / "ami" / "correlator.py")


def test_the_python_fallback_passes_the_parser_correlator_and_trace_tests(
        tmp_path: Path) -> None:
    """CALLHUB_PURE_PYTHON=1 (or an install without a C compiler) runs the same source as
    Python: every trace still replays to its ground truth, every parser case holds."""
    env = {native.PURE_PYTHON: "1"}
    runs, stale, parser_file, correlator_file = json.loads(run(LOADED, env, tmp_path))
    assert (runs, stale) == ("python", False)
    assert parser_file.endswith("parser.py") and correlator_file.endswith("correlator.py")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
         "tests/test_parser.py", "tests/test_traces.py", "tests/test_correlator.py"],
        env={**os.environ, **env}, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout.splitlines()[-1]


def parser_from_source() -> ModuleType:
    """callhub/ami/parser.py imported as Python under a name of its own, beside the build."""
    spec = importlib.util.spec_from_file_location("parser_from_source",
                                                  ROOT / "callhub" / "ami" / "parser.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while defining
    spec.loader.exec_module(module)
    return module


SOURCE = parser_from_source()
REAL = b"".join(path.read_bytes() for path in all_traces()[:12])


def split_all(module: ModuleType, chunks: list[bytes], events: frozenset[str] | None
              ) -> tuple[list[list[dict[str, str]]], int, int, int, str | None]:
    wanted = None if events is None else module.EventFilter(events, frozenset({"A"}))
    splitter = module.MessageSplitter(max_message_bytes=4096, wanted=wanted)
    out = [splitter.feed(chunk) for chunk in chunks]
    return out, splitter.messages, splitter.malformed, splitter.skipped, splitter.banner


@pytest.mark.skipif(native.CHOSEN.runs != "compiled",
                    reason="the AMI hot path runs as Python here: nothing to compare it with")
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), events=st.none() | st.sampled_from(
    [frozenset(), frozenset({"Newchannel", "Hangup", "VarSet"}), frozenset({"DialBegin"})]))
def test_the_compiled_splitter_splits_as_its_source_does(data: st.DataObject,
                                                         events: frozenset[str] | None) -> None:
    """Hostile bytes, real traces cut anywhere, oversized messages: the same messages, counts
    and banner from the compiled splitter as from the source it was built from."""
    assert parser.__file__ is not None and not parser.__file__.endswith(".py")
    start = data.draw(st.integers(0, len(REAL) - 1))
    stream = data.draw(st.sampled_from([
        REAL[start:start + 20_000],
        b"Asterisk Call Manager/11.0.0\r\n" + REAL[start:start + 5_000],
    ])) + data.draw(st.binary(max_size=600)) + data.draw(st.sampled_from(
        [b"", b"Event: X\r\n" + b"k" * 5000 + b"\r\n\r\n", b"Key:no space\r\n\r\n",
         "Event: VarSet\r\nVariable: A\r\nValue: 张三\r\n\r\n".encode()]))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=40)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert split_all(parser, chunks, events) == split_all(SOURCE, chunks, events)
