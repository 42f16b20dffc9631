"""The house keeps its plan (ARCHITECTURE.md): every import inside tunnel/ and policy/ (also those inside
functions and under TYPE_CHECKING) is walked, and

- no module takes part in an import cycle;
- each folder imports only the folders of the rings below it;
- the pure cores (policy/, tunnel/esp, tunnel/ike, tunnel/dataplane) import nothing that does I/O or
  reads a clock: only the modules on an allow-list, so a new one is a decision, not an accident.

Folders are found on disk, so a new module or folder is checked without being named here."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("tunnel", "policy")

# Which folders each folder may import (besides itself). The rings, from the inside out: policy and the
# shared leaves; the pure cores; the config loader; drivers and operations; the application; the CLI.
LEAVES = {"tunnel", "tunnel.errors", "tunnel.secret"}
ALLOWED: dict[str, set[str]] = {
    "policy": set(),
    "tunnel": set(),
    "tunnel.errors": set(),
    "tunnel.secret": set(),
    "tunnel.esp": {"tunnel.errors"},
    "tunnel.ike": {"policy", "tunnel.errors", "tunnel.secret"},
    "tunnel.dataplane": {"policy", "tunnel.esp", "tunnel.errors"},
    "tunnel.config": {"policy", "tunnel.esp", "tunnel.ike", "tunnel.dataplane"} | LEAVES,
    "tunnel.drivers": {"policy", "tunnel.esp", "tunnel.dataplane"} | LEAVES,
    "tunnel.ops": {"policy", "tunnel.esp", "tunnel.ike", "tunnel.dataplane"} | LEAVES,
    "tunnel.app": {"policy", "tunnel.esp", "tunnel.ike", "tunnel.dataplane", "tunnel.config", "tunnel.drivers",
                   "tunnel.ops"} | LEAVES,
    "tunnel.cli": {"tunnel.app", "tunnel.config", "tunnel.ops"} | LEAVES,
}
PURE = ("policy", "tunnel.esp", "tunnel.ike", "tunnel.dataplane")
# What a pure core may import from outside the project: computation only. No socket, file, clock, event
# loop, process, global random generator, logging, YAML or metrics.
PURE_MAY_IMPORT = {"__future__", "abc", "bisect", "collections", "dataclasses", "datetime", "difflib", "enum", "heapq",
                   "functools", "hashlib", "hmac", "ipaddress", "itertools", "math", "re", "struct", "types",
                   "typing", "cryptography"}


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def imports_of(name: str, tree: ast.AST, modules: dict[str, pathlib.Path]) -> set[str]:
    """Every module `name` imports anywhere in its code (`from package import module` counts as the
    module); relative imports resolved."""
    package = name if modules.get(name, pathlib.Path()).name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in modules else base)
    return found


def graph(modules: dict[str, pathlib.Path]) -> dict[str, set[str]]:
    """Project module -> the project modules it imports."""
    return {name: {i for i in imports_of(name, ast.parse(path.read_text(), str(path)), modules) if i in modules}
            for name, path in modules.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module, or a module importing itself
    (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in edges.get(node, ()):
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def folder(name: str) -> str:
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "tunnel" and len(parts) > 1 else parts[0]


EDGES = graph(MODULES)


def test_the_walk_sees_the_whole_house() -> None:
    assert len(MODULES) > 80 and "tunnel.ike.session" in MODULES and "tunnel.ike.tasks.ike_auth" in MODULES
    assert "tunnel.ike.tasks.child_create" in EDGES["tunnel.ike.session"]  # `from package import module`


def test_no_import_cycles() -> None:
    assert cycles(EDGES) == []


def test_every_folder_has_a_place_in_the_rings() -> None:
    assert {folder(name) for name in MODULES} <= set(ALLOWED)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_imports_only_rings_below(name: str) -> None:
    wrong = sorted(i for i in EDGES[name] if folder(i) != folder(name) and folder(i) not in ALLOWED[folder(name)])
    assert not wrong, f"{name} ({folder(name)}) imports {wrong}"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if folder(n) in PURE))
def test_pure_core_imports_no_io(name: str) -> None:
    path = MODULES[name]
    outside = {i.split(".")[0] for i in imports_of(name, ast.parse(path.read_text()), MODULES)
               if i.split(".")[0] not in PACKAGES}
    assert outside <= PURE_MAY_IMPORT, f"{name} imports {sorted(outside - PURE_MAY_IMPORT)}"


# -- the checks catch what they are meant to catch ----------------------------------------------------
def _house(tmp_path: pathlib.Path, files: dict[str, str]) -> dict[str, pathlib.Path]:
    modules = {}
    for name, text in files.items():
        path = tmp_path / (name.replace(".", "/") + ".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        modules[name] = path
    return modules


def test_a_cycle_through_an_import_inside_a_function_is_found(tmp_path: pathlib.Path) -> None:
    modules = _house(tmp_path, {
        "tunnel.ike.a": "from tunnel.ike import b\n",
        "tunnel.ike.b": "def late():\n    from tunnel.ike.c import x\n",
        "tunnel.ike.c": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from tunnel.ike.a import y\n",
        "tunnel.ike.d": "from tunnel.ike import a\n",
    })
    assert cycles(graph(modules)) == [["tunnel.ike.a", "tunnel.ike.b", "tunnel.ike.c"]]


def test_an_io_import_in_a_core_is_found(tmp_path: pathlib.Path) -> None:
    modules = _house(tmp_path, {"tunnel.dataplane.x": "import struct\ndef f():\n    import time\n"})
    found = {i.split(".")[0] for i in imports_of("tunnel.dataplane.x", ast.parse(modules["tunnel.dataplane.x"].read_text()), modules)}
    assert found - PURE_MAY_IMPORT == {"time"}
