"""Dynamic MIG for the preparer: MIG devices made at prepare, destroyed at unprepare.

With --dynamic-mig a GPU in MIG mode publishes every (profile, placement) its
profiles offer (slices/builder.py). A claim allocated one that does not exist
yet gets it created here, through a MigManager (nvml/migops.py), before its
CDI spec is written; unprepare destroys exactly the instances this driver made.

What the checkpoint holds, per device (DeviceRecord.extra, so older readers
keep it untouched):
* INTENT_KEY, written with the claim's `prepare-started` record before the
  create: the parent GPU, profile and placement. A restart that finds a dead
  instance's started claim with an intent and no CREATED_KEY destroys
  whatever GPU instance sits at that placement: the instance was created (or
  half created) but never recorded; nothing else can be there, since the
  create of a placement that was taken fails.
* CREATED_KEY, written as soon as the instance exists: its GI/CI ids and UUID.
  Unprepare and recovery destroy by these ids.

MigLayout is the live view of MIG devices on MIG-mode GPUs (the start-up
inventory's, then following this driver's own creates and destroys), so a
device destroyed after the start-up inventory is never taken for an existing
one. Creates and destroys take the per-GPU lock (NVML serialises them per GPU
anyway); claims on different GPUs go on in parallel.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from ..inventory import (
    Device,
    DeviceType,
    Gpu,
    Inventory,
    MigPlacement,
    mig_capacities,
    mig_device_name,
)
from ..nvml.errors import (
    NvmlDeadlineError,
    NvmlError,
    NvmlInsufficientResourcesError,
    NvmlNoPermissionError,
    NvmlNotSupportedError,
)
from ..nvml.migops import CreatedMig, MigManager
from ..nvml.types import MigProfile
from .checkpoint import ClaimRecord, DeviceRecord
from .locks import KeyedLocks

log = logging.getLogger(__name__)

INTENT_KEY = "dynamicMig"
CREATED_KEY = "createdMig"
NOT_CREATED = -1  # GI/CI id of a device that does not exist yet

# Upper bounds (seconds) of the create-time histogram.
CREATE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class MigObserver(Protocol):
    """Who follows the MIG layout (the health monitor): a device appears or goes."""

    def mig_created(self, device: Device) -> None: ...

    def mig_destroyed(self, device_name: str, gpu_uuid: str) -> None: ...


@dataclass
class MigStats:
    """Counts the metrics collector reads at scrape time."""

    created: int = 0
    destroyed: int = 0
    create_failures: Counter[str] = field(default_factory=Counter)  # by NVML error name
    create_seconds_sum: float = 0.0
    create_buckets: list[int] = field(default_factory=lambda: [0] * len(CREATE_BUCKETS))

    def copy(self) -> MigStats:
        return replace(
            self,
            create_failures=Counter(self.create_failures),
            create_buckets=list(self.create_buckets),
        )


@dataclass(frozen=True)
class _Offer:
    gpu: Gpu
    profile: MigProfile
    start: int
    size: int


def needs_create(device: Device) -> bool:
    """A MIG device that is only a published (profile, placement) so far."""
    return (
        device.type is DeviceType.MIG
        and device.mig is not None
        and (device.mig.gpu_instance_id == NOT_CREATED)
    )


_CREATE_HINTS: tuple[tuple[type[NvmlError], str], ...] = (
    (
        NvmlInsufficientResourcesError,
        "the placement is already in use on the GPU (a MIG device made outside this driver "
        "since the slices were published?); the next inventory read publishes it",
    ),
    (
        NvmlNoPermissionError,
        "creating MIG devices needs root with CAP_SYS_ADMIN in the plugin's container "
        "(the chart runs it privileged)",
    ),
    (
        NvmlNotSupportedError,
        "this GPU or driver cannot create MIG devices here (MIG mode off, a vGPU or a "
        "passthrough GPU?)",
    ),
    (
        NvmlDeadlineError,
        "NVML did not answer within --mig-deadline: the GPU is taken for hung; the claim's "
        "record keeps the placement, so an instance NVML makes after all is destroyed at "
        "unprepare or the next start",
    ),
)


def create_hint(e: NvmlError) -> str:
    """What a failed create most likely means, for the claim's error (empty if unknown)."""
    return next((hint for kind, hint in _CREATE_HINTS if isinstance(e, kind)), "")


