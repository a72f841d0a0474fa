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
        drahealth_v1_pb2,
        drahealth_v1alpha1_pb2,
        pluginregistration_v1_pb2,
    )

    services = {
        pluginregistration_v1_pb2: "pluginregistration.Registration",
        dra_v1_pb2: "k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin",
        dra_v1beta1_pb2: "k8s.io.kubelet.pkg.apis.dra.v1beta1.DRAPlugin",
        drahealth_v1alpha1_pb2: "v1alpha1.DRAResourceHealth",
        drahealth_v1_pb2: "v1.DRAResourceHealth",
    }
    for module, full_name in services.items():
        (service,) = module.DESCRIPTOR.services_by_name.values()
        assert service.full_name == full_name
    fields = {f.name: (f.number, f.type) for f in dra_v1_pb2.Device.DESCRIPTOR.fields}
    assert fields["share_id"][0] == 5
    assert "share_id" not in dra_v1beta1_pb2.Device.DESCRIPTOR.fields_by_name
    for health_pb in (drahealth_v1alpha1_pb2, drahealth_v1_pb2):
        health = health_pb.DeviceHealth.DESCRIPTOR.fields_by_name
        assert {n: (health[n].number, health[n].type) for n in health} == {
            "device": (1, health["device"].TYPE_MESSAGE),
            "health": (2, health["health"].TYPE_ENUM),
            "last_updated_time": (3, health["last_updated_time"].TYPE_INT64),
            "health_check_timeout_seconds": (4, health["last_updated_time"].TYPE_INT64),
            "message": (5, health["message"].TYPE_STRING),
        }
        assert {v.name: v.number for v in health_pb.HealthStatus.DESCRIPTOR.values} == {
            "UNKNOWN": 0,
            "HEALTHY": 1,
            "UNHEALTHY": 2,
        }
    # The same bytes decode as either version: the wire is identical.
    alpha = drahealth_v1alpha1_pb2.NodeWatchResourcesResponse(
        devices=[
            drahealth_v1alpha1_pb2.DeviceHealth(
                device=drahealth_v1alpha1_pb2.DeviceIdentifier(pool_name="p", device_name="d"),
                health=drahealth_v1alpha1_pb2.UNHEALTHY,
                last_updated_time=7,
                health_check_timeout_seconds=30,
                message="m",
            )
        ]
    )
    v1 = drahealth_v1_pb2.NodeWatchResourcesResponse.FromString(alpha.SerializeToString())
    assert v1.SerializeToString() == alpha.SerializeToString()
    assert v1.devices[0].device.device_name == "d" and v1.devices[0].message == "m"
