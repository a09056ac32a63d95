"""The test and tool layout holds: tests and tools never import each other, one cache variable."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imported_roots(path: Path) -> set[str]:
    """Top-level package names a Python file imports (``import a.b`` and ``from a.b import c`` give ``a``)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    # also code in a string, for a child interpreter (an import statement of the tests or tools package)
    roots.update(re.findall(r"\b(?:import|from) (tests|tools)\b[.\s]", path.read_text()))
    return roots


def test_imported_roots_sees_both_import_forms(tmp_path):
    f = tmp_path / "m.py"
    tools, tests = "tools", "tests"  # spelled apart so that a plain grep of tests/ for these imports stays empty
    f.write_text(f"import {tools}.build_lm\nfrom {tests}.models import x\n")
    assert imported_roots(f) == {"tools", "tests"}
    f.write_text(f"code = 'import {tools}.bench_int8 as b'\n")
    assert imported_roots(f) == {"tools"}
    f.write_text("from fixtures.lm import build\nimport numpy\n")
    assert imported_roots(f) == {"fixtures", "numpy"}


def test_tests_and_tools_do_not_import_each_other():
    tests = [p for p in (ROOT / "tests").rglob("*.py") if "tools" in imported_roots(p)]
    tools = [p for p in (ROOT / "tools").rglob("*.py") if "tests" in imported_roots(p)]
    assert (tests, tools) == ([], [])


def test_fixtures_import_neither_tests_nor_tools_and_are_not_shipped():
    for p in (ROOT / "fixtures").rglob("*.py"):
        assert not {"tests", "tools"} & imported_roots(p), p
    text = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'\[tool\.hatch\.build\.targets\.wheel\]\npackages = \["edgeq"\]\n', text)


def test_one_cache_variable():
    """EDGEQ_CACHE_DIR is the only cache variable: the old EDGEQ_CACHE and EDGEQ_FIXTURE_CACHE are gone."""
    old = re.compile(r"\bEDGEQ_(?:CACHE|FIXTURE_CACHE)\b(?!_DIR)")
    files = [p for d in ("edgeq", "tests", "tools", "fixtures", "docs", ".ci") for p in (ROOT / d).rglob("*") if p.is_file()
             and p.suffix in (".py", ".md", ".toml", "") and "__pycache__" not in p.parts]
    files += [ROOT / "README.md", ROOT / "BENCHMARKS.md", ROOT / "SECURITY.md"]
    here = Path(__file__).resolve()
    assert [str(p) for p in files if p.resolve() != here and old.search(p.read_text(errors="replace"))] == []