def error_name(e: NvmlError) -> str:
    """The metric label of an NVML failure: the error class without its prefix."""
    return type(e).__name__.removeprefix("Nvml").removesuffix("Error").lower() or f"rc{e.code}"


def _device(offer: _Offer, uuid: str, gi: int, ci: int) -> Device:
    p, gpu = offer.profile, offer.gpu
    attrs: dict[str, Any] = {"type": DeviceType.MIG.value}
    if uuid:
        attrs["uuid"] = uuid
    attrs.update(parentUUID=gpu.uuid, profile=p.name)
    attrs.update(gpu.common_attributes)
    caps = mig_capacities(p, offer.start, offer.size)
    return Device(
        name=mig_device_name(gpu.minor, p.name, p.profile_id, offer.start),
        type=DeviceType.MIG,
        uuid=uuid,
        gpu_index=gpu.index,
        minor=gpu.minor,
        pci_bus_id=gpu.pci_bus_id,
        attributes=attrs,
        capacities=caps,
        parent_uuid=gpu.uuid,
        mig=MigPlacement(
            gpu_instance_id=gi,
            compute_instance_id=ci,
            gi_profile_id=p.profile_id,
            profile=p.name,
            start=offer.start,
            size=offer.size,
        ),
    )


def intent_of(d: DeviceRecord) -> Mapping[str, Any] | None:
    value = d.extra.get(INTENT_KEY)
    return value if isinstance(value, Mapping) else None


def created_of(d: DeviceRecord) -> Mapping[str, Any] | None:
    value = d.extra.get(CREATED_KEY)
    return value if isinstance(value, Mapping) else None


def with_intent(d: DeviceRecord, device: Device) -> DeviceRecord:
    assert device.mig is not None and device.parent_uuid is not None
    intent = {
        "parentUuid": device.parent_uuid,
        "giProfileId": device.mig.gi_profile_id,
        "start": device.mig.start,
    }
    return replace(d, extra={**d.extra, INTENT_KEY: intent})


def with_created(d: DeviceRecord, device: Device) -> DeviceRecord:
    assert device.mig is not None
    made = {
        "gpuInstanceId": device.mig.gpu_instance_id,
        "computeInstanceId": device.mig.compute_instance_id,
        "uuid": device.uuid,
    }
    return replace(d, uuid=device.uuid, extra={**d.extra, CREATED_KEY: made})


def created_uuids(claims: Iterable[ClaimRecord]) -> frozenset[str]:
    """UUIDs of the MIG devices the checkpoint says this driver created."""
    return frozenset(
        str(made["uuid"])
        for rec in claims
        for d in rec.devices
        if (made := created_of(d)) is not None and made.get("uuid")
    )


Placement = tuple[str, int, int]  # (parent GPU UUID, GI profile id, placement start)


def intended_placements(claims: Iterable[ClaimRecord]) -> frozenset[Placement]:
    """Where the checkpoint says this driver is creating a MIG device (intent, no ids yet)."""
    return frozenset(
        (str(intent["parentUuid"]), int(intent["giProfileId"]), int(intent["start"]))
        for rec in claims
        for d in rec.devices
        if (intent := intent_of(d)) is not None and created_of(d) is None
    )


def _placement(d: Device) -> Placement | None:
    if d.mig is None or d.parent_uuid is None:
        return None
    return (d.parent_uuid, d.mig.gi_profile_id, d.mig.start)


def without_created(
    inventory: Inventory,
    uuids: frozenset[str],
    placements: frozenset[Placement] = frozenset(),
) -> Inventory:
    """The inventory as published: MIG devices this driver created are left out, so the
    publisher keeps showing them as the abstract (profile, placement) they were
    allocated as, instead of an operator's device (no slice write per create).

    placements covers a create in flight: an inventory read between the create
    and the record of its ids must not publish the new device as an operator's.
    """
    if not uuids and not placements:
        return inventory

    def ours(d: Device) -> bool:
        return d.uuid in uuids or (bool(placements) and _placement(d) in placements)

    gpus = tuple(
        replace(g, mig_devices=tuple(d for d in g.mig_devices if not ours(d)))
        for g in inventory.gpus
    )
    return Inventory(
        driver_version=inventory.driver_version,
        cuda_driver_version=inventory.cuda_driver_version,
        gpus=gpus,
        devices=tuple(d for d in inventory.devices if not ours(d)),
        problems=inventory.problems,
        backend=inventory.backend,
    )


