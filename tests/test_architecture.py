"""The import graph of callhub/: no cycles, layers pointing one way, no simulator in the runtime.

Every module of the package is parsed with `ast` (nothing is imported), and every
`import` counts wherever it stands: at the top, inside a function, under
`if TYPE_CHECKING:`. The rules:

- no import cycle between modules, nor between packages (callhub.ami, callhub.routing...);
- layers, lowest first (`LAYERS`): a module imports only its own layer and the ones
  below, so ami and store know nothing of routing, api, desk or the simulator;
- no runtime module (anything but callhub.sim and the command modules) imports
  callhub.sim, and `import callhub.daemon` in a fresh interpreter loads none of it;
- command modules (one `callhub` sub-command each) are imported only by the command
  itself (`ENTRY_POINTS`): code below the command line does not depend on it;
- no module imports another module's private (`_name`) names.

Violations that other work is removing are listed in `KNOWN_VIOLATIONS`; the tests
fail on any violation not listed there, and on a listed one that no longer exists.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

import callhub
from callhub.cli import COMMANDS

PACKAGE_DIR = Path(callhub.__file__).resolve().parent

# Lowest first. A module belongs to the layer of the longest prefix naming it
# (`callhub.ami` covers callhub.ami.*); COMMAND_MODULES are on the top layer wherever
# they live. "callhub" is the package's own __init__ (the version).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("callhub", "callhub.config", "callhub.records", "callhub.logs", "callhub.loops",
              "callhub.lifecycle", "callhub.argtypes", "callhub.spreadsheet")),
    ("metrics", ("callhub.metrics",)),
    # The SMS after the call: the store decides and queues it in the call's transaction.
    ("sms", ("callhub.sms",)),
    ("ingestion and storage", ("callhub.ami", "callhub.store")),
    ("routing", ("callhub.routing",)),
    ("api", ("callhub.api",)),
    ("desk", ("callhub.desk",)),
    ("daemon, commands, simulator", ("callhub.report", "callhub.daemon", "callhub.sim")),
)
# The `callhub` command and the modules defining one of its sub-commands (`add_parser`).
ENTRY_POINTS = frozenset({"callhub.cli", "callhub.__main__"})
COMMAND_MODULES = ENTRY_POINTS | {module for module, _ in COMMANDS.values()}
SIMULATOR = "callhub.sim"

# Violations still present, each being removed by work in progress. This set must shrink
# to empty: never add to it; remove an entry when its import is gone (the tests say so).
KNOWN_VIOLATIONS: frozenset[tuple[str, ...]] = frozenset()


# -- the import graph -------------------------------------------------------------------


def module_name(path: Path, root: Path) -> str:
    """`<root>/ami/parser.py` -> `callhub.ami.parser`; a package's __init__ is the package."""
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@dataclass(frozen=True)
class Import:
    """One import statement's target: a module of the package, and the names taken from it."""

    importer: str
    module: str
    name: str | None  # `from module import name` when name is not a module itself
    line: int


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module of a `from ... import`, relative forms included."""
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    if not is_package:
        base = base[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_in(path: Path, root: Path, modules: Iterable[str]) -> Iterator[Import]:
    """Every import of a package module in the file, wherever it stands (top level,
    functions, TYPE_CHECKING blocks)."""
    known = set(modules)
    top = root.name
    importer = module_name(path, root)
    tree = ast.parse(path.read_text("utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == top or alias.name.startswith(top + "."):
                    yield Import(importer, _longest_known(alias.name, known), None, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(importer, path.name == "__init__.py", node)
            if not (source == top or source.startswith(top + ".")):
                continue
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in known:
                    yield Import(importer, submodule, None, node.lineno)
                else:
                    yield Import(importer, _longest_known(source, known), alias.name,
                                 node.lineno)


def _longest_known(name: str, known: set[str]) -> str:
    while name not in known and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def package_imports(root: Path) -> list[Import]:
    files = sorted(root.rglob("*.py"))
    modules = [module_name(f, root) for f in files]
    return [imp for f in files for imp in imports_in(f, root, modules)]


def import_graph(imports: Iterable[Import]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for imp in imports:
        graph.setdefault(imp.importer, set())
        graph.setdefault(imp.module, set())
        if imp.module != imp.importer:
            graph[imp.importer].add(imp.module)
    return graph


def cycles(graph: Mapping[str, set[str]]) -> list[tuple[str, ...]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[tuple[str, ...]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(tuple(sorted(component)))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


# -- the rules ----------------------------------------------------------------------------


def layer_of(module: str) -> int | None:
    if module in COMMAND_MODULES:
        return len(LAYERS) - 1
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for level, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or (prefix != "callhub"
                                           and module.startswith(prefix + "."))
            if matches and (best is None or len(prefix) > best[0]):
                best = (len(prefix), level)
    return None if best is None else best[1]


def package_of(module: str) -> str:
    """`callhub.ami.parser` -> `callhub.ami`; a top-level module is its own package."""
    return ".".join(module.split(".")[:2])


def in_simulator(module: str) -> bool:
    return module == SIMULATOR or module.startswith(SIMULATOR + ".")


def violations(imports: list[Import]) -> set[tuple[str, ...]]:
    """Every broken rule as a tuple: (rule, importer, imported), ("cycle", *modules) or
    ("package cycle", *packages)."""
    found: set[tuple[str, ...]] = {("cycle", *c) for c in cycles(import_graph(imports))}
    packages = import_graph(Import(package_of(i.importer), package_of(i.module), None, i.line)
                            for i in imports)
    found |= {("package cycle", *c) for c in cycles(packages)}
    for imp in imports:
        if imp.module == imp.importer:
            continue
        below, above = layer_of(imp.importer), layer_of(imp.module)
        if below is not None and above is not None and above > below:
            found.add(("upward", imp.importer, imp.module))
        if (in_simulator(imp.module) and not in_simulator(imp.importer)
                and imp.importer not in COMMAND_MODULES):
            found.add(("runtime imports the simulator", imp.importer, imp.module))
        if imp.module in COMMAND_MODULES and imp.importer not in ENTRY_POINTS:
            found.add(("command", imp.importer, imp.module))
        if imp.name is not None and imp.name.startswith("_") and not imp.name.startswith("__"):
            found.add(("private", imp.importer, f"{imp.module}.{imp.name}"))
    return found


@pytest.fixture(scope="module")
def imports() -> list[Import]:
    return package_imports(PACKAGE_DIR)


@pytest.fixture(scope="module")
def found(imports: list[Import]) -> set[tuple[str, ...]]:
    return violations(imports)


def _unlisted(found: set[tuple[str, ...]], rule: str) -> list[tuple[str, ...]]:
    return sorted(v for v in found - KNOWN_VIOLATIONS if v[0] == rule)


def test_every_module_has_a_layer(imports: list[Import]) -> None:
    modules = {module_name(f, PACKAGE_DIR) for f in PACKAGE_DIR.rglob("*.py")}
    assert len(modules) > 50 and "callhub.daemon" in modules
    assert sorted(m for m in modules if layer_of(m) is None) == []


def test_every_sub_command_module_is_a_command_module() -> None:
    """A module defining `add_parser` is a sub-command; it must be in COMMAND_MODULES."""
    defining = set()
    for path in PACKAGE_DIR.rglob("*.py"):
        tree = ast.parse(path.read_text("utf-8"))
        if any(isinstance(n, ast.FunctionDef) and n.name == "add_parser" for n in tree.body):
            defining.add(module_name(path, PACKAGE_DIR))
    assert defining, "no sub-command found: the scan is broken"
    assert sorted(defining - COMMAND_MODULES) == []


def test_no_import_cycles(found: set[tuple[str, ...]]) -> None:
    assert _unlisted(found, "cycle") == []


def test_no_import_cycles_between_packages(found: set[tuple[str, ...]]) -> None:
    assert _unlisted(found, "package cycle") == []


def test_no_import_runs_up_the_layers(found: set[tuple[str, ...]]) -> None:
    assert _unlisted(found, "upward") == []


def test_the_runtime_never_imports_the_simulator(found: set[tuple[str, ...]]) -> None:
    assert _unlisted(found, "runtime imports the simulator") == []


def test_only_the_command_imports_command_modules(found: set[tuple[str, ...]]) -> None:
    assert _unlisted(found, "command") == []


def test_no_module_imports_another_ones_private_names(found: set[tuple[str, ...]]) -> None:
    assert _unlisted(found, "private") == []


def test_every_known_violation_still_exists(found: set[tuple[str, ...]]) -> None:
    """A fixed violation must leave KNOWN_VIOLATIONS too, so the list cannot go stale."""
    gone = sorted(KNOWN_VIOLATIONS - found)
    assert gone == [], f"fixed: remove {gone} from KNOWN_VIOLATIONS"


def _loaded_after_import(module: str) -> list[str]:
    probe = (f"import sys, {module}; "
             "print('\\n'.join(sorted(m for m in sys.modules if m.startswith('callhub'))))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True, timeout=120)
    return result.stdout.split()


def test_importing_the_daemon_loads_no_simulator_module() -> None:
    loaded = _loaded_after_import("callhub.daemon")
    assert "callhub.daemon" in loaded and "callhub.ami.ingest" in loaded
    assert [m for m in loaded if in_simulator(m)] == []
    # The same probe does see the simulator where it belongs: the `simulate` command.
    assert "callhub.sim.ami_server" in _loaded_after_import("callhub.sim.cli")


# -- the graph builder on a package made for it ---------------------------------------------


def test_the_graph_sees_every_kind_of_import(tmp_path: Path) -> None:
    """Function-level, TYPE_CHECKING, relative and `from package import module` imports all
    count, and a cycle and a private name are reported."""
    root = tmp_path / "callhub"
    files = {
        "__init__.py": "",
        "config.py": "from callhub.sim.demo import _secret\n",
        "ami/__init__.py": "",
        "ami/parser.py": textwrap.dedent("""\
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from callhub.api.base import Operation
            def late():
                import callhub.routing.chooser
            """),
        "ami/ingest.py": "from . import parser\nfrom .parser import late\n",
        "api/__init__.py": "",
        "api/base.py": "from callhub.ami import ingest\n",
        "routing/__init__.py": "",
        "routing/chooser.py": "from callhub.api import base\n",
        "sim/__init__.py": "",
        "sim/demo.py": "import callhub.config\n_secret = 1\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    graph = import_graph(package_imports(root))
    assert graph["callhub.ami.parser"] == {"callhub.api.base", "callhub.routing.chooser"}
    assert graph["callhub.ami.ingest"] == {"callhub.ami.parser"}
    assert graph["callhub.api.base"] == {"callhub.ami.ingest"}
    assert graph["callhub.routing.chooser"] == {"callhub.api.base"}
    assert cycles(graph) == [("callhub.ami.ingest", "callhub.ami.parser", "callhub.api.base",
                              "callhub.routing.chooser"), ("callhub.config", "callhub.sim.demo")]
    found = violations(package_imports(root))
    assert ("upward", "callhub.ami.parser", "callhub.api.base") in found
    assert ("upward", "callhub.routing.chooser", "callhub.api.base") in found
    assert ("private", "callhub.config", "callhub.sim.demo._secret") in found
    assert ("runtime imports the simulator", "callhub.config", "callhub.sim.demo") in found
    assert ("cycle", "callhub.config", "callhub.sim.demo") in found
    assert ("package cycle", "callhub.ami", "callhub.api", "callhub.routing") in found
