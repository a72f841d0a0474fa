"""Re-enumeration without restart: NVML is read again every interval; changes flow on.

What changes between reads, and what the driver does about it:

* a GPU that did not answer at start (lost, being reset) answers now: it is
  added, published and monitored;
* an operator re-laid out a GPU's static MIG devices (created or destroyed GPU
  instances): the GPU's devices follow the new layout, and the slice publisher
  writes only what differs;
* a GPU that stops answering (lost at runtime) is *kept* as last read: it stays
  published with its gpu-lost taint until it answers again, never dropped;
* a device that vanishes while a prepared claim holds it (its MIG device was
  destroyed under it) stays on the health board, Unhealthy, "device no longer
  present", until the claim is unprepared: the kubelet and the claim's status
  see it, rather than it silently disappearing from the stream.

merge_rescan() is pure; Rescanner is the loop. Each read runs in a daemon
thread with a deadline: NVML hung on a sick GPU never stalls the loop (the
next read waits until that one returns).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable

from .inventory import Device, Inventory

log = logging.getLogger(__name__)

REASON_NOT_PRESENT = "device-not-present"
MESSAGE_NOT_PRESENT = "device no longer present on this node (a prepared claim still holds it)"


def merge_rescan(old: Inventory, new: Inventory) -> Inventory:
    """The inventory to use after a re-read: new, plus the GPUs it lost but `old` had.

    A GPU missing from a read did not answer (NVML reports lost GPUs by
    failing to hand out their handle); it is kept with its last known devices.
    """
    seen = {g.uuid for g in new.gpus}
    kept = [g for g in old.gpus if g.uuid not in seen]
    if not kept:
        return new
    kept_names = {g.name for g in kept} | {d.name for g in kept for d in g.mig_devices}
    new_names = {d.name for d in new.devices}
    extra: list[Device] = [
        d for d in old.devices if d.name in kept_names and d.name not in new_names
    ]
    gpus = tuple(sorted((*new.gpus, *kept), key=lambda g: g.index))
    devices = tuple(sorted((*new.devices, *extra), key=lambda d: d.gpu_index))
    return Inventory(
        driver_version=new.driver_version,
        cuda_driver_version=new.cuda_driver_version,
        gpus=gpus,
        devices=devices,
        problems=new.problems,
        backend=new.backend,
    )


def same_devices(a: Inventory, b: Inventory) -> bool:
    """Whether two inventories publish and monitor exactly the same things."""
    return a.devices == b.devices and a.gpus == b.gpus


class Rescanner:
    """Reads the inventory every `interval`; `changed` gets each merged one that differs."""

    def __init__(
        self,
        read: Callable[[], Inventory],
        current: Callable[[], Inventory],
        changed: Callable[[Inventory], None],
        interval: float,
        deadline: float,
        tick: Callable[[], None] | None = None,
    ) -> None:
        self._read = read
        self._current = current
        self._changed = changed
        self._interval = interval
        self._deadline = deadline
        self._tick = tick
        self._pending: concurrent.futures.Future[Inventory] | None = None
        self.reads = 0
        self.changes = 0
        self.failures = 0

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.rescan()

    async def rescan(self) -> bool:
        """One read; True when the inventory changed (tests call this directly)."""
        changed = False
        fresh = await self._read_bounded()
        if fresh is not None:
            current = self._current()
            merged = merge_rescan(current, fresh)
            if not same_devices(current, merged):
                self.changes += 1
                log.info(
                    "inventory changed: %s",
                    _describe(current, merged),
                )
                self._changed(merged)
                changed = True
        if self._tick is not None:
            try:
                self._tick()
            except Exception:
                log.exception("BUG: re-enumeration bookkeeping failed")
        return changed

    async def _read_bounded(self) -> Inventory | None:
        if self._pending is not None and not self._pending.done():
            return None  # the last read is still inside NVML: never a second one
        future: concurrent.futures.Future[Inventory] = concurrent.futures.Future()
        self._pending = future

        def run() -> None:
            try:
                future.set_result(self._read())
            except BaseException as e:
                future.set_exception(e)

        threading.Thread(target=run, name="nvml-rescan", daemon=True).start()
        self.reads += 1
        try:
            return await asyncio.wait_for(
                asyncio.shield(asyncio.wrap_future(future)), self._deadline
            )
        except TimeoutError:
            self.failures += 1
            log.warning("re-reading the inventory took over %gs; skipped", self._deadline)
        except Exception as e:
            self.failures += 1
            log.warning("re-reading the inventory failed: %s; keeping the last one", e)
        return None


def _describe(old: Inventory, new: Inventory) -> str:
    before = {d.name: d.uuid for d in old.devices}
    after = {d.name: d.uuid for d in new.devices}
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    replaced = sorted(n for n in set(after) & set(before) if after[n] != before[n])
    parts = [
        f"{label} {', '.join(names)}"
        for label, names in (("added", added), ("removed", removed), ("replaced", replaced))
        if names
    ]
    return "; ".join(parts) or "device details changed"
