"""The package's import graph has no cycle: module-level and function-level imports alike.

Every ``import``/``from ... import`` inside ``pcl/`` that names a ``pcl`` module is an edge,
wherever it sits (a function-level import that dodges a cycle still counts; ``TYPE_CHECKING``
imports are type hints only and are skipped). A cycle fails with its modules in order.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pcl

PKG = Path(pcl.__file__).parent


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of import nodes under ``if TYPE_CHECKING:`` (hints only, never executed)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            out |= {id(n) for b in node.body for n in ast.walk(b)}
    return out


def imports(path: Path) -> set[str]:
    """The ``pcl`` modules ``path`` imports anywhere in its body (package-relative names)."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_nodes(tree)
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("pcl.")}
            out |= {"__init__" for a in node.names if a.name == "pcl"}
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level == 0 and mod.split(".")[0] != "pcl":
                continue
            sub = mod.split(".")[1] if node.level == 0 and "." in mod else (mod if node.level else "")
            if sub:
                out.add(sub.split(".")[0])
            else:  # from . import x, y / from pcl import x: modules, or names of pcl/__init__
                mods = {a.name for a in node.names if (PKG / f"{a.name}.py").exists()}
                out |= mods | ({"__init__"} if len(mods) < len(node.names) else set())
    return out - {path.stem}


def graph() -> dict[str, set[str]]:
    return {p.stem: imports(p) for p in sorted(PKG.glob("*.py"))}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``g`` as a closed path of nodes, or None (iterative three-colour DFS)."""
    state: dict[str, int] = {}
    for root in sorted(g):
        if state.get(root):
            continue
        stack, path = [(root, iter(sorted(g[root])))], [root]
        state[root] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt) and nxt in g:
                state[nxt] = 1
                stack.append((nxt, iter(sorted(g[nxt]))))
                path.append(nxt)
    return None


def test_cycle_finder_finds_constructed_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]


def test_imports_count_function_level_imports(tmp_path: Path) -> None:
    f = tmp_path / "mod.py"
    f.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .x import y\n"
                 "def f():\n    from .config import RunConfig\n    import pcl.store\n"
                 "from . import __version__, keys\n")
    assert imports(f) == {"config", "store", "keys", "__init__"}


def test_pcl_has_no_import_cycle() -> None:
    g = graph()
    assert {"config", "train", "study"} <= set(g)
    cycle = find_cycle(g)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
