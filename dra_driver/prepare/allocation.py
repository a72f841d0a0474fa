"""A ResourceClaim's allocation on this node -> the devices and settings to prepare. Pure.

Reads the claim's allocation results of this driver, resolves each to an
inventory device of this node's pool, refuses unhealthy devices, attaches the
opaque configuration and works out the NVML settings it asks for. Also holds
the one rule for admin access: a device may be listed several times, in one
claim or across claims, and keeps admin access only if every listing has it.
No I/O here: the preparer calls this between its API read and its transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..health.board import Health, HealthBoard
from ..inventory import Device, DeviceType, Inventory
from .cdi import SpecDevice
from .config import (
    ConfigError,
    GpuConfig,
    OpaqueConfig,
    SharingStrategy,
    TimeSliceInterval,
    base_request,
    config_for,
    decode_configs,
)
from .shape import MalformedClaim, NotAllocated, allocation_devices, driver_results
from .types import ClaimError, ClaimRef, ErrorKind

COMPUTE_MODE_DEFAULT = 0  # NVML_COMPUTEMODE_DEFAULT


@dataclass(frozen=True)
class Planned:
    """One allocation result of ours, resolved to an inventory device."""

    request: str
    device: Device
    gpu_uuid: str
    admin: bool
    share_id: str | None
    config: OpaqueConfig | None


@dataclass(frozen=True)
class Action:
    """An NVML setting a claim's configuration asks for."""

    gpu_uuid: str
    compute_mode: int

    def to_json(self) -> dict[str, Any]:
        return {"gpuUuid": self.gpu_uuid, "computeMode": self.compute_mode}


def merged_admin(listings: Iterable[tuple[str, bool]]) -> dict[str, bool]:
    """Device name -> admin access, from (device, admin) listings: admin only if every one is."""
    admin: dict[str, bool] = {}
    for name, is_admin in listings:
        admin[name] = admin.get(name, True) and is_admin
    return admin


def check_claim(ref: ClaimRef, claim: Mapping[str, Any]) -> None:
    """The object read is the claim the kubelet means (same UID), not a replacement."""
    uid = (claim.get("metadata") or {}).get("uid")
    if uid != ref.uid:
        raise ClaimError(
            f"ResourceClaim {ref.namespace}/{ref.name} has UID {uid}, not {ref.uid}: "
            "the claim was replaced",
            ErrorKind.CLAIM_NOT_FOUND,
        )


def plan_claim(
    ref: ClaimRef,
    claim: Mapping[str, Any],
    *,
    driver: str,
    pool: str,
    inventory: Inventory,
    health: HealthBoard | None,
    resolve: Callable[[str], Device | None] | None = None,
) -> list[Planned]:
    """This driver's allocation results of the claim, resolved; [] when none are ours.

    resolve (dynamic MIG) answers first for the names it owns: the live MIG
    devices of MIG-mode GPUs and the ones still to be created.

    The cheap checks come first: opaque configs are decoded only for a claim
    that is otherwise preparable, and only those naming one of its requests
    (or none), so a hostile config of another request costs nothing.
    """
    try:
        alloc_devices = allocation_devices(claim)
        results = driver_results(alloc_devices, driver)
    except NotAllocated as e:
        raise ClaimError(
            f"ResourceClaim {ref.namespace}/{ref.name} is not allocated",
            ErrorKind.NOT_ALLOCATED,
        ) from e
    except MalformedClaim as e:
        raise ClaimError(
            f"ResourceClaim {ref.namespace}/{ref.name} has a malformed allocation: {e}",
            ErrorKind.NOT_ALLOCATED,
        ) from e
    if not results:
        return []
    devices = []
    for r in results:
        if r.pool != pool:
            raise ClaimError(
                f"request {r.request!r}: device {r.device} was allocated from pool "
                f"{r.pool!r}, not this node's pool {pool!r}",
                ErrorKind.NOT_ALLOCATED,
            )
        device = resolve(r.device) if resolve is not None else None
        if device is None:
            device = inventory.device(r.device)
        if device is None:
            raise ClaimError(
                f"request {r.request!r}: device {r.device!r} is not a device of this node "
                f"(unknown to the current inventory of pool {pool!r})",
                ErrorKind.DEVICE_UNAVAILABLE,
            )
        if health is not None:
            check_health(r.request, device, inventory, health)
        devices.append(device)
    requests = {r.request for r in results} | {base_request(r.request) for r in results}
    try:
        configs = decode_configs(alloc_devices, driver, requests)
    except ConfigError as e:
        raise ClaimError(f"invalid opaque configuration: {e}", ErrorKind.CONFIG) from e
    plans = []
    for r, device in zip(results, devices, strict=True):
        try:
            config = config_for(r.request, device.type is DeviceType.MIG, configs)
        except ConfigError as e:
            raise ClaimError(f"invalid opaque configuration: {e}", ErrorKind.CONFIG) from e
        plans.append(
            Planned(
                request=r.request,
                device=device,
                gpu_uuid=device.parent_uuid or device.uuid,
                admin=r.admin_access,
                share_id=r.share_id,
                config=config,
            )
        )
    return plans


