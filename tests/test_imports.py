"""No import circles: a static walk of every import in src/texocr and bench/, and each module imported alone.

The walk counts imports inside functions too (a lazy import still closes a circle the moment it runs) and
leaves out `if TYPE_CHECKING:` blocks (never executed).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def module_files(folder: Path, prefix: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under `folder` (`prefix` names the folder's package, or '')."""
    out = {}
    for path in sorted(folder.rglob("*.py")):
        parts = list(path.relative_to(folder).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join([p for p in [prefix, *parts] if p])] = path
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skip.update(id(n) for n in ast.walk(child))
    return skip


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of `modules` that `name` imports (`from pkg import sub` counts as importing `pkg.sub`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_nodes(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
            found.update(subs if len(subs) == len(node.names) else [base, *subs])
    return {m for m in found if m in modules and m != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as `[a, b, ..., a]`, or None (depth-first search, colouring the nodes)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def graph_of(folder: Path, prefix: str) -> dict[str, set[str]]:
    modules = module_files(folder, prefix)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def test_find_cycle_sees_a_lazy_circle(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import x\n")
    (pkg / "b.py").write_text("def x():\n    from pkg import a\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n")
    graph = graph_of(pkg, "pkg")
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.a"]
    assert graph["pkg.c"] == set()  # TYPE_CHECKING imports never run


def test_no_import_circles_in_src() -> None:
    graph = graph_of(SRC / "texocr", "texocr")
    assert len(graph) > 50
    assert {"texocr.models.qwen_vl", "texocr.models.tiny_qwen"} <= graph["texocr.models.tiny"] | \
        graph["texocr.models.tiny_qwen"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_no_import_circles_in_bench() -> None:
    graph = graph_of(ROOT / "bench", "")
    assert "gpu_data" in graph["seeds_gpu"] and "seeds_gpu" in graph["train_speed"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_each_module_imports_alone() -> None:
    """Every texocr module imported with no other texocr module loaded before it (third-party ones stay cached)."""
    names = sorted(module_files(SRC / "texocr", "texocr"))
    script = (
        "import importlib, sys, traceback\n"
        f"failed = []\nfor name in {names!r}:\n"
        "    for loaded in [m for m in sys.modules if m == 'texocr' or m.startswith('texocr.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n        importlib.import_module(name)\n"
        "    except Exception:\n        failed.append(name + ': ' + traceback.format_exc(limit=-2))\n"
        "print('\\n'.join(failed))\nsys.exit(1 if failed else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
