"""Re-enumeration, pure parts: merge_rescan keeps lost GPUs; the policy follows a MIG re-layout;
the Rescanner never blocks on a hung read.
"""

from __future__ import annotations

import asyncio
import threading

from dra_driver.health.board import Health
from dra_driver.health.policy import HealthPolicy
from dra_driver.inventory import Inventory, build_inventory
from dra_driver.nvml.types import EVENT_XID_CRITICAL, NvmlEvent
from dra_driver.rescan import Rescanner, merge_rescan, same_devices
from dra_driver.testing.records import gpu_record, mig_record, snapshot

G0 = gpu_record(0).uuid


def inv(*layout: tuple[int, int, int], whole: bool = True) -> Inventory:
    """GPU 0 in MIG mode with (start, size, gi) devices, GPU 1 whole (when `whole`)."""
    migs = [mig_record(start, size, gi=gi, uuid=f"MIG-{gi:08d}-0000-4000-8000-000000000000")
            for start, size, gi in layout]  # fmt: skip
    gpus = [gpu_record(0, migs)] + ([gpu_record(1)] if whole else [])
    return build_inventory(snapshot(*gpus))


def names(i: Inventory) -> list[str]:
    return [d.name for d in i.devices]


def test_a_gpu_missing_from_a_read_is_kept_and_a_new_one_added() -> None:
    both = inv((0, 1, 1))
    lost = inv((0, 1, 1), whole=False)
    merged = merge_rescan(both, lost)
    assert same_devices(merged, both)
    assert names(merge_rescan(lost, both)) == names(both)  # back: added
    relaid = inv((0, 1, 1), (1, 1, 2), whole=False)
    merged = merge_rescan(both, relaid)  # GPU 1 lost while GPU 0 was re-laid out
    assert names(merged) == [*names(relaid), "gpu-1"]
    assert not same_devices(merged, both)


def xid(gi: int, ci: int = 0) -> NvmlEvent:
    return NvmlEvent(0, G0, EVENT_XID_CRITICAL, 48, gi, ci)


def test_the_policy_follows_a_mig_relayout_and_keeps_what_it_knew() -> None:
    before = inv((0, 1, 1), (1, 1, 2))
    a, b = names(before)[:2]
    policy = HealthPolicy(before)
    policy.on_event(xid(1))
    assert policy.verdict(a).health is Health.UNHEALTHY
    after = inv((0, 1, 1), (4, 2, 7))  # b destroyed, a new 2g device at slice 4 as GI 7
    new = policy.follow(after)
    c = (set(names(after)) - set(names(before))).pop()
    assert new == {c}
    assert b not in policy.devices and c in policy.devices
    assert policy.verdict(a).health is Health.UNHEALTHY  # kept across the re-layout
    assert policy.verdict(c).health is Health.HEALTHY
    out = policy.on_event(xid(7))  # the new (GI, CI) is known: only c is hit
    assert out.changed == {c}
    assert policy.verdict(c).health is Health.UNHEALTHY
    assert policy.follow(after) == set()


async def test_a_hung_read_is_skipped_not_waited_on() -> None:
    current = inv((0, 1, 1))
    release = threading.Event()
    changes: list[Inventory] = []

    def read() -> Inventory:
        release.wait(5)
        return inv((0, 1, 1), (1, 1, 2))

    r = Rescanner(read, lambda: current, changes.append, interval=10, deadline=0.05)
    assert await r.rescan() is False
    assert r.failures == 1
    assert await r.rescan() is False  # still inside NVML: no second read
    assert r.reads == 1
    release.set()
    await asyncio.sleep(0.05)
    assert await r.rescan() is True
    assert [names(c) for c in changes] == [names(inv((0, 1, 1), (1, 1, 2)))]
