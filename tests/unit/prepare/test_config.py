"""Opaque config decoding: strict, field-naming errors, NVIDIA's precedence rules."""

from __future__ import annotations

from typing import Any

import pytest

from dra_driver.prepare.config import (
    ConfigError,
    GpuConfig,
    MigDeviceConfig,
    OpaqueConfig,
    SharingStrategy,
    TimeSliceInterval,
    config_for,
    decode_configs,
    decode_parameters,
    parse_quantity,
)

API = "resource.nvidia.com/v1beta1"
DRIVER = "gpu.nvidia.com"


def gpu(**sharing: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"apiVersion": API, "kind": "GpuConfig"}
    if sharing:
        out["sharing"] = sharing
    return out


def mig(**sharing: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"apiVersion": API, "kind": "MigDeviceConfig"}
    if sharing:
        out["sharing"] = sharing
    return out


def test_decodes_time_slicing_and_mps() -> None:
    c = decode_parameters(gpu(strategy="TimeSlicing", timeSlicingConfig={"interval": "Long"}))
    assert isinstance(c, GpuConfig) and c.sharing is not None
    assert c.sharing.strategy is SharingStrategy.TIME_SLICING
    assert c.sharing.time_slicing is not None
    assert c.sharing.time_slicing.interval is TimeSliceInterval.LONG

    m = decode_parameters(
        gpu(
            strategy="MPS",
            mpsConfig={
                "defaultActiveThreadPercentage": 50,
                "defaultPinnedDeviceMemoryLimit": "10Gi",
                "defaultPerDevicePinnedMemoryLimit": {"0": "4Gi", "GPU-abc": 2097152},
            },
        )
    )
    assert m.sharing is not None and m.sharing.mps is not None
    assert m.sharing.mps.default_active_thread_percentage == 50
    assert m.sharing.mps.default_pinned_device_memory_limit == 10 * 2**30
    assert dict(m.sharing.mps.default_per_device_pinned_memory_limit) == {
        "0": 4 * 2**30,
        "GPU-abc": 2 * 2**20,
    }


