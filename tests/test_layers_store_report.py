"""The report and the store's modules load nothing above them or beside their job."""

from __future__ import annotations

import subprocess
import sys

import pytest

LIST_MODULES = ("import sys, {module}; "
                "print(' '.join(m for m in sys.modules if m.startswith('callhub')))")


@pytest.mark.parametrize(("module", "foreign"), [
    # report sits on the store: no API module, no command-line module
    ("callhub.report", ("callhub.api", "callhub.routing", "callhub.desk", "callhub.cli",
                        "callhub.store.cli")),
    # tables defines tables only (no cycle through the follow-ups logic)
    ("callhub.store.tables", ("callhub.store.followups", "callhub.config")),
    # the chunking helpers need neither the worklist nor saving
    ("callhub.store.chunks", ("callhub.store.worklist", "callhub.store.save")),
    # saving calls gets its chunking helpers from their own module
    ("callhub.store.save", ("callhub.api", "callhub.store.cli")),
])
def test_a_module_loads_nothing_above_or_beside_it(module: str, foreign: tuple[str, ...]) -> None:
    done = subprocess.run([sys.executable, "-c", LIST_MODULES.format(module=module)],
                          capture_output=True, text=True, timeout=60, check=True)
    loaded = done.stdout.split()
    assert module in loaded
    assert not [m for m in loaded if m.startswith(foreign)], loaded
