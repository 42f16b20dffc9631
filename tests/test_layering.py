"""The pure cores must stay pure (ARCHITECTURE.md ring 1): no sockets, clocks, event loops, netlink,
YAML or metrics inside them, directly or through another project module."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PURE = ["tunnel/esp", "tunnel/ike", "tunnel/dataplane/forwarder.py", "tunnel/dataplane/coalesce.py", "tunnel/dataplane/ipedit.py", "tunnel/dataplane/scheduler.py",
        "policy"]
FORBIDDEN = {"asyncio", "socket", "time", "pyroute2", "yaml", "prometheus_client", "select", "selectors", "threading", "subprocess", "random"}
FORBIDDEN_PROJECT = ("tunnel.drivers", "tunnel.app.gateway", "tunnel.cli.main", "tunnel.config")


def modules(spec: str) -> list[pathlib.Path]:
    path = ROOT / spec
    return sorted(path.rglob("*.py")) if path.is_dir() else [path]


def imported_names(path: pathlib.Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def module_path(name: str) -> pathlib.Path | None:
    base = ROOT / name.replace(".", "/")
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def closure(path: pathlib.Path) -> dict[str, pathlib.Path]:
    """Every module imported from path, following project modules transitively."""
    seen: dict[str, pathlib.Path] = {}
    todo = [path]
    while todo:
        for name in imported_names(todo.pop()):
            if name in seen:
                continue
            seen[name] = path
            local = module_path(name)
            if local is not None:
                todo.append(local)
    return seen


PURE_FILES = [p for spec in PURE for p in modules(spec)]


def test_there_are_pure_modules() -> None:
    assert len(PURE_FILES) >= 8


@pytest.mark.parametrize("path", PURE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_pure_module_imports_nothing_impure(path: pathlib.Path) -> None:
    bad = sorted(
        name
        for name in closure(path)
        if name.split(".")[0] in FORBIDDEN or name.startswith(FORBIDDEN_PROJECT)
    )
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_policy_imports_nothing_from_tunnel() -> None:
    for path in modules("policy"):
        assert not any(n.startswith("tunnel") for n in closure(path)), path


def test_checker_catches_a_violation(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import time\nfrom asyncio import sleep\n")
    assert {"time", "asyncio"} <= set(closure(bad))
