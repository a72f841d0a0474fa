"""Inventory (+ taints) -> this node's `resource.k8s.io/v1` ResourceSlices. Pure.

Layout decisions, and why:
* One pool per node, named after the node; every slice carries spec.nodeName
  and is owned by the Node, so the Node's deletion garbage-collects it.
* Slices are named by the helper's index-prefix convention
  (generateName "<index %05x>-<driver>-<node>-"). The scheduler sorts slices by
  name and takes the first fit, so the prefix keeps our preferred device order;
  and slices written by NVIDIA's Go driver (the upstream helper) match ours
  by index, so switching drivers updates slices in place instead of churning.
* At most 64 devices per slice even without taints: taints come and go with
  device health, and a 128-device layout would re-shard the whole pool the
  moment one taint appears. With 64 a health flap rewrites exactly one slice.
* A GPU's devices stay together in one slice when they fit, so a change on one
  GPU (MIG relayout, GPU lost) touches one slice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..inventory import (
    AttributeValue,
    Device,
    DeviceType,
    Gpu,
    Inventory,
    Version,
    gpu_device_name,
    mig_capacities,
    mig_device_name,
)
from ..nvml.types import MigProfile
from . import validation
from .quantity import format_quantity

API_VERSION = "resource.k8s.io/v1"
KIND = "ResourceSlice"
DEVICES_PER_SLICE = validation.MAX_DEVICES_PER_SLICE_ADVANCED

TaintSpec = Mapping[str, str]
Taints = Mapping[str, Sequence[TaintSpec]]

# Capacities whose value is a byte count, published in binary SI ("80Gi").
_BYTE_CAPACITIES = frozenset({"memory"})
# MIG capacity name -> shared counter name (counters must be DNS labels).
_COUNTER_NAMES = {
    "multiprocessors": "multiprocessors",
    "copyEngines": "copy-engines",
    "decoders": "decoders",
    "encoders": "encoders",
    "jpegEngines": "jpeg-engines",
    "ofaEngines": "ofa-engines",
    "memory": "memory",
}


@dataclass(frozen=True)
class DesiredPool:
    """The slice specs of this node's pool, in order, minus pool metadata.

    Each entry is a spec fragment: {"devices": [...]} or {"sharedCounters": [...]}.
    problems lists what validation dropped or clipped (each one is a bug to report).
    """

    slices: tuple[dict[str, Any], ...]
    problems: tuple[str, ...] = ()


def attribute_json(value: AttributeValue) -> dict[str, Any]:
    """One attribute in the API's union shape."""
    if isinstance(value, Version):
        return {"version": str(value)}
    if isinstance(value, bool):
        return {"bool": value}
    if isinstance(value, int):
        return {"int": value}
    return {"string": str(value)}


def capacity_json(name: str, value: int) -> dict[str, Any]:
    return {"value": format_quantity(value, binary=name in _BYTE_CAPACITIES)}


def counter_name(capacity: str) -> str:
    """A capacity's counter name, as a DNS label ("copyEngines" -> "copy-engines")."""
    if capacity.startswith("memorySlice"):
        return f"memory-slice-{capacity[len('memorySlice') :]}"
    return _COUNTER_NAMES.get(capacity, capacity.lower())


def counter_set_name(gpu: Gpu) -> str:
    return f"gpu-{gpu.minor}-counter-set"


