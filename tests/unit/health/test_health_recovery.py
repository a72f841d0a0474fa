"""Recovery actions and silence in the health policy: each recovery class (NVML's
field and event), the XID catalogue fallback, clearing on NONE, and Unknown for
a GPU whose NVML calls overran or when the health producers stalled."""

from __future__ import annotations

import pytest

from dra_driver.health import recovery
from dra_driver.health.board import Health
from dra_driver.health.policy import (
    REASON_STALLED,
    REASON_UNRESPONSIVE,
    HealthPolicy,
    PolicyConfig,
)
from dra_driver.inventory import Inventory, build_inventory
from dra_driver.nvml.errors import ERROR_NOT_SUPPORTED, ERROR_UNKNOWN, SUCCESS
from dra_driver.nvml.types import (
    EVENT_DOUBLE_BIT_ECC,
    EVENT_GPU_RECOVERY_ACTION,
    EVENT_XID_CRITICAL,
    MIG_DISABLE,
    MIG_ENABLE,
    GpuRecord,
    HealthSample,
    MigRecord,
    NvmlEvent,
    NvmlSnapshot,
    Reading,
)

U0 = "GPU-00000000-1111-2222-3333-444444444444"
U1 = "GPU-00000001-1111-2222-3333-444444444444"
MIG = "gpu-0-mig-1g10gb-19-0"
GPU0 = ("gpu-0", MIG)
HOLD = 600.0


def inventory() -> Inventory:
    mig = MigRecord(0, "MIG-0", 1, 0, 19, "1g.10gb", 0, 1, 16, 1, 1, 0, 1, 0, 10 << 30)

    def gpu(index: int, uuid: str, migs: tuple[MigRecord, ...] = ()) -> GpuRecord:
        mode = MIG_ENABLE if migs else MIG_DISABLE
        return GpuRecord(
            index, index, uuid, "NVIDIA H100", 2, 9, (9, 0), 80 << 30,
            f"00000000:{0x17 + index:02x}:00.0", mode, mode, migs,
        )  # fmt: skip

    return build_inventory(NvmlSnapshot("565.57.01", 12070, (gpu(0, U0, (mig,)), gpu(1, U1))), "t")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def policy(clock: Clock) -> HealthPolicy:
    return HealthPolicy(inventory(), PolicyConfig(hold_seconds=HOLD), clock)


NO_FIELD = Reading(0, ERROR_NOT_SUPPORTED)  # a driver before 565


def sample(index: int = 0, action: Reading = NO_FIELD) -> HealthSample:
    ok, none = Reading(0), Reading(0, ERROR_NOT_SUPPORTED)
    width = Reading(16)
    return HealthSample(
        index, (U0, U1)[index], SUCCESS, ok, Reading(40), ok, ok, none, ok, ok, ok, ok,
        width, width, action,
    )  # fmt: skip


def xid(value: int, index: int = 0) -> NvmlEvent:
    return NvmlEvent(index, (U0, U1)[index], EVENT_XID_CRITICAL, value)


def action_event(action: int, index: int = 0) -> NvmlEvent:
    return NvmlEvent(index, (U0, U1)[index], EVENT_GPU_RECOVERY_ACTION, action)


def verdict(p: HealthPolicy, device: str = "gpu-0") -> tuple[Health, str, str]:
    v = p.verdict(device)
    return v.health, v.reason, v.recovery


# -- the XID catalogue fallback -----------------------------------------------------------


@pytest.mark.parametrize(
    ("xid_value", "needs"),
    [
        (79, recovery.NODE_REBOOT),  # RESTART_BM
        (48, recovery.GPU_RESET),  # WORKFLOW_XID_48: reset or reboot
        (95, recovery.GPU_RESET),  # RESET_GPU
        (119, recovery.GPU_RESET),
        (74, recovery.DRAIN_AND_RESET),  # WORKFLOW_NVLINK_ERR
        (145, recovery.DRAIN_AND_RESET),  # WORKFLOW_NVLINK5_ERR
        (94, recovery.NONE),  # RESTART_APP: contained to the application
        (63, recovery.NONE),  # IGNORE
        (999, recovery.UNKNOWN),  # not in the catalogue
    ],
)
def test_without_nvml_actions_an_xid_is_classified_by_the_catalogue(
    policy: HealthPolicy, xid_value: int, needs: str
) -> None:
    policy.on_samples([sample(0), sample(1)], 999.0)  # the driver has no recovery field
    policy.on_event(xid(xid_value))
    assert verdict(policy) == (Health.UNHEALTHY, f"xid-{xid_value}", needs)
    assert recovery.describe(needs) in policy.verdict("gpu-0").message
    assert verdict(policy, MIG)[2] == needs  # the MIG device behind it needs the same


