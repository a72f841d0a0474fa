"""What pyproject.toml promises matches what the code base needs."""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[3]
PROTO = ROOT / "dra_driver" / "kubelet" / "proto"


def _test_extra() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = (Requirement(r) for r in project["optional-dependencies"]["test"])
    return {r.name: r for r in reqs}


def test_grpcio_tools_is_pinned_to_the_version_that_generated_the_stubs() -> None:
    """Otherwise the byte comparison of the committed stubs is skipped on a newer version."""
    pin = _test_extra()["grpcio-tools"]
    (spec,) = pin.specifier
    assert spec.operator == "==", f"pin grpcio-tools exactly, not {pin}"
    stubs = sorted(PROTO.glob("*_pb2_grpc.py"))
    assert stubs
    for stub in stubs:
        module = importlib.import_module(f"dra_driver.kubelet.proto.{stub.stem}")
        assert spec.version == module.GRPC_GENERATED_VERSION, stub.name


def test_the_lint_tools_are_test_dependencies() -> None:
    assert {"ruff", "mypy", "import-linter"} <= set(_test_extra())


def _toolchain() -> Any:
    spec = importlib.util.spec_from_file_location("toolchain", ROOT / "native" / "toolchain.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_missing_c_compiler_is_named_with_what_to_install() -> None:
    toolchain = _toolchain()
    problem = toolchain.missing_toolchain({"PATH": "/nonexistent", "CC": "gcc -pthread"})
    assert problem.startswith("dra-driver-gpu needs a C compiler")
    assert "'gcc' is not on PATH" in problem and "apt-get install gcc" in problem


def test_setup_py_stops_at_once_without_a_compiler(tmp_path: Path) -> None:
    env = {**os.environ, "CC": "no-such-cc"}
    r = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--build-temp", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0
    assert "error: dra-driver-gpu needs a C compiler" in r.stderr, r.stderr
    assert "'no-such-cc' is not on PATH" in r.stderr


def test_slow_tests_run_by_default() -> None:
    """`slow` only lets a developer deselect them (-m 'not slow'); CI runs them all."""
    ini = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert any(m.startswith("slow:") for m in ini["markers"])
    assert "slow" not in ini.get("addopts", "")