def test_time_slicing_interval_defaults() -> None:
    c = decode_parameters(gpu(strategy="TimeSlicing"))
    assert c.sharing is not None and c.sharing.time_slicing is not None
    assert c.sharing.time_slicing.interval is TimeSliceInterval.DEFAULT
    assert decode_parameters(gpu()).sharing is None


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({**gpu(), "extra": 1}, "parameters.extra: unknown field"),
        (gpu(strategy="TimeSlicing", typo=1), "parameters.sharing.typo: unknown field"),
        (gpu(strategy="Spatial"), "parameters.sharing.strategy: 'Spatial' is not one of"),
        (gpu(timeSlicingConfig={}), "parameters.sharing.strategy: required"),
        (
            gpu(strategy="TimeSlicing", timeSlicingConfig={"interval": "Fast"}),
            "parameters.sharing.timeSlicingConfig.interval: 'Fast' is not one of",
        ),
        (
            gpu(strategy="TimeSlicing", timeSlicingConfig={"interval": 3}),
            "parameters.sharing.timeSlicingConfig.interval: must be a string, got number",
        ),
        (
            gpu(strategy="MPS", mpsConfig={"defaultActiveThreadPercentage": 150}),
            "defaultActiveThreadPercentage: must be between 0 and 100, got 150",
        ),
        (
            gpu(strategy="MPS", mpsConfig={"defaultActiveThreadPercentage": "50"}),
            "defaultActiveThreadPercentage: must be an integer, got string",
        ),
        (
            gpu(strategy="MPS", mpsConfig={"defaultActiveThreadPercentage": True}),
            "defaultActiveThreadPercentage: must be an integer, got boolean",
        ),
        (
            gpu(strategy="MPS", mpsConfig={"defaultPinnedDeviceMemoryLimit": "512Ki"}),
            "defaultPinnedDeviceMemoryLimit: must be at least 1Mi, got 512Ki",
        ),
        (
            gpu(strategy="MPS", mpsConfig={"defaultPinnedDeviceMemoryLimit": "ten gigs"}),
            "defaultPinnedDeviceMemoryLimit: 'ten gigs' is not a quantity",
        ),
        (
            gpu(strategy="MPS", mpsConfig={"defaultPerDevicePinnedMemoryLimit": {"0": "1k"}}),
            "defaultPerDevicePinnedMemoryLimit[0]: must be at least 1Mi",
        ),
        (
            gpu(strategy="MPS", mpsConfig={"defaultPerDevicePinnedMemoryLimit": ["1Gi"]}),
            "defaultPerDevicePinnedMemoryLimit: must be an object",
        ),
        (
            gpu(strategy="TimeSlicing", mpsConfig={}),
            "parameters.sharing.mpsConfig: only valid with strategy MPS",
        ),
        (
            gpu(strategy="MPS", timeSlicingConfig={}),
            "parameters.sharing.timeSlicingConfig: only valid with strategy TimeSlicing",
        ),
        (
            mig(strategy="TimeSlicing", timeSlicingConfig={}),
            "parameters.sharing.timeSlicingConfig: unknown field",
        ),
        ({"apiVersion": "v1", "kind": "GpuConfig"}, "parameters.apiVersion: 'v1' is not supported"),
        ({"apiVersion": API, "kind": "Other"}, "parameters.kind: 'Other' is not one of"),
        ({"apiVersion": API, "kind": "VfioDeviceConfig"}, "VfioDeviceConfig needs GPU passthrough"),
        ("GpuConfig", "parameters: must be an object, got string"),
        (gpu(strategy="TimeSlicing") | {"sharing": 7}, "parameters.sharing: must be an object"),
    ],
)
def test_strict_errors_name_the_field(params: Any, needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        decode_parameters(params)
    assert needle in str(e.value)


def test_quantities() -> None:
    assert parse_quantity("1Mi", "x") == 2**20
    assert parse_quantity("1.5Gi", "x") == 3 * 2**29
    assert parse_quantity("2G", "x") == 2_000_000_000
    assert parse_quantity("1e6", "x") == 1_000_000
    assert parse_quantity(4096, "x") == 4096
    assert parse_quantity("100m", "x") == 1  # fractions round up, like resource.Quantity.Value()
    for bad in ("", "Gi", "1GiB", "1.2.3", True, None, [1]):
        with pytest.raises(ConfigError):
            parse_quantity(bad, "x")


def allocation(*configs: tuple[str, list[str], dict[str, Any]], driver: str = DRIVER) -> Any:
    return {
        "config": [
            {
                "source": src,
                **({"requests": reqs} if reqs else {}),
                "opaque": {"driver": driver, "parameters": params},
            }
            for src, reqs, params in configs
        ]
    }


def test_precedence_class_first_then_claim_later_wins() -> None:
    # The API lists class configs first; a misordered list is sorted the same way.
    configs = decode_configs(
        allocation(
            ("FromClaim", [], gpu(strategy="TimeSlicing")),
            ("FromClass", [], gpu()),
            ("FromClaim", ["gpu"], gpu(strategy="MPS")),
        ),
        DRIVER,
    )
    assert [c.source for c in configs] == ["FromClass", "FromClaim", "FromClaim"]
    chosen = config_for("gpu", False, configs)
    assert chosen is not None and chosen.index == 2  # the claim config naming the request
    other = config_for("other", False, configs)
    assert other is not None and other.index == 0  # the later of the two unnamed ones


def test_subrequest_matches_base_request_and_exact_name() -> None:
    configs = decode_configs(
        allocation(("FromClaim", ["gpu"], gpu(strategy="TimeSlicing"))), DRIVER
    )
    assert config_for("gpu/large", False, configs) is not None
    exact = decode_configs(allocation(("FromClaim", ["gpu/large"], gpu())), DRIVER)
    assert config_for("gpu/large", False, exact) is not None
    assert config_for("gpu/small", False, exact) is None


def test_wrong_kind_named_is_error_unnamed_is_skipped() -> None:
    named = decode_configs(allocation(("FromClaim", ["mig"], gpu(strategy="TimeSlicing"))), DRIVER)
    with pytest.raises(ConfigError, match="cannot apply GpuConfig to request 'mig'"):
        config_for("mig", True, named)
    unnamed = decode_configs(
        allocation(("FromClaim", [], mig(strategy="MPS")), ("FromClaim", [], gpu())), DRIVER
    )
    chosen = config_for("mig", True, unnamed)
    assert chosen is not None and isinstance(chosen.config, MigDeviceConfig)
    full = config_for("gpu", False, unnamed)
    assert full is not None and isinstance(full.config, GpuConfig)


def test_other_drivers_configs_are_ignored_even_if_invalid() -> None:
    assert decode_configs(allocation(("FromClaim", [], {"junk": 1}), driver="x.y"), DRIVER) == []


def test_invalid_config_of_ours_fails_even_if_not_used() -> None:
    with pytest.raises(ConfigError, match=r"config\[0\]\.opaque\.parameters\.sharing\.strategy"):
        decode_configs(allocation(("FromClaim", ["unused"], gpu(strategy="Nope"))), DRIVER)


def test_where_names_source_and_requests() -> None:
    c = OpaqueConfig(3, "FromClass", ("a", "b"), GpuConfig())
    assert c.where == "config[3] (FromClass, requests ['a', 'b'])"