def test_catalogue_classes_are_disjoint_and_cover_the_common_xids() -> None:
    seen: dict[int, str] = {}
    for cls, xids in recovery.XID_CATALOGUE.items():
        for x in xids:
            assert x not in seen, f"XID {x} in {seen[x]} and {cls}"
            seen[x] = cls
    for x in (13, 31, 43, 45, 48, 61 + 1, 63, 64, 68, 74, 79, 92, 94, 95, 109, 119, 120):
        assert recovery.for_xid(x) != recovery.UNKNOWN, x


def test_non_xid_conditions_say_what_they_need(policy: HealthPolicy) -> None:
    policy.on_event(NvmlEvent(1, U1, EVENT_DOUBLE_BIT_ECC, 0))
    assert verdict(policy, "gpu-1") == (Health.UNHEALTHY, "ecc-dbe", recovery.GPU_RESET)


# -- NVML's own recovery action -------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "needs"),
    [
        (1, recovery.GPU_RESET),
        (2, recovery.NODE_REBOOT),
        (3, recovery.DRAIN_P2P),
        (4, recovery.DRAIN_AND_RESET),
    ],
)
def test_the_field_classifies_raises_and_clears_on_none(
    policy: HealthPolicy, clock: Clock, action: int, needs: str
) -> None:
    policy.on_samples([sample(0, Reading(0)), sample(1)], clock.now)
    policy.on_event(xid(94))  # the catalogue alone says "none"
    assert verdict(policy)[2] == recovery.NONE
    clock.now += 1
    policy.on_samples([sample(0, Reading(action)), sample(1)], clock.now)
    h, _, got = verdict(policy)
    assert (h, got) == (Health.UNHEALTHY, needs)  # NVML knows better than the table
    reasons = [c.reason for c in policy.conditions("gpu-0")]
    assert reasons[0] == "xid-94" and reasons[1].startswith("recovery-action-")
    assert recovery.describe(needs) in policy.verdict("gpu-0").message
    # The action is done: NONE while the GPU answers clears it at once, no hold.
    clock.now += 1
    out = policy.on_samples([sample(0, Reading(0)), sample(1)], clock.now)
    assert verdict(policy) == (Health.HEALTHY, "", "")
    assert set(GPU0) <= out.changed


@pytest.mark.parametrize("action", [1, 2, 3, 4])
def test_the_event_classifies_and_a_later_none_sample_clears(
    policy: HealthPolicy, clock: Clock, action: int
) -> None:
    policy.on_samples([sample(0, Reading(0)), sample(1)], clock.now)
    policy.on_event(xid(79))
    policy.on_event(action_event(action))
    assert verdict(policy)[2] == recovery.for_action(action)
    clock.now += 1
    policy.on_event(action_event(0))  # the event NONE drops only the action condition
    assert [c.reason for c in policy.conditions("gpu-0")] == ["xid-79"]
    policy.on_samples([sample(0, Reading(0)), sample(1)], clock.now)  # ... the GPU answers
    assert verdict(policy) == (Health.HEALTHY, "", "")


def test_none_without_an_action_ever_seen_keeps_the_hold(
    policy: HealthPolicy, clock: Clock
) -> None:
    policy.on_samples([sample(0, Reading(0)), sample(1)], clock.now)
    policy.on_event(xid(79))
    clock.now += 1
    policy.on_samples([sample(0, Reading(0)), sample(1)], clock.now)
    assert verdict(policy)[:2] == (Health.UNHEALTHY, "xid-79")  # the driver never asked
    clock.now += HOLD + 1
    policy.on_samples([sample(0, Reading(0)), sample(1)], clock.now)
    assert verdict(policy)[0] is Health.HEALTHY


