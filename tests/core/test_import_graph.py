"""No import loops between the project's modules (function-level imports included: a lazy
import is still a dependency), and the compiler never imports the tiny world, the harness or the
trainer at module level (data flows trainer -> checkpoint -> export -> runtime, never back)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("qvgen_export", "qvgen_tinyworld", "qvgen_eval", "trainer")


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for p in (REPO / pkg).rglob("*.py"):
            parts = p.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            mods[name] = p
    return mods


def _imports(path: Path, name: str, mods: dict[str, Path]) -> list[tuple[str, bool]]:
    """``[(imported module, at module level)]`` for the project's own modules."""
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this package
                anchor = pkg.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for a in node.names:
                sub = f"{base}.{a.name}"
                targets.append(sub if sub in mods else base)  # `from pkg import submodule` names the submodule
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        for t in targets:
            if t in mods and t != name:
                out.append((t, id(node) in top))
    return out


def _graph(module_level_only: bool = False) -> dict[str, set[str]]:
    mods = _modules()
    return {
        n: {t for t, top in _imports(p, n, mods) if top or not module_level_only and not n.startswith(t + ".")}
        for n, p in mods.items()
    }


def _cycles(g: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
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
                found.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def test_no_import_loops() -> None:
    assert _cycles(_graph()) == []


def test_the_compiler_does_not_import_its_users_at_module_level() -> None:
    g = _graph(module_level_only=True)
    for mod, deps in g.items():
        if mod.startswith("qvgen_export"):
            bad = {d for d in deps if not d.startswith("qvgen_export")}
            assert not bad, (mod, bad)


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
