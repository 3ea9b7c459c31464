"""The AMI hot path as mypyc compiled it, or as its source says when the two differ.

setup.py compiles `callhub.ami.parser` and `callhub.ami.correlator` where it
can: every event of every PBX passes through both, and compiled they take
about a third less CPU an event (bench/README.md). It writes `native.json`
beside them, the SHA-256 of each source it compiled. A compiled module
shadows its `.py`, so a source edited since (a developer's change, a patched
install) would silently run as it was compiled. `select`, run once when
`callhub.ami` is imported, compares the record with the sources; when one
differs, or CALLHUB_PURE_PYTHON=1 asks, both modules are imported from their
source (the two go together: the compiled correlator was built against the
compiled parser's classes). `CHOSEN` says what runs; the daemon logs it.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Literal

MODULES = ("callhub.ami.parser", "callhub.ami.correlator")
RECORD = "native.json"
PURE_PYTHON = "CALLHUB_PURE_PYTHON"
HERE = Path(__file__).parent


@dataclass(frozen=True, slots=True)
class Choice:
    """What runs the hot path: `compiled`, or `python` and why."""

    runs: Literal["compiled", "python"]
    reason: str
    stale: bool = False  # compiled from another source: a reinstall compiles this one


def compiled_modules(directory: Path = HERE, modules: Sequence[str] = MODULES) -> list[str]:
    """Those of `modules` that an import would load from a compiled extension."""
    found = []
    for name in modules:
        spec = importlib.machinery.PathFinder.find_spec(name, [str(directory)])
        origin = spec.origin if spec is not None else None
        if origin and origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
            found.append(name)
    return found


def source_of(name: str, directory: Path = HERE) -> Path:
    return directory / f"{name.rpartition('.')[2]}.py"


def decide(directory: Path = HERE, modules: Sequence[str] = MODULES,
           environ: Mapping[str, str] = os.environ) -> Choice:
    """Compiled only when every module is, from the very source beside it."""
    compiled = compiled_modules(directory, modules)
    if not compiled:
        return Choice("python", "not compiled (no C compiler at install, or "
                                f"{PURE_PYTHON}=1 then)")
    if environ.get(PURE_PYTHON, "") not in ("", "0"):
        return Choice("python", f"{PURE_PYTHON}={environ[PURE_PYTHON]}")
    if len(compiled) != len(modules):
        missing = sorted(set(modules) - set(compiled))
        return Choice("python", f"only part compiled ({', '.join(missing)} not)", stale=True)
    try:
        record = json.loads((directory / RECORD).read_text())
    except (OSError, ValueError) as exc:
        return Choice("python", f"{RECORD} unreadable ({type(exc).__name__})", stale=True)
    for name in modules:
        try:
            digest = hashlib.sha256(source_of(name, directory).read_bytes()).hexdigest()
        except OSError:
            continue  # installed without its source: nothing it could differ from
        if record.get(name) != digest:
            return Choice("python", f"{name} changed since it was compiled", stale=True)
    return Choice("compiled", "built from these sources")


class _FromSource(importlib.abc.MetaPathFinder):
    """Finds the given modules' `.py`, ahead of the compiled extensions beside them."""

    def __init__(self, sources: Mapping[str, Path]) -> None:
        self.sources = dict(sources)

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        source = self.sources.get(fullname)
        return importlib.util.spec_from_file_location(fullname, source) if source else None


def select() -> Choice:
    """Decide, and when the answer is Python, make the imports of MODULES load source."""
    choice = decide()
    if choice.runs == "python" and compiled_modules():
        sys.meta_path.insert(0, _FromSource({name: source_of(name) for name in MODULES}))
    return choice


CHOSEN = select()
