"""HealthPolicy: every signal and event kind, blast radius, holds and recovery.

The policy is pure: an inventory built from synthetic NVML records, a fake
clock, and events/samples made by hand drive it completely.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest

from dra_driver.health.board import Health
from dra_driver.health.policy import (
    DEFAULT_IGNORED_XIDS,
    HealthPolicy,
    Kind,
    Outcome,
    PolicyConfig,
)
from dra_driver.inventory import Inventory, build_inventory
from dra_driver.nvml.errors import (
    ERROR_FUNCTION_NOT_FOUND,
    ERROR_GPU_IS_LOST,
    ERROR_NOT_SUPPORTED,
    ERROR_RESET_REQUIRED,
    ERROR_UNINITIALIZED,
    ERROR_UNKNOWN,
    SUCCESS,
)
from dra_driver.nvml.types import (
    EVENT_DOUBLE_BIT_ECC,
    EVENT_GPU_RECOVERY_ACTION,
    EVENT_GPU_UNAVAILABLE,
    EVENT_SINGLE_BIT_ECC,
    EVENT_XID_CRITICAL,
    INSTANCE_ID_ALL,
    HealthSample,
    NvmlEvent,
    Reading,
)
from dra_driver.testing import gpu_record, mig_record, snapshot

U0 = "GPU-00000000-1111-2222-3333-444444444444"
U1 = "GPU-00000001-1111-2222-3333-444444444444"
# GPU 0 is in MIG mode with three MIG devices; GPU 1 is a whole GPU.
MIG_A = "gpu-0-mig-1g10gb-19-0"  # GI 1 CI 0
MIG_B = "gpu-0-mig-1g10gb-19-1"  # GI 2 CI 0
MIG_C = "gpu-0-mig-2g20gb-14-2"  # GI 3 CI 0
GPU0 = ("gpu-0", MIG_A, MIG_B, MIG_C)
GPU1 = "gpu-1"
HOLD = 60.0


def inventory() -> Inventory:
    # GPU 0: 1g.10gb at 0 and 1 (GIs 1, 2), 2g.20gb at 2 (GI 3).
    mig_devices = (mig_record(0), mig_record(1), mig_record(2, 2))
    snap = snapshot(gpu_record(0, mig_devices, uuid=U0), gpu_record(1, uuid=U1))
    return build_inventory(snap, "test")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def policy(clock: Clock) -> HealthPolicy:
    return HealthPolicy(inventory(), PolicyConfig(hold_seconds=HOLD), clock)


def sample(index: int = 0, *, rc: int = SUCCESS, **readings: int | Reading) -> HealthSample:
    """A healthy sample of one GPU; keyword readings override (int = a SUCCESS value)."""
    values: dict[str, Reading] = {
        "clocks_event_reasons": Reading(0),
        "temperature_c": Reading(40),
        "ecc_corrected_volatile": Reading(0),
        "ecc_uncorrected_volatile": Reading(0),
        "retired_pages_pending": Reading(0, ERROR_NOT_SUPPORTED),
        "remapped_rows_corrected": Reading(0),
        "remapped_rows_uncorrected": Reading(0),
        "remapped_rows_pending": Reading(0),
        "remapped_rows_failure": Reading(0),
        "pcie_link_width_current": Reading(16),
        "pcie_link_width_max": Reading(16),
    }
    for key, value in readings.items():
        values[key] = value if isinstance(value, Reading) else Reading(value)
    if rc != SUCCESS:
        values = {k: Reading(0, rc) for k in values}
    return HealthSample(gpu_index=index, uuid=(U0, U1)[index], rc=rc, **values)


def healthy_samples() -> list[HealthSample]:
    return [sample(0), sample(1)]


def xid(
    value: int, index: int = 0, gi: int = INSTANCE_ID_ALL, ci: int = INSTANCE_ID_ALL
) -> NvmlEvent:
    return NvmlEvent(index, (U0, U1)[index], EVENT_XID_CRITICAL, value, gi, ci)


def event(kind: int, index: int = 0, data: int = 0) -> NvmlEvent:
    return NvmlEvent(index, (U0, U1)[index], kind, data)


def states(p: HealthPolicy) -> dict[str, tuple[Health, str]]:
    return {v.device: (v.health, v.reason) for v in p.verdicts()}


def unhealthy(p: HealthPolicy) -> set[str]:
    return {d for d, (h, _) in states(p).items() if h is Health.UNHEALTHY}


def degraded(p: HealthPolicy) -> set[str]:
    return {d for d, (h, _) in states(p).items() if h is Health.DEGRADED}


def reasons(p: HealthPolicy, device: str) -> list[str]:
    return [c.reason for c in p.conditions(device)]


# -- starting point --------------------------------------------------------------------


def test_every_device_starts_healthy_including_the_mig_parent(policy: HealthPolicy) -> None:
    assert policy.devices == sorted([*GPU0, GPU1])
    for v in policy.verdicts():
        assert (v.health, v.message, v.reason) == (Health.HEALTHY, "", "")
    out = policy.on_samples(healthy_samples(), 999.0)
    assert out.changed == set() and not any(n.level >= logging.WARNING for n in out.notes)


def test_negative_hold_is_refused() -> None:
    with pytest.raises(ValueError, match="hold_seconds"):
        PolicyConfig(hold_seconds=-1)


# -- XIDs and blast radius -------------------------------------------------------------


def test_mig_scoped_xid_hits_only_that_mig_device(policy: HealthPolicy) -> None:
    out = policy.on_event(xid(48, gi=3, ci=0))
    assert out.changed == {MIG_C}
    assert unhealthy(policy) == {MIG_C}
    v = policy.verdict(MIG_C)
    assert v.reason == "xid-48"
    assert "XID 48" in v.message and "double-bit ECC" in v.message
    assert policy.verdict(GPU1).health is Health.HEALTHY


def test_gi_scoped_xid_without_ci_hits_every_ci_of_that_gi(policy: HealthPolicy) -> None:
    policy.on_event(xid(94, gi=2, ci=INSTANCE_ID_ALL))
    assert unhealthy(policy) == {MIG_B}


def test_gpu_wide_xid_hits_the_gpu_and_all_its_mig_devices_never_another_gpu(
    policy: HealthPolicy,
) -> None:
    out = policy.on_event(xid(79))
    assert out.changed == set(GPU0)
    assert unhealthy(policy) == set(GPU0)
    policy.on_event(xid(62, index=1))
    assert unhealthy(policy) == {*GPU0, GPU1}
    assert reasons(policy, GPU1) == ["xid-62"]


def test_xid_for_an_unknown_instance_widens_to_the_whole_gpu_and_says_so(
    policy: HealthPolicy,
) -> None:
    out = policy.on_event(xid(48, gi=9, ci=0))
    assert unhealthy(policy) == set(GPU0)
    assert any(n.level == logging.WARNING and "GPU instance 9" in n.text for n in out.notes)


@pytest.mark.parametrize("ignored", DEFAULT_IGNORED_XIDS)
def test_default_ignored_xids_change_nothing_but_are_noted(
    policy: HealthPolicy, ignored: int
) -> None:
    out = policy.on_event(xid(ignored, gi=1, ci=0))
    assert out.changed == set()
    assert unhealthy(policy) == set()
    assert any(f"XID {ignored}" in n.text and "ignored" in n.text for n in out.notes)


def test_ignored_xids_are_configurable(clock: Clock) -> None:
    p = HealthPolicy(inventory(), PolicyConfig(ignored_xids=frozenset({48})), clock)
    p.on_event(xid(48))
    assert unhealthy(p) == set()
    p.on_event(xid(13, index=1))  # no longer ignored
    assert unhealthy(p) == {GPU1}


def test_events_of_unknown_gpus_are_noted_and_change_nothing(policy: HealthPolicy) -> None:
    stray = NvmlEvent(7, "GPU-not-ours", EVENT_XID_CRITICAL, 79)
    out = policy.on_event(stray)
    assert out.changed == set() and unhealthy(policy) == set()
    assert any("unknown GPU" in n.text for n in out.notes)


def test_an_event_without_uuid_is_attributed_by_index(policy: HealthPolicy) -> None:
    policy.on_event(NvmlEvent(1, "", EVENT_XID_CRITICAL, 79))
    assert unhealthy(policy) == {GPU1}


# -- other event kinds -----------------------------------------------------------------


def test_double_bit_ecc_event_is_gpu_wide(policy: HealthPolicy) -> None:
    policy.on_event(event(EVENT_DOUBLE_BIT_ECC, index=0))
    assert unhealthy(policy) == set(GPU0)
    assert all(states(policy)[d] == (Health.UNHEALTHY, "ecc-dbe") for d in GPU0)


def test_single_bit_ecc_and_unknown_events_change_nothing(policy: HealthPolicy) -> None:
    assert policy.on_event(event(EVENT_SINGLE_BIT_ECC)).changed == set()
    assert policy.on_event(event(0x2000)).changed == set()
    assert unhealthy(policy) == set()


def test_gpu_unavailable_event_marks_that_gpu_lost(policy: HealthPolicy) -> None:
    policy.on_event(event(EVENT_GPU_UNAVAILABLE, index=1))
    assert unhealthy(policy) == {GPU1}
    assert states(policy)[GPU1] == (Health.UNHEALTHY, "gpu-lost")


def test_attributed_wait_loss_marks_that_gpu_lost(policy: HealthPolicy) -> None:
    policy.on_wait_lost(U0)
    assert unhealthy(policy) == set(GPU0)
    assert policy.on_wait_lost("GPU-unknown").changed == set()


@pytest.mark.parametrize(
    ("action", "reason"),
    [
        (1, "recovery-action-gpu-reset"),
        (2, "recovery-action-node-reboot"),
        (3, "recovery-action-drain-p2p"),
        (4, "recovery-action-drain-and-reset"),
        (99, "recovery-action-99"),
    ],
)
def test_recovery_action_event_sets_and_none_clears(
    policy: HealthPolicy, action: int, reason: str
) -> None:
    policy.on_event(event(EVENT_GPU_RECOVERY_ACTION, index=1, data=action))
    assert states(policy)[GPU1] == (Health.UNHEALTHY, reason)
    policy.on_event(xid(79, index=1))
    out = policy.on_event(event(EVENT_GPU_RECOVERY_ACTION, index=1, data=0))
    assert out.changed == {GPU1}
    assert reasons(policy, GPU1) == ["xid-79"]  # only recovery-action conditions clear


# -- polled signals --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("readings", "health", "reason"),
    [
        ({"remapped_rows_failure": 1}, Health.UNHEALTHY, "remap-failure"),
        ({"remapped_rows_pending": 1}, Health.DEGRADED, "remap-pending"),
        ({"retired_pages_pending": 1}, Health.DEGRADED, "retired-pages-pending"),
        ({"clocks_event_reasons": 0x8}, Health.DEGRADED, "hw-slowdown"),
        ({"clocks_event_reasons": 0x40}, Health.DEGRADED, "hw-thermal-slowdown"),
        ({"clocks_event_reasons": 0x80}, Health.DEGRADED, "hw-power-brake"),
        ({"pcie_link_width_current": 8}, Health.DEGRADED, "pcie-x8-of-x16"),
        ({"temperature_c": 90}, Health.DEGRADED, "thermal"),
    ],
)
def test_each_polled_signal_sets_its_condition_on_the_whole_gpu_and_clears_with_it(
    policy: HealthPolicy, clock: Clock, readings: dict[str, int], health: Health, reason: str
) -> None:
    out = policy.on_samples([sample(0, **readings), sample(1)], clock())
    assert out.changed == set(GPU0)
    for d in GPU0:
        assert states(policy)[d] == (health, reason)
    assert states(policy)[GPU1] == (Health.HEALTHY, "")
    clock.advance(1)
    assert policy.on_samples(healthy_samples(), clock()).changed == set(GPU0)
    assert unhealthy(policy) | degraded(policy) == set()


def test_normal_clock_reasons_are_not_problems(policy: HealthPolicy, clock: Clock) -> None:
    normal = 0x1 | 0x2 | 0x4 | 0x10 | 0x20 | 0x100  # idle, app clocks, SW cap, sync, SW thermal
    assert policy.on_samples([sample(0, clocks_event_reasons=normal)], clock()).changed == set()


def test_temperature_threshold_is_configurable_and_zero_turns_it_off(clock: Clock) -> None:
    hot = [sample(0, temperature_c=120)]
    off = HealthPolicy(inventory(), PolicyConfig(temperature_threshold_c=0), clock)
    assert off.on_samples(hot, clock()).changed == set()
    low = HealthPolicy(inventory(), PolicyConfig(temperature_threshold_c=60), clock)
    low.on_samples([sample(0, temperature_c=59)], clock())
    assert degraded(low) == set()
    low.on_samples([sample(0, temperature_c=60)], clock())
    assert degraded(low) == set(GPU0)
    # A reading that wanders above the threshold does not change the message.
    assert low.on_samples([sample(0, temperature_c=75)], clock()).changed == set()


@pytest.mark.parametrize("rc", [ERROR_NOT_SUPPORTED, ERROR_FUNCTION_NOT_FOUND])
def test_unsupported_readings_are_absent_signals(
    policy: HealthPolicy, clock: Clock, rc: int
) -> None:
    absent = Reading(0, rc)
    everything = sample(
        0,
        clocks_event_reasons=absent,
        temperature_c=absent,
        ecc_uncorrected_volatile=absent,
        remapped_rows_pending=absent,
        remapped_rows_failure=absent,
        pcie_link_width_current=absent,
        pcie_link_width_max=absent,
    )
    out = policy.on_samples([everything], clock())
    assert out.changed == set() and out.notes == []
    assert unhealthy(policy) | degraded(policy) == set()


def test_a_failing_reading_keeps_its_previous_state_and_is_logged_once(
    policy: HealthPolicy, clock: Clock
) -> None:
    policy.on_samples([sample(0, pcie_link_width_current=4)], clock())
    assert degraded(policy) == set(GPU0)
    broken = Reading(0, ERROR_UNKNOWN)
    for i in range(3):
        clock.advance(1)
        out = policy.on_samples([sample(0, pcie_link_width_current=broken)], clock())
        assert out.changed == set()
        warnings = [n for n in out.notes if n.level == logging.WARNING]
        assert len(warnings) == (1 if i == 0 else 0)
    assert reasons(policy, MIG_A) == ["pcie-x4-of-x16"]  # kept, not cleared
    clock.advance(1)
    policy.on_samples([sample(0)], clock())
    assert degraded(policy) == set()


def test_a_sample_error_other_than_lost_changes_nothing_and_is_logged_once(
    policy: HealthPolicy, clock: Clock
) -> None:
    policy.on_samples([sample(0, remapped_rows_pending=1)], clock())
    first = policy.on_samples([sample(0, rc=ERROR_UNINITIALIZED)], clock())
    second = policy.on_samples([sample(0, rc=ERROR_UNINITIALIZED)], clock())
    assert first.changed == second.changed == set()
    assert len(first.notes) == 1 and second.notes == []
    assert degraded(policy) == set(GPU0)


def test_uncorrected_ecc_increase_is_held_and_the_first_sample_is_a_baseline(
    policy: HealthPolicy, clock: Clock
) -> None:
    assert policy.on_samples([sample(0, ecc_uncorrected_volatile=5)], clock()).changed == set()
    clock.advance(1)
    policy.on_samples([sample(0, ecc_uncorrected_volatile=7)], clock())
    assert unhealthy(policy) == set(GPU0)
    assert "from 5 to 7" in policy.verdict(MIG_A).message
    clock.advance(1)
    policy.on_samples([sample(0, ecc_uncorrected_volatile=7)], clock())  # held, not polled
    assert states(policy)[MIG_A] == (Health.UNHEALTHY, "ecc-uncorrected")
    clock.advance(HOLD)
    policy.on_samples([sample(0, ecc_uncorrected_volatile=0)], clock())  # counters reset
    assert unhealthy(policy) == set()
    clock.advance(1)
    policy.on_samples([sample(0, ecc_uncorrected_volatile=1)], clock())  # from the new base
    assert unhealthy(policy) == set(GPU0)


# -- lost GPUs and resets ----------------------------------------------------------------


def test_lost_sample_marks_the_gpu_and_a_later_good_sample_recovers_it(
    policy: HealthPolicy, clock: Clock
) -> None:
    policy.on_samples([sample(0, pcie_link_width_current=8), sample(1)], clock())
    clock.advance(1)
    policy.on_samples([sample(0, rc=ERROR_GPU_IS_LOST), sample(1)], clock())
    assert unhealthy(policy) == set(GPU0)
    assert reasons(policy, MIG_B) == ["gpu-lost"]  # polled signals are gone with the GPU
    assert states(policy)[GPU1] == (Health.HEALTHY, "")
    clock.advance(1)
    out = policy.on_samples([sample(0), sample(1)], clock())
    assert out.changed == set(GPU0)
    assert unhealthy(policy) == set()


def test_a_sample_started_before_the_loss_does_not_clear_it(
    policy: HealthPolicy, clock: Clock
) -> None:
    started = clock()
    clock.advance(0.1)
    policy.on_event(event(EVENT_GPU_UNAVAILABLE, index=1))
    clock.advance(0.1)
    policy.on_samples([sample(1)], started)  # in flight when the GPU fell off
    assert unhealthy(policy) == {GPU1}
    policy.on_samples([sample(1)], clock())
    assert unhealthy(policy) == set()


def test_reset_required_is_unhealthy_until_the_gpu_answers(
    policy: HealthPolicy, clock: Clock
) -> None:
    policy.on_samples([sample(1, rc=ERROR_RESET_REQUIRED)], clock())
    assert states(policy)[GPU1] == (Health.UNHEALTHY, "reset-required")
    clock.advance(1)
    policy.on_samples([sample(1)], clock())
    assert unhealthy(policy) == set()


# -- holds -----------------------------------------------------------------------------


def test_held_condition_clears_only_after_the_hold_and_a_good_sample(
    policy: HealthPolicy, clock: Clock
) -> None:
    policy.on_samples(healthy_samples(), clock())
    clock.advance(1)
    policy.on_event(xid(48, gi=1, ci=0))
    clock.advance(HOLD - 1)
    policy.on_samples(healthy_samples(), clock())
    assert unhealthy(policy) == {MIG_A}  # hold not over
    clock.advance(2)
    out = policy.expire()  # hold over, and the GPU answered after the XID
    assert out.changed == {MIG_A}
    assert unhealthy(policy) == set()


def test_hold_needs_a_good_sample_after_the_last_occurrence(
    policy: HealthPolicy, clock: Clock
) -> None:
    policy.on_samples(healthy_samples(), clock())
    clock.advance(1)
    policy.on_event(xid(79, index=1))
    clock.advance(HOLD * 2)
    assert policy.expire().changed == set()  # no sample since the XID: is it answering?
    assert unhealthy(policy) == {GPU1}
    out = policy.on_samples(healthy_samples(), clock())
    assert out.changed == {GPU1}
    assert any("cleared after" in n.text for n in out.notes)
    assert unhealthy(policy) == set()


def test_a_lost_gpu_never_expires_its_held_conditions(policy: HealthPolicy, clock: Clock) -> None:
    policy.on_event(xid(79, index=1))
    clock.advance(1)
    policy.on_samples([sample(0), sample(1, rc=ERROR_GPU_IS_LOST)], clock())
    clock.advance(HOLD * 2)
    policy.on_samples([sample(0), sample(1, rc=ERROR_GPU_IS_LOST)], clock())
    assert reasons(policy, GPU1) == ["xid-79", "gpu-lost"]
    clock.advance(1)
    policy.on_samples(healthy_samples(), clock())  # back: gpu-lost clears at once ...
    assert reasons(policy, GPU1) == ["xid-79"]
    clock.advance(HOLD)
    policy.on_samples(healthy_samples(), clock())  # ... the XID after its hold
    assert unhealthy(policy) == set()


def test_a_repeat_restarts_the_hold_and_is_counted(policy: HealthPolicy, clock: Clock) -> None:
    policy.on_event(xid(94, gi=2, ci=0))
    clock.advance(HOLD - 5)
    out = policy.on_event(xid(94, gi=2, ci=0))
    assert out.changed == {MIG_B}
    assert "(2 times)" in policy.verdict(MIG_B).message
    clock.advance(10)
    policy.on_samples(healthy_samples(), clock())
    assert unhealthy(policy) == {MIG_B}  # 10 s after the repeat, not 60
    assert policy.next_expiry() == pytest.approx(clock() - 10 + HOLD)
    clock.advance(HOLD)
    policy.on_samples(healthy_samples(), clock())
    assert unhealthy(policy) == set()
    assert policy.next_expiry() is None


def test_zero_hold_clears_at_the_next_good_sample(clock: Clock) -> None:
    p = HealthPolicy(inventory(), PolicyConfig(hold_seconds=0), clock)
    p.on_event(xid(48, index=1))
    assert unhealthy(p) == {GPU1}
    clock.advance(0.5)
    p.on_samples(healthy_samples(), clock())
    assert unhealthy(p) == set()


# -- verdicts: worst wins, message order -------------------------------------------------


def test_worst_severity_wins_and_the_message_lists_most_severe_then_oldest(
    policy: HealthPolicy, clock: Clock
) -> None:
    policy.on_samples([sample(0, pcie_link_width_current=8)], clock())
    assert policy.verdict(MIG_C).health is Health.DEGRADED
    clock.advance(1)
    policy.on_event(xid(48, gi=3, ci=0))
    clock.advance(1)
    policy.on_event(event(EVENT_DOUBLE_BIT_ECC))
    v = policy.verdict(MIG_C)
    assert v.health is Health.UNHEALTHY
    assert v.reason == "xid-48"  # the oldest unhealthy condition names the verdict
    parts = v.message.split("; ")
    assert [p.split(" ")[0] for p in parts] == ["xid-48", "ecc-dbe", "pcie-x8-of-x16"]
    assert parts[0].startswith("xid-48 (unhealthy): XID 48")
    assert parts[2].startswith("pcie-x8-of-x16 (degraded): PCIe link runs at x8 of x16")
    # The sibling without the XID shows the GPU-wide conditions only.
    assert [c.reason for c in policy.conditions(MIG_A)] == ["ecc-dbe", "pcie-x8-of-x16"]


def test_unmonitored_note_keeps_the_verdict_and_rides_along_in_the_message(
    policy: HealthPolicy, clock: Clock
) -> None:
    out = policy.set_unmonitored(U1, "registration failed, nvml rc=3")
    assert out.changed == {GPU1}
    v = policy.verdict(GPU1)
    assert v.health is Health.HEALTHY and "unmonitored" in v.message and v.reason == ""
    assert policy.set_unmonitored(U1, "registration failed, nvml rc=3").changed == set()
    policy.on_samples([sample(1, pcie_link_width_current=1)], clock())
    v = policy.verdict(GPU1)
    assert v.health is Health.DEGRADED
    assert v.message.startswith("pcie-x1-of-x16") and v.message.endswith("nvml rc=3)")


# -- flapping --------------------------------------------------------------------------


def test_a_flapping_polled_signal_follows_every_sample(policy: HealthPolicy, clock: Clock) -> None:
    seen = []
    for i in range(10):
        clock.advance(0.1)
        reasons_mask = 0x40 if i % 2 == 0 else 0
        out = policy.on_samples([sample(0), sample(1, clocks_event_reasons=reasons_mask)], clock())
        assert out.changed == {GPU1}
        seen.append(policy.verdict(GPU1).health)
    assert seen == [Health.DEGRADED, Health.HEALTHY] * 5


def test_a_flapping_event_stays_unhealthy_through_the_hold(
    policy: HealthPolicy, clock: Clock
) -> None:
    for _ in range(5):
        policy.on_event(xid(48, index=1))
        clock.advance(1)
        policy.on_samples(healthy_samples(), clock())
        assert policy.verdict(GPU1).health is Health.UNHEALTHY
    c = policy.conditions(GPU1)[0]
    assert (c.kind, c.count) == (Kind.HELD, 5)


def test_outcomes_merge() -> None:
    a, b = Outcome({"x"}), Outcome({"y"})
    b.note(logging.INFO, "hello")
    a.merge(b)
    assert a.changed == {"x", "y"} and [n.text for n in a.notes] == ["hello"]
    assert replace(PolicyConfig(), hold_seconds=1).hold_seconds == 1
