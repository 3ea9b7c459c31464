"""The documentation holds together: README.md stays small, every relative link and
anchor in README.md, docs/*.md and bench/README.md leads somewhere, and every test
a page names as evidence exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
TEST_REF = re.compile(r"(tests/[\w/]+\.py)?::(test_\w+)")


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    headings = re.findall(r"^#{1,6} +(.+?) *$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_readme_is_under_16_kb() -> None:
    size = (ROOT / "README.md").stat().st_size
    assert size < 16 * 1024, f"README.md is {size} bytes; move detail to docs/"


def test_docs_has_a_page_for_each_audience() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"(docs/{page.name})" in readme, f"README.md does not link {page_id(page)}"
    assert len(list((ROOT / "docs").glob("*.md"))) >= 8


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_relative_link_resolves(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    links = LINK.findall(text)
    assert links or page != ROOT / "README.md"
    for target in links:
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked here
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page_id(page)}: {target} does not exist"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved), (
                f"{page_id(page)}: {target}: no heading '#{anchor}' in {resolved.name}")


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_named_test_exists(page: Path) -> None:
    """`tests/x.py::test_y` (and `::test_z` after it on the same line) name real tests."""
    for line in page.read_text(encoding="utf-8").splitlines():
        current: str | None = None
        for file, name in TEST_REF.findall(line):
            current = file or current
            assert current, f"{page_id(page)}: ::{name} without a file before it"
            tree = ast.parse((ROOT / current).read_text(encoding="utf-8"))
            names = {n.name for n in ast.walk(tree)
                     if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
            assert name in names, f"{page_id(page)}: {current}::{name} does not exist"
