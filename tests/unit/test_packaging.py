"""What pyproject.toml promises matches what the code base needs."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
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