class MigLayout:
    """The live MIG devices of MIG-mode GPUs, and creating/destroying them."""

    def __init__(
        self,
        inventory: Inventory,
        manager: MigManager,
        locks: KeyedLocks,
        observer: MigObserver | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._manager = manager
        self._locks = locks
        self.observer = observer
        self._clock = clock
        self._offers: dict[str, _Offer] = {}
        self._live: dict[str, Device] = {}
        self._mu = threading.Lock()
        self._stats = MigStats()
        for gpu in inventory.gpus:
            if not gpu.mig_enabled:
                continue
            for p in gpu.mig_profiles:
                for start, size in p.placements:
                    name = mig_device_name(gpu.minor, p.name, p.profile_id, start)
                    self._offers[name] = _Offer(gpu, p, start, size)
            for d in gpu.mig_devices:
                self._live[d.name] = d

    def stats(self) -> MigStats:
        with self._mu:
            return self._stats.copy()

    def resolve(self, name: str) -> Device | None:
        """The device a MIG-mode GPU offers under this name: live, or to be created.

        None for names this layout does not own (full GPUs, GPUs with MIG off).
        """
        with self._mu:
            live = self._live.get(name)
        if live is not None:
            return live
        offer = self._offers.get(name)
        if offer is None:
            return None
        return _device(offer, "", NOT_CREATED, NOT_CREATED)

    def create(self, device: Device) -> Device:
        """Make the MIG device `device` names (a needs_create() one); the real Device back."""
        offer = self._offers[device.name]
        start = self._clock()
        with self._locks.hold([offer.gpu.uuid]):
            try:
                made: CreatedMig = self._manager.create(
                    offer.gpu.uuid, offer.profile.profile_id, offer.start
                )
            except NvmlError as e:
                with self._mu:
                    self._stats.create_failures[error_name(e)] += 1
                raise
        took = self._clock() - start
        real = _device(offer, made.uuid, made.gpu_instance_id, made.compute_instance_id)
        with self._mu:
            self._live[real.name] = real
            self._stats.created += 1
            self._stats.create_seconds_sum += took
            for i, bound in enumerate(CREATE_BUCKETS):
                if took <= bound:
                    self._stats.create_buckets[i] += 1
        log.info(
            "created MIG device %s (%s, GI %d CI %d) in %.1f ms",
            real.name,
            made.uuid,
            made.gpu_instance_id,
            made.compute_instance_id,
            took * 1e3,
        )
        if self.observer is not None:
            self.observer.mig_created(real)
        return real

    def destroy(self, record: DeviceRecord) -> bool:
        """Destroy the instance this driver made for a device; False if it was already gone.

        A device with an intent and no created ids (made but not recorded, or
        half made) is destroyed by placement.
        """
        intent, made = intent_of(record), created_of(record)
        if intent is None:
            return False
        parent = str(intent["parentUuid"])
        with self._locks.hold([parent]):
            if made is not None:
                gone = self._manager.destroy(
                    parent, int(made["gpuInstanceId"]), int(made["computeInstanceId"])
                )
            else:
                gone = self._manager.destroy_at(
                    parent, int(intent["giProfileId"]), int(intent["start"])
                )
        with self._mu:
            self._live.pop(record.device_name, None)
            if gone:
                self._stats.destroyed += 1
        if gone:
            log.info("destroyed MIG device %s of GPU %s", record.device_name, parent)
            if self.observer is not None:
                self.observer.mig_destroyed(record.device_name, parent)
        return gone

    def destroy_claim(self, rec: ClaimRecord) -> list[str]:
        """Destroy every instance a claim's record says this driver made; the failures."""
        return self.destroy_devices(rec.devices)

    def destroy_devices(self, devices: Iterable[DeviceRecord]) -> list[str]:
        failures = []
        for d in devices:
            if intent_of(d) is None:
                continue
            try:
                self.destroy(d)
            except NvmlError as e:
                failures.append(f"{d.device_name}: {e}")
        return failures