def check_health(request: str, device: Device, inventory: Inventory, board: HealthBoard) -> None:
    """Refuse a device that is Unhealthy, or whose GPU is (a MIG device's parent)."""
    names = [device.name]
    gpu = inventory.gpu_of(device)
    if gpu is not None and gpu.name != device.name:
        names.append(gpu.name)
    for name in names:
        h = board.get(name)
        if h is not None and h.health is Health.UNHEALTHY:
            why = h.message or h.reason or "no detail"
            subject = device.name if name == device.name else f"{device.name}'s GPU {name}"
            raise ClaimError(
                f"request {request!r}: {subject} is unhealthy: {why}",
                ErrorKind.DEVICE_UNHEALTHY,
            )


def nvml_actions(plans: Sequence[Planned], *, have_nvml: bool) -> list[Action]:
    """NVML settings the configs ask for, one per GPU; refuses what this driver cannot do."""
    actions: dict[str, Action] = {}
    for p in plans:
        c = p.config
        if c is None or c.config.sharing is None:
            continue
        sharing = c.config.sharing
        if sharing.strategy is SharingStrategy.MPS:
            raise ClaimError(
                f"{c.where}: MPS sharing needs an MPS control daemon, "
                "which this driver does not run yet",
                ErrorKind.CONFIG,
            )
        if not isinstance(c.config, GpuConfig):
            continue  # TimeSlicing on a MIG device: MIG devices time-slice already
        interval = (
            sharing.time_slicing.interval if sharing.time_slicing else TimeSliceInterval.DEFAULT
        )
        if interval is not TimeSliceInterval.DEFAULT:
            raise ClaimError(
                f"{c.where}: time-slice interval {interval} needs "
                "`nvidia-smi compute-policy --set-timeslice`, which this driver does not "
                "run yet; use interval Default",
                ErrorKind.CONFIG,
            )
        actions[p.gpu_uuid] = Action(p.gpu_uuid, COMPUTE_MODE_DEFAULT)
    if actions and not have_nvml:
        raise ClaimError(
            "the claim's TimeSlicing configuration sets the GPU compute mode through NVML, "
            "and no NVML backend is available",
            ErrorKind.CONFIG,
        )
    return [actions[k] for k in sorted(actions)]


def spec_devices(listings: Iterable[tuple[Device, bool]]) -> list[SpecDevice]:
    """The distinct devices of a claim's CDI spec, each with its merged admin access."""
    devices: dict[str, Device] = {}
    pairs = []
    for device, admin in listings:
        devices.setdefault(device.name, device)
        pairs.append((device.name, admin))
    admin_of = merged_admin(pairs)
    return [SpecDevice(devices[name], admin_of[name]) for name in devices]