def test_a_repeat_after_the_action_must_be_acknowledged_again(
    policy: HealthPolicy, clock: Clock
) -> None:
    policy.on_samples([sample(0, Reading(1)), sample(1)], clock.now)
    policy.on_event(xid(48))
    clock.now += 1
    policy.on_samples([sample(0, Reading(1)), sample(1)], clock.now)
    policy.on_event(xid(48))  # again, after NVML's last word
    clock.now += 1
    policy.on_samples([sample(0, Reading(0)), sample(1)], clock.now - 2)  # started before it
    assert verdict(policy)[1] == "xid-48"


def test_a_failing_field_read_changes_nothing(policy: HealthPolicy, clock: Clock) -> None:
    policy.on_samples([sample(0, Reading(2)), sample(1)], clock.now)
    clock.now += 1
    policy.on_samples([sample(0, Reading(0, ERROR_UNKNOWN)), sample(1)], clock.now)
    assert verdict(policy) == (Health.UNHEALTHY, "recovery-action-node-reboot", "node-reboot")


# -- silence: Unknown ----------------------------------------------------------------------


def test_an_unresponsive_gpu_is_unknown_with_its_mig_devices_only(
    policy: HealthPolicy, clock: Clock
) -> None:
    policy.on_samples([sample(0), sample(1)], clock.now)
    out = policy.set_unresponsive(U0, clock.now, "health sample")
    assert out.changed == set(GPU0)
    clock.now += 7
    for device in GPU0:
        v = policy.verdict(device)
        assert (v.health, v.reason) == (Health.UNKNOWN, REASON_UNRESPONSIVE)
        assert "NVML has not answered for 7 s (health sample)" in v.message
    assert policy.verdict("gpu-1").health is Health.HEALTHY
    assert policy.set_answered(U0).changed == set(GPU0)
    assert policy.verdict("gpu-0").health is Health.HEALTHY


def test_a_known_fault_outranks_the_silence_and_mentions_it(
    policy: HealthPolicy, clock: Clock
) -> None:
    policy.on_event(xid(79))
    policy.set_unresponsive(U0, clock.now, "health sample")
    v = policy.verdict("gpu-0")
    assert (v.health, v.reason, v.recovery) == (Health.UNHEALTHY, "xid-79", "node-reboot")
    assert "NVML has not answered" in v.message


def test_degraded_under_silence_is_unknown_with_the_last_known_state(
    policy: HealthPolicy, clock: Clock
) -> None:
    hot = HealthSample(
        1, U1, SUCCESS, Reading(0), Reading(95), Reading(0), Reading(0),
        Reading(0, ERROR_NOT_SUPPORTED), Reading(0), Reading(0), Reading(0), Reading(0),
        Reading(16), Reading(16),
    )  # fmt: skip
    policy.on_samples([sample(0), hot], clock.now)
    assert policy.verdict("gpu-1").health is Health.DEGRADED
    policy.set_unresponsive(U1, clock.now, "health sample")
    v = policy.verdict("gpu-1")
    assert v.health is Health.UNKNOWN and "last known: thermal" in v.message


def test_stalled_producers_make_every_device_unknown(policy: HealthPolicy, clock: Clock) -> None:
    out = policy.set_stalled("events", clock.now, "the NVML event wait has not returned")
    assert out.changed == set(policy.devices)
    clock.now += 3
    assert {policy.verdict(d).health for d in policy.devices} == {Health.UNKNOWN}
    v = policy.verdict("gpu-1")
    assert v.reason == REASON_STALLED and "for 3 s" in v.message
    assert policy.clear_stalled("events").changed == set(policy.devices)
    assert {policy.verdict(d).health for d in policy.devices} == {Health.HEALTHY}
    assert policy.clear_stalled("events").changed == set()


def test_recovery_classes_rank_by_disruption() -> None:
    assert recovery.worst(["none", "gpu-reset", "node-reboot"]) == "node-reboot"
    assert recovery.worst(["drain-p2p", "gpu-reset"]) == "drain-p2p"
    assert recovery.worst([]) == ""
    assert recovery.for_action(99) == "action-99"


def test_any_answering_sample_ends_the_silence(policy: HealthPolicy, clock: Clock) -> None:
    policy.set_unresponsive(U0, clock.now, "nvmlDeviceSetComputeMode")
    assert policy.verdict("gpu-0").health is Health.UNKNOWN
    out = policy.on_samples([sample(0), sample(1)], clock.now + 1)
    assert set(GPU0) <= out.changed and policy.verdict("gpu-0").health is Health.HEALTHY
