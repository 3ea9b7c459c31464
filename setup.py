"""The build: callhub is Python; its AMI hot path is also compiled with mypyc where it can be.

Every event of every PBX passes through `callhub.ami.parser` and
`callhub.ami.correlator`; compiled by mypyc (from the same typed source, no
second implementation) they take about a third less CPU an event
(bench/README.md). The compiled modules are optional: without a C compiler,
or with CALLHUB_PURE_PYTHON=1 at install, the build skips them and the same
source runs as Python. Next to the compiled modules the build writes
`native.json`, the SHA-256 of each source it compiled, so that an edited
source is run as it is now rather than as it was compiled
(`callhub/ami/native.py`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

NATIVE = ["callhub/ami/parser.py", "callhub/ami/correlator.py"]
GROUP = "callhub.ami.native"  # the shared library of both: callhub/ami/native__mypyc.*.so
RECORD = "native.json"


def source_hashes() -> dict[str, str]:
    """module name -> SHA-256 of its source, as compiled."""
    return {path.removesuffix(".py").replace("/", "."):
            hashlib.sha256(Path(path).read_bytes()).hexdigest() for path in NATIVE}


class BuildNative(build_ext):
    """build_ext that also writes the record of the sources it compiled."""

    def run(self) -> None:
        super().run()
        if not self.extensions:
            return
        record = json.dumps(source_hashes(), indent=1, sort_keys=True) + "\n"
        places = {Path(self.build_lib) / "callhub" / "ami"}
        if self.inplace or getattr(self, "editable_mode", False):
            places.add(Path("callhub") / "ami")
        for place in places:
            place.mkdir(parents=True, exist_ok=True)
            (place / RECORD).write_text(record)


def native_extensions() -> list[object]:
    """The mypyc extensions, each optional (a failed compile leaves Python); none when
    CALLHUB_PURE_PYTHON is set."""
    if os.environ.get("CALLHUB_PURE_PYTHON", "") not in ("", "0"):
        return []
    from mypyc.build import mypycify

    # The build environment has none of callhub's dependencies: their types are Any to mypyc
    # (the sources' own types are what it compiles), and only the compiled files' errors count.
    options = ["--ignore-missing-imports", "--follow-imports=silent"]
    extensions = mypycify([*options, *NATIVE], group_name=GROUP, opt_level="3")
    for extension in extensions:
        extension.optional = True
    return list(extensions)


setup(ext_modules=native_extensions(), cmdclass={"build_ext": BuildNative})
