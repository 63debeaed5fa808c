"""The package's dependency arrows, as docs/architecture.md draws them, and no import cycle.

Every module's imports are read from its source (``TYPE_CHECKING`` blocks included: a cycle
hidden behind one is still a cycle in the design), and every module is imported on its own in a
fresh interpreter state, so that an import that works only in one order fails here.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "diskledger"

# Which top-level parts of the package each part may import. The shared leaves (errors, events,
# faults, context: which operation a thread works for; lazy: exports imported on first use;
# progress: the callback long copies report to) are for everyone; the arrows are:
# states/store <- engine -> backends, hypervisor; cli -> engine; backends and hypervisor never
# see the ledger.
LEAVES = {"errors", "events", "faults", "context", "lazy", "progress"}
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "events": set(),
    "context": set(),
    "lazy": set(),
    "progress": set(),
    "faults": {"errors"},
    "states": {"errors", "events"},
    "store": {"errors", "events", "states"},
    "backends": {"errors", "faults", "context", "lazy", "progress"},
    "keys": {"errors"},
    "hypervisor": {"errors", "backends.contract"},
    "engine": LEAVES | {"states", "store", "backends", "hypervisor", "keys"},
    "testing": LEAVES | {"states", "store", "backends", "engine"},
    "render": LEAVES | {"states", "engine"},
    "demo": LEAVES | {"states", "backends", "engine", "render"},
    # The command line prints the read models (states: DiskView...) the engine returns.
    "cli": LEAVES | {"states", "backends", "engine", "hypervisor", "render", "demo", "keys"},
    "__init__": LEAVES | {"states", "store", "backends", "engine", "keys"},
}


def modules() -> Iterator[str]:
    for path in sorted(PACKAGE.rglob("*.py")):
        if "migrations" in path.parts and path.name != "__init__.py":
            continue  # Alembic scripts, run by Alembic
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(module: str) -> set[str]:
    """The diskledger modules ``module`` imports, resolved to modules where a name is one."""
    path = PACKAGE.parent / Path(*module.split("."))
    source = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    found: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("diskledger"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("diskledger"):
            assert node.module is not None
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if _is_module(candidate) else node.module)
    return found - {module}


def _is_module(name: str) -> bool:
    path = PACKAGE.parent / Path(*name.split("."))
    return path.is_dir() or path.with_suffix(".py").exists()


def part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_part_imports_only_what_its_arrows_allow() -> None:
    wrong = []
    for module in modules():
        mine = part(module)
        for target in imports_of(module):
            theirs = part(target)
            if theirs == mine:
                continue
            allowed = ALLOWED[mine]
            dotted = ".".join(target.split(".")[1:3])
            if theirs not in allowed and dotted not in allowed:
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_recovery_verify_and_the_operations_do_not_know_the_engine_facade() -> None:
    for module in modules():
        if module.startswith("diskledger.engine.") and module != "diskledger.engine.engine":
            assert "diskledger.engine.engine" not in imports_of(module), module


def test_there_is_no_import_cycle() -> None:
    graph = {m: imports_of(m) for m in modules()}
    # A package's __init__ re-exporting its modules is the one edge that may point down into a
    # package from above; everything else must form a DAG.
    cycles = [c for c in _strongly_connected(graph) if len(c) > 1]
    assert cycles == []


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_each_module_imports_on_its_own() -> None:
    names = [m for m in modules() if m != "diskledger.__main__"]
    script = (
        "import importlib, sys\n"
        "failed = []\n"
        f"for name in {names!r}:\n"
        "    for loaded in [m for m in sys.modules if m.startswith('diskledger')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        failed.append(f'{name}: {exc!r}')\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("module", ["diskledger", "diskledger.engine", "diskledger.testing"])
def test_public_packages_import(module: str) -> None:
    assert importlib.import_module(module)