def _device_json(
    name: str,
    attributes: Mapping[str, AttributeValue],
    capacities: Mapping[str, int],
    taints: Sequence[TaintSpec],
    consumes: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    dev: dict[str, Any] = {"name": name}
    if attributes:
        dev["attributes"] = {k: attribute_json(v) for k, v in attributes.items()}
    if capacities:
        dev["capacity"] = {k: capacity_json(k, v) for k, v in capacities.items()}
    if consumes:
        dev["consumesCounters"] = [dict(c) for c in consumes]
    if taints:
        dev["taints"] = [{k: v for k, v in t.items() if v} for t in taints]
    return dev


def _taints_for(taints: Taints, name: str, parent: str | None) -> list[TaintSpec]:
    """A device's own taints, plus its parent GPU's: a lost GPU takes its MIG devices along."""
    own = list(taints.get(name, ()))
    return own + list(taints.get(parent, ())) if parent and parent != name else own


def _inventory_device(device: Device, taints: Taints) -> dict[str, Any]:
    parent = gpu_device_name(device.minor) if device.type is DeviceType.MIG else None
    return _device_json(
        device.name, device.attributes, device.capacities, _taints_for(taints, device.name, parent)
    )


def _full_gpu_device(
    gpu: Gpu, inventory: Inventory
) -> tuple[dict[str, AttributeValue], int | None]:
    """The whole-GPU device's attributes and memory, also for a GPU in MIG mode."""
    for d in inventory.devices:
        if d.type is DeviceType.GPU and d.uuid == gpu.uuid:
            return dict(d.attributes), d.capacities.get("memory")
    attrs: dict[str, AttributeValue] = {"type": DeviceType.GPU.value, "uuid": gpu.uuid}
    attrs.update(gpu.common_attributes)
    return attrs, gpu.memory_bytes


def _counters(caps: Mapping[str, int]) -> dict[str, Any]:
    return {
        counter_name(k): {"value": format_quantity(v, binary=k in _BYTE_CAPACITIES)}
        for k, v in caps.items()
    }


def _partitionable_gpu(
    gpu: Gpu, inventory: Inventory, taints: Taints
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One MIG-capable GPU as a counter set + the devices that consume from it (KEP-4815).

    The counter set holds, per dimension, the most any profile can use (what
    NVIDIA's driver publishes) plus one counter per memory slice. The full GPU
    consumes all of it, so it excludes every MIG device and vice versa; each
    abstract MIG device is one (profile, placement) and consumes its profile's
    engines and memory plus exactly the memory slices of its placement.

    Without dynamic MIG, only devices prepare can serve are published: the
    full GPU when it is one (not in MIG mode), and the (profile, placement)
    devices the GPU already has. The counters are the same complete set as
    under dynamic MIG, which changes which devices appear, not the accounting.
    """
    set_name = counter_set_name(gpu)
    totals = _counter_totals(gpu)
    counter_set = {"name": set_name, "counters": _counters(totals)}
    devices = []
    attrs, memory = _full_gpu_device(gpu, inventory)
    # A GPU in MIG mode has no full-GPU device in the inventory, so prepare cannot hand
    # it out (and Ampere cannot even leave MIG mode without a GPU reset).
    if inventory.device(gpu.name) is not None:
        devices.append(
            _device_json(
                gpu.name,
                attrs,
                {"memory": memory} if memory is not None else {},
                taints.get(gpu.name, ()),
                [{"counterSet": set_name, "counters": _counters(totals)}],
            )
        )
    for p in gpu.mig_profiles:
        for start, size in p.placements:
            name = mig_device_name(gpu.minor, p.name, p.profile_id, start)
            if inventory.device(name) is None:
                continue  # would need creating a MIG device: only with dynamic MIG
            caps = mig_capacities(p, start, size)
            devices.append(_mig_consumer(name, _abstract_mig_attributes(gpu, p), caps, taints, gpu))
    return counter_set, devices


def _abstract_mig_attributes(gpu: Gpu, profile: MigProfile) -> dict[str, AttributeValue]:
    """A (profile, placement) device's attributes: what is known before it exists."""
    attrs: dict[str, AttributeValue] = {
        "type": DeviceType.MIG.value,
        "parentUUID": gpu.uuid,
        "profile": profile.name,
    }
    attrs.update(gpu.common_attributes)
    return attrs


def _mig_consumer(
    name: str,
    attrs: Mapping[str, AttributeValue],
    caps: Mapping[str, int],
    taints: Taints,
    gpu: Gpu,
) -> dict[str, Any]:
    """A MIG device that consumes its capacities from its parent GPU's counter set."""
    return _device_json(
        name,
        attrs,
        caps,
        _taints_for(taints, name, gpu.name),
        [{"counterSet": counter_set_name(gpu), "counters": _counters(caps)}],
    )


def _counter_totals(gpu: Gpu) -> dict[str, int]:
    """Per dimension the most any profile uses, plus one counter per memory slice."""
    totals: dict[str, int] = {}
    slices = 0
    for p in gpu.mig_profiles:
        for k, v in mig_capacities(p, 0, 0).items():
            totals[k] = max(totals.get(k, 0), v)
        for start, size in p.placements:
            slices = max(slices, start + size)
    for i in range(slices):
        totals[f"memorySlice{i}"] = 1
    return totals


def _dynamic_mig_gpu(
    gpu: Gpu, taints: Taints, created: frozenset[str]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A GPU in MIG mode under dynamic MIG: its counter set and every (profile, placement).

    No full-GPU device: the GPU cannot serve as one without leaving MIG mode,
    which this driver never changes. Each (profile, placement) consumes its
    engines, memory and memory slices, so the scheduler hands out only sets
    that fit together; prepare creates the MIG device when it does not exist.
    A MIG device that exists and that this driver did not create (an
    operator's) is published as it is, with its UUID, consuming the same
    counters, so nothing overlapping it is ever allocated. One this driver
    created (UUID in `created`) stays the abstract device it was published as:
    creating it must not rewrite the slice.
    """
    set_name = counter_set_name(gpu)
    totals = _counter_totals(gpu)
    existing = {d.name: d for d in gpu.mig_devices}
    devices = []
    published: set[str] = set()
    for p in gpu.mig_profiles:
        for start, size in p.placements:
            name = mig_device_name(gpu.minor, p.name, p.profile_id, start)
            caps = mig_capacities(p, start, size)
            found = existing.get(name)
            attrs: Mapping[str, AttributeValue]
            if found is not None and found.uuid not in created:
                attrs = found.attributes
            else:
                attrs = _abstract_mig_attributes(gpu, p)
            devices.append(_mig_consumer(name, attrs, caps, taints, gpu))
            published.add(name)
    for name, found in existing.items():  # an operator's device at no offered placement
        if name not in published:
            devices.append(_mig_consumer(name, found.attributes, found.capacities, taints, gpu))
    return {"name": set_name, "counters": _counters(totals)}, devices


def _pack(groups: Iterable[list[dict[str, Any]]], limit: int) -> list[list[dict[str, Any]]]:
    """Greedy packing that keeps each group (one GPU's devices) in one slice when it fits."""
    out: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    for group in groups:
        if current and len(current) + len(group) > limit:
            out.append(current)
            current = []
        for dev in group:
            if len(current) == limit:
                out.append(current)
                current = []
            current.append(dev)
    if current:
        out.append(current)
    return out


def build_pool(
    inventory: Inventory,
    taints: Taints | None = None,
    *,
    partitionable: bool = False,
    devices_per_slice: int = DEVICES_PER_SLICE,
    dynamic_mig: bool = False,
    created_migs: frozenset[str] = frozenset(),
) -> DesiredPool:
    """The slice specs this node publishes for an inventory and per-device taints.

    Devices keep the inventory's order. With partitionable=True, each GPU that
    reports MIG profiles is published as a counter set (in counter-set-only
    slices, at most 8 per slice, the 1.35+ layout) plus a full-GPU device and
    one abstract device per MIG (profile, placement); other GPUs as usual.
    With dynamic_mig=True (which implies the partitionable layout), a GPU in
    MIG mode is published as its counter set and every (profile, placement),
    and no full GPU (see _dynamic_mig_gpu; created_migs: the UUIDs of the MIG
    devices this driver made); a GPU with MIG off as its full GPU only.
    An empty inventory still yields one empty slice: an empty pool is not an
    absent one to the scheduler.
    """
    taints = taints or {}
    groups: dict[int, list[dict[str, Any]]] = {}
    counter_sets: list[dict[str, Any]] = []
    partitioned: set[int] = set()
    if dynamic_mig:
        for gpu in inventory.gpus:
            if gpu.mig_enabled and any(p.placements for p in gpu.mig_profiles):
                cs, devs = _dynamic_mig_gpu(gpu, taints, created_migs)
                counter_sets.append(cs)
                groups[gpu.index] = devs
                partitioned.add(gpu.index)
    elif partitionable:
        for gpu in inventory.gpus:
            if gpu.mig_profiles and any(p.placements for p in gpu.mig_profiles):
                cs, devs = _partitionable_gpu(gpu, inventory, taints)
                counter_sets.append(cs)
                groups[gpu.index] = devs
                partitioned.add(gpu.index)
    for device in inventory.devices:
        if device.gpu_index not in partitioned:
            groups.setdefault(device.gpu_index, []).append(_inventory_device(device, taints))
    order = [g.index for g in inventory.gpus]
    order += sorted(set(groups) - set(order))
    flat_devices = [d for i in order for d in groups.get(i, [])]
    devices, counter_sets, problems = validation.check_pool(flat_devices, counter_sets)
    # Regroup what validation kept (cleaned copies; the first of duplicate names).
    by_name = {d["name"]: d for d in devices}
    kept_groups: list[list[dict[str, Any]]] = []
    for i in order:
        group = [by_name.pop(d["name"]) for d in groups.get(i, []) if d["name"] in by_name]
        kept_groups.append(group)
    slices: list[dict[str, Any]] = []
    step = validation.MAX_COUNTER_SETS_PER_SLICE
    for i in range(0, len(counter_sets), step):
        slices.append({"sharedCounters": counter_sets[i : i + step]})
    slices += [{"devices": chunk} for chunk in _pack(kept_groups, devices_per_slice)]
    if not slices:
        slices.append({"devices": []})
    return DesiredPool(tuple(slices), tuple(problems))


def slice_generate_name(index: int, driver: str, node_name: str) -> str:
    """The helper's generateName: "<index %05x>-<driver>-<node>-" (server appends 5 chars)."""
    return f"{index:05x}-{driver}-{node_name}-"


def owner_reference(node_name: str, node_uid: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "name": node_name,
        "uid": node_uid,
        "controller": True,
    }


def slice_spec(
    fragment: Mapping[str, Any], *, driver: str, node_name: str, generation: int, count: int
) -> dict[str, Any]:
    """A full spec: driver, pool metadata, nodeName, then the fragment's content."""
    spec: dict[str, Any] = {
        "driver": driver,
        "pool": {"name": node_name, "generation": generation, "resourceSliceCount": count},
        "nodeName": node_name,
    }
    spec.update(fragment)
    return spec


def render_slice(
    fragment: Mapping[str, Any],
    index: int,
    *,
    driver: str,
    node_name: str,
    generation: int,
    count: int,
    node_uid: str | None,
) -> dict[str, Any]:
    """A complete ResourceSlice object to create."""
    metadata: dict[str, Any] = {"generateName": slice_generate_name(index, driver, node_name)}
    if node_uid:
        metadata["ownerReferences"] = [owner_reference(node_name, node_uid)]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": metadata,
        "spec": slice_spec(
            fragment, driver=driver, node_name=node_name, generation=generation, count=count
        ),
    }


def build_slices(
    inventory: Inventory,
    *,
    driver: str,
    node_name: str,
    node_uid: str | None = None,
    taints: Taints | None = None,
    partitionable: bool = False,
    generation: int = 1,
    dynamic_mig: bool = False,
) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
    """The ResourceSlice objects a first publication would create, and the problems found."""
    pool = build_pool(inventory, taints, partitionable=partitionable, dynamic_mig=dynamic_mig)
    count = len(pool.slices)
    objs = [
        render_slice(
            frag,
            i,
            driver=driver,
            node_name=node_name,
            generation=generation,
            count=count,
            node_uid=node_uid,
        )
        for i, frag in enumerate(pool.slices)
    ]
    return objs, pool.problems
