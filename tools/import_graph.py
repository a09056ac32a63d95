"""The import graph of the edgeq package: cycles and private names imported across modules.

    python tools/import_graph.py            # prints cycles and private imports, exit 1 if any
    python tools/import_graph.py --json

Every ``import`` counts, also those inside functions (a lazy import is still a dependency;
it only hides the cycle from the interpreter). A module's imports of its own submodules'
package ``__init__`` are resolved to the module actually named.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = "edgeq"


def _modules(pkg_dir: Path) -> dict[str, Path]:
    out = {}
    for p in sorted(pkg_dir.rglob("*.py")):
        rel = p.relative_to(pkg_dir.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _resolve(mod: str, is_pkg: bool, level: int, target: str | None) -> str:
    if level == 0:
        return target or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([target] if target else []))


def edges(pkg_dir: Path) -> tuple[dict[str, set[str]], list[tuple[str, str, str]]]:
    """(module -> modules it imports, [(module, imported module, private name)])."""
    mods = _modules(pkg_dir)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    private: list[tuple[str, str, str]] = []

    def known(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] == PKG and (k := known(a.name)) and k != mod:
                        graph[mod].add(k)
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(mod, is_pkg, node.level, node.module)
                if base.split(".")[0] != PKG:
                    continue
                for a in node.names:
                    full = f"{base}.{a.name}"
                    k = full if full in mods else known(base)
                    if k and k != mod:
                        graph[mod].add(k)
                    if a.name.startswith("_") and not a.name.startswith("__") and full not in mods and k != mod:
                        private.append((mod, base, a.name))
    return graph, private


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--package", type=Path, default=ROOT / PKG)
    a = ap.parse_args(argv)
    graph, private = edges(a.package)
    cyc = cycles(graph)
    if a.json:
        print(json.dumps({"cycles": cyc, "private_imports": [list(p) for p in private]}, indent=2))
    else:
        for c in cyc:
            print("cycle: " + " <-> ".join(c))
        for m, base, name in private:
            print(f"private: {m} imports {base}.{name}")
        if not cyc and not private:
            print("no cycles, no private names imported across modules")
    return 1 if cyc or private else 0


if __name__ == "__main__":
    sys.exit(main())
