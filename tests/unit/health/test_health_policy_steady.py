"""The policy's steady-state shortcut: a sample equal to the last one applied changes nothing.

The shortcut must never change a verdict, so the main test drives two
policies with the same random mix of samples, events and clock steps, one of
them with the shortcut defeated before every sample, and compares every
condition after every step.
"""

from __future__ import annotations

import random
from dataclasses import replace

from dra_driver.health.board import Health
from dra_driver.health.policy import HealthPolicy, PolicyConfig
from dra_driver.inventory import Inventory, build_inventory
from dra_driver.nvml.errors import ERROR_GPU_IS_LOST, ERROR_NOT_SUPPORTED, SUCCESS
from dra_driver.nvml.types import (
    EVENT_DOUBLE_BIT_ECC,
    EVENT_GPU_UNAVAILABLE,
    EVENT_XID_CRITICAL,
    INSTANCE_ID_ALL,
    HealthSample,
    NvmlEvent,
    Reading,
)
from dra_driver.testing.records import gpu_record, mig_record, snapshot

U = ("GPU-00000000-1111-2222-3333-444444444444", "GPU-00000001-1111-2222-3333-444444444444")
HOLD = 30.0


def inventory() -> Inventory:
    migs = (mig_record(0), mig_record(1), mig_record(2, 2))
    return build_inventory(snapshot(gpu_record(0, migs, uuid=U[0]), gpu_record(1, uuid=U[1])), "t")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sample(index: int, rc: int = SUCCESS, **values: int) -> HealthSample:
    r = {
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
    r.update({k: Reading(v) for k, v in values.items()})
    if rc != SUCCESS:
        r = {k: Reading(0, rc) for k in r}
    return HealthSample(gpu_index=index, uuid=U[index], rc=rc, **r)


def conditions(p: HealthPolicy) -> dict[str, list[tuple[object, ...]]]:
    return {
        d: [(c.reason, c.severity, c.message, c.kind, c.count) for c in p.conditions(d)]
        for d in p.devices
    }


def test_an_equal_sample_takes_the_shortcut_and_keeps_every_condition() -> None:
    clock = Clock()
    p = HealthPolicy(inventory(), PolicyConfig(hold_seconds=HOLD), clock)
    narrow = [sample(0, pcie_link_width_current=8), sample(1)]
    assert p.on_samples(narrow, clock()).changed == {
        "gpu-0",
        *[d for d in p.devices if d.startswith("gpu-0-mig")],
    }
    settled = [g.settled for g in p._gpus.values()]
    assert settled == narrow
    clock.now += 1
    again = [replace(s) for s in narrow]  # equal, not the same objects (nvidia-ml-py)
    assert p.on_samples(again, clock()).changed == set()
    assert p.verdict("gpu-0").health is Health.DEGRADED
    # a changed sample is applied in full: the link is back
    clock.now += 1
    assert "gpu-0" in p.on_samples([sample(0), sample(1)], clock()).changed
    assert p.verdict("gpu-0").health is Health.HEALTHY


def test_an_event_between_sample_and_apply_is_not_hidden_by_the_shortcut() -> None:
    clock = Clock()
    p = HealthPolicy(inventory(), PolicyConfig(hold_seconds=HOLD), clock)
    healthy = [sample(0), sample(1)]
    p.on_samples(healthy, clock())
    started = clock()
    clock.now += 0.5
    p.on_event(NvmlEvent(1, U[1], EVENT_GPU_UNAVAILABLE, 0))  # raised while sampling
    p.on_samples(healthy, started)  # the sample began before the loss: it stays
    assert p.verdict("gpu-1").health is Health.UNHEALTHY
    clock.now += 1
    p.on_samples(healthy, clock())  # equal readings, but newer: the GPU answers again
    assert p.verdict("gpu-1").health is Health.HEALTHY


def test_held_conditions_expire_under_equal_samples() -> None:
    clock = Clock()
    p = HealthPolicy(inventory(), PolicyConfig(hold_seconds=HOLD), clock)
    healthy = [sample(0), sample(1)]
    p.on_samples(healthy, clock())
    p.on_event(NvmlEvent(0, U[0], EVENT_XID_CRITICAL, 48, INSTANCE_ID_ALL, INSTANCE_ID_ALL))
    for _ in range(5):
        clock.now += HOLD / 4
        p.on_samples(healthy, clock())
    assert p.verdict("gpu-0").health is Health.HEALTHY
    assert p.next_expiry() is None


def test_the_shortcut_never_changes_a_verdict() -> None:
    rng = random.Random(7)
    for seed in range(40):
        rng.seed(seed)
        clocks = (Clock(), Clock())
        fast, full = (HealthPolicy(inventory(), PolicyConfig(hold_seconds=HOLD), c) for c in clocks)
        variants = [
            {},
            {"pcie_link_width_current": 8},
            {"ecc_uncorrected_volatile": 1},
            {"ecc_uncorrected_volatile": 2},
            {"remapped_rows_pending": 1},
            {"clocks_event_reasons": 0x8},
        ]
        current = [sample(0), sample(1)]
        for _ in range(60):
            step = rng.random()
            if step < 0.5:
                if rng.random() < 0.3:
                    i = rng.randrange(2)
                    if rng.random() < 0.15:
                        current[i] = sample(i, ERROR_GPU_IS_LOST)
                    else:
                        current[i] = sample(i, **rng.choice(variants))
                started = clocks[0]() - rng.choice((0.0, 0.0, 0.5))
                for g in full._gpus.values():
                    g.settled = None  # no shortcut for this one
                fast.on_samples(list(current), started)
                full.on_samples([replace(s) for s in current], started)
            elif step < 0.7:
                i = rng.randrange(2)
                kind = rng.choice((EVENT_XID_CRITICAL, EVENT_DOUBLE_BIT_ECC, EVENT_GPU_UNAVAILABLE))
                ev = NvmlEvent(i, U[i], kind, 79 if kind == EVENT_XID_CRITICAL else 0)
                fast.on_event(ev)
                full.on_event(ev)
            else:
                dt = rng.choice((1.0, HOLD / 2, HOLD))
                for c in clocks:
                    c.now += dt
            assert conditions(fast) == conditions(full), f"seed {seed}"
