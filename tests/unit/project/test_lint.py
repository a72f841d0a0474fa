"""The code base stays ruff- and mypy-clean and keeps its architecture: CI fails on a regression.

The architecture is the import contracts in pyproject.toml's [tool.importlinter]
(the wall between the driver and its simulation kit, the layers, the
independent components), checked by import-linter, plus: no import cycle
among the package's modules, nor among its top-level packages.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _missing(what: str) -> None:
    """Skip without a test tool; under CI (which installs them all) fail instead."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} is not installed")
    pytest.skip(f"{what} is not installed")


def _tool(name: str) -> str:
    exe = Path(sys.executable).with_name(name)
    if exe.exists():
        return str(exe)
    found = shutil.which(name)
    if found is None:
        _missing(name)
    assert found is not None
    return found


def _run_tool(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_tool(name), *args], cwd=ROOT, capture_output=True, text=True)


# Every Python file the project tracks: the package, its tests, the build and the tools.
PYTHON_PATHS = ("dra_driver", "tests", "setup.py", "native", "hack")


def test_ruff_clean() -> None:
    res = _run_tool("ruff", "check", *PYTHON_PATHS)
    assert res.returncode == 0, res.stdout + res.stderr


def test_ruff_format_clean() -> None:
    """One layout everywhere: a diff is never about formatting."""
    res = _run_tool("ruff", "format", "--check", *PYTHON_PATHS)
    assert res.returncode == 0, res.stdout + res.stderr


def test_mypy_strict_clean() -> None:
    res = _run_tool("mypy", "dra_driver")
    assert res.returncode == 0, res.stdout + res.stderr


def test_import_contracts_hold() -> None:
    res = _run_tool("lint-imports", "--no-cache")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 broken" in res.stdout, res.stdout


def cycles(edges: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_cycle_finder_finds_cycles() -> None:
    edges = {"a": ["b"], "b": ["c"], "c": ["a", "d"], "d": ["e"], "e": ["d"], "f": ["a"]}
    assert sorted(cycles(edges)) == [["a", "b", "c"], ["d", "e"]]
    assert cycles({"a": ["b"], "b": []}) == []


def _import_graph() -> dict[str, set[str]]:
    try:
        import grimp
    except ImportError:
        _missing("grimp (import-linter)")
    graph = grimp.build_graph("dra_driver", exclude_type_checking_imports=True)
    return {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}


def _wall() -> dict[str, Any]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    wall: dict[str, Any] = next(c for c in config["contracts"] if c["id"] == "wall")
    return wall


def test_the_wall_covers_every_module_but_the_kit() -> None:
    """A new module or package cannot slip past the wall by not being listed."""
    package = ROOT / "dra_driver"
    tops = {
        f"dra_driver.{p.stem}"
        for p in package.iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()
    }
    assert set(_wall()["source_modules"]) == tops - {"dra_driver.testing"}


def test_no_import_cycle_among_modules() -> None:
    assert cycles(_import_graph()) == []


def test_no_import_cycle_among_top_level_packages() -> None:
    """settings -> testing -> prepare -> settings was such a loop of rooms."""
    edges: dict[str, set[str]] = {}
    for module, imported in _import_graph().items():
        top = ".".join(module.split(".")[:2])
        for other in imported:
            if other == "dra_driver":  # the root package: __version__ only
                continue
            other_top = ".".join(other.split(".")[:2])
            if other_top != top:
                edges.setdefault(top, set()).add(other_top)
    assert cycles(edges) == []
