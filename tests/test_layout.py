"""The package's shape: no import cycles, and only command-line modules import ``lift_rt.cli``.

The import graph is read from the source (every ``import`` statement, also those
inside functions, which are the usual way to hide a cycle), not by importing.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Source folder -> the package it installs as (pyproject.toml's [tool.scikit-build.wheel.packages]).
PACKAGES = {"lift_rt": "lift_rt", "kernels": "lift_rt.kernels", "export": "lift_rt.export"}


def module_files() -> dict[str, Path]:
    """``lift_rt.x.y`` -> its source file, for every module of the installed package."""
    modules = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


def _is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The lift_rt modules that module ``name`` imports anywhere (TYPE_CHECKING blocks aside)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _is_type_checking_block(node):
            return
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                targets.add(submodule if submodule in known else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return {t for t in targets if t in known and t != name}


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    known = set(files)
    return {name: imported_modules(name, path, known) for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
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
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def is_command_line(path: Path) -> bool:
    """A module run as a command: ``__main__``, or one that defines ``main`` or ``add_parser``."""
    if path.name == "__main__.py":
        return True
    tree = ast.parse(path.read_text())
    return any(isinstance(node, ast.FunctionDef) and node.name in ("main", "add_parser") for node in tree.body)


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    assert "lift_rt.export.onnx_export" in graph["lift_rt.backends.onnxruntime_graph"]
    assert "lift_rt.kernels.lift_head" in graph["lift_rt.backends.triton_kernels"]  # imported inside __init__


def test_cycle_finder_finds_a_cycle_hidden_in_a_function():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_only_command_line_modules_import_cli():
    files = module_files()
    importers = sorted(name for name, targets in import_graph().items() if "lift_rt.cli" in targets)
    assert importers, "expected some command-line module to use lift_rt.cli"
    assert [name for name in importers if not is_command_line(files[name])] == []


def test_each_backend_is_one_file_in_the_backends_package():
    from lift_rt.backends import BACKENDS

    for name, cls in BACKENDS.items():
        assert cls.__module__.startswith("lift_rt.backends."), (name, cls.__module__)
    assert len({cls.__module__ for cls in BACKENDS.values()}) == len(BACKENDS)


def test_the_library_is_quiet_unless_logging_is_configured():
    import subprocess
    import sys

    code = ("import logging, sys, lift_rt\n"
            "logging.getLogger('lift_rt.data').warning('unconfigured')\n"
            "logging.basicConfig()\n"
            "logging.getLogger('lift_rt.data').warning('configured')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "unconfigured" not in done.stderr and "configured" in done.stderr
