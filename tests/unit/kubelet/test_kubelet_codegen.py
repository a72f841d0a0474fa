"""The committed gRPC stubs match what proto/ generates."""

from __future__ import annotations

from pathlib import Path

import pytest

from dra_driver.kubelet import codegen
from dra_driver.kubelet.proto import dra_v1_pb2_grpc

grpc_tools = pytest.importorskip("grpc_tools", reason="grpcio-tools (test extra) not installed")


def _tools_version() -> str:
    from importlib.metadata import version

    return version("grpcio-tools")


def test_committed_stubs_are_current() -> None:
    if _tools_version() != dra_v1_pb2_grpc.GRPC_GENERATED_VERSION:
        pytest.skip(
            f"stubs were generated with grpcio-tools {dra_v1_pb2_grpc.GRPC_GENERATED_VERSION}, "
            f"{_tools_version()} is installed; byte comparison would only show the version"
        )
    committed = Path(codegen.__file__).parent / "proto"
    stale = codegen.stale_files(committed)
    assert stale == [], f"regenerate with `python -m dra_driver.kubelet.codegen`: {stale}"


def test_wire_names_match_the_kubelet() -> None:
    from dra_driver.kubelet.proto import (
        dra_v1_pb2,
        dra_v1beta1_pb2,
        drahealth_v1alpha1_pb2,
        pluginregistration_v1_pb2,
    )

    services = {
        pluginregistration_v1_pb2: "pluginregistration.Registration",
        dra_v1_pb2: "k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin",
        dra_v1beta1_pb2: "k8s.io.kubelet.pkg.apis.dra.v1beta1.DRAPlugin",
        drahealth_v1alpha1_pb2: "v1alpha1.DRAResourceHealth",
    }
    for module, full_name in services.items():
        (service,) = module.DESCRIPTOR.services_by_name.values()
        assert service.full_name == full_name
    fields = {f.name: (f.number, f.type) for f in dra_v1_pb2.Device.DESCRIPTOR.fields}
    assert fields["share_id"][0] == 5
    assert "share_id" not in dra_v1beta1_pb2.Device.DESCRIPTOR.fields_by_name
    health = drahealth_v1alpha1_pb2.DeviceHealth.DESCRIPTOR.fields_by_name
    assert {n: health[n].number for n in health} == {
        "device": 1,
        "health": 2,
        "last_updated_time": 3,
        "health_check_timeout_seconds": 4,
        "message": 5,
    }
