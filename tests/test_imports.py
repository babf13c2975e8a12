"""The library's import graph has no circle: each cifar module imports only modules below it.

A circle hidden in a function-level import works until someone moves that import to the top, so the graph is read
from the source (every ``import`` statement, wherever it stands), not from what an import happens to trigger.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cifar"


def module_files() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name, not ``...__init__``)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported_names(module: str, path: Path) -> set[str]:
    """Every dotted name an import statement of ``module`` may load, relative imports resolved."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
    return names


def ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules importing it runs. Importing ``a.b.c`` runs ``a`` and ``a.b`` first, except
    those the importer lies inside: they are already running when the importer does."""
    modules = module_files()
    graph = {}
    for module, path in modules.items():
        edges = set()
        for name in imported_names(module, path):
            if name in modules:
                edges.update(target for target in (*ancestors(name), name)
                             if target in modules and target != module and target not in ancestors(module))
        graph[module] = edges
    return graph


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (circle := visit(target)):
                return circle
        state[module] = "done"
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state and (circle := visit(module)):
            return circle
    return None


def test_find_circle_reports_the_circle() -> None:
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_package_has_no_import_circle() -> None:
    graph = import_graph()
    assert {"cifar.nets.registry", "cifar.pretrained", "cifar.checkpoint"} <= graph.keys()
    circle = find_circle(graph)
    assert circle is None, "import circle: " + " -> ".join(circle or [])


def test_every_module_imports_fresh_on_its_own() -> None:
    """Each module imported first, in a clean interpreter state, as a user's `import cifar.X` or `python -m` does:
    a circle that breaks only from one entry point, or a module that needs another imported first, fails here."""
    modules = sorted(name for name in module_files() if not name.endswith("__main__"))
    script = ("import importlib, sys, traceback\n"
              "failed = []\n"
              f"for name in {modules!r}:\n"
              "    for loaded in [m for m in sys.modules if m == 'cifar' or m.startswith('cifar.')]:\n"
              "        del sys.modules[loaded]\n"
              "    try:\n"
              "        importlib.import_module(name)\n"
              "    except Exception:\n"
              "        failed.append(name + ': ' + traceback.format_exc(limit=-1).strip().splitlines()[-1])\n"
              "print('\\n'.join(failed))\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", "modules that fail to import on their own:\n" + done.stdout
