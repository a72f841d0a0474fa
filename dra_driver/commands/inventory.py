"""`dra-driver inventory`: what this node would publish, and which NVML backend said so."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .. import settings as settings_mod
from ..inventory import Device, Inventory, Version, build_inventory
from ..nvml import open_backend
from ..nvml.errors import NvmlError
from ..sysfs import pcie_root_resolver
from .common import load_settings


def register(sub: Any) -> None:
    p = sub.add_parser(
        "inventory",
        help="print the GPUs and MIG devices this node would publish",
        description="Read this node's GPUs and MIG devices through NVML once and print them "
        "as the plugin sees them: names, UUIDs, profiles, memory, and any problem found. "
        "Needs no API server and no kubelet.",
    )
    settings_mod.add_arguments(p, settings_mod.INVENTORY)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def load_inventory(s: settings_mod.Settings) -> Inventory:
    """Open NVML, read one snapshot, close. Raises NvmlError."""
    backend = open_backend(library=s.resolved_nvml_library(), backend=s.nvml_backend)
    try:
        return build_inventory(
            backend.inventory(),
            backend=backend.name,
            pcie_root_of=pcie_root_resolver(s.sys_root),
            dynamic_mig=s.dynamic_mig,
        )
    finally:
        backend.close()


def _json_value(v: Any) -> Any:
    return str(v) if isinstance(v, Version) else v


def device_json(d: Device) -> dict[str, Any]:
    return {
        "name": d.name,
        "type": d.type.value,
        "uuid": d.uuid,
        "parentUUID": d.parent_uuid,
        "attributes": {k: _json_value(v) for k, v in sorted(d.attributes.items())},
        "capacities": dict(sorted(d.capacities.items())),
    }


def inventory_json(inv: Inventory) -> dict[str, Any]:
    return {
        "backend": inv.backend,
        "driverVersion": inv.driver_version,
        "cudaDriverVersion": inv.cuda_driver_version,
        "gpus": [
            {
                "index": g.index,
                "minor": g.minor,
                "uuid": g.uuid,
                "pciBusID": g.pci_bus_id,
                "migEnabled": g.mig_enabled,
                "memory": g.memory_bytes,
            }
            for g in inv.gpus
        ],
        "devices": [device_json(d) for d in inv.devices],
        "problems": list(inv.problems),
    }


def _table(inv: Inventory) -> str:
    rows = [("DEVICE", "TYPE", "UUID", "PROFILE/PRODUCT", "MEMORY")]
    for d in inv.devices:
        label = str(d.attributes.get("profile") or d.attributes.get("productName", ""))
        mem = d.capacities.get("memory")
        rows.append(
            (d.name, d.type.value, d.uuid, label, f"{mem // (1024 * 1024)} MiB" if mem else "-")
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    head = (
        f"backend: {inv.backend}   driver: {inv.driver_version}   "
        f"cuda: {inv.cuda_driver_version}   gpus: {len(inv.gpus)}   devices: {len(inv.devices)}"
    )
    tail = [f"problem: {p}" for p in inv.problems]
    return "\n".join([head, *lines, *tail])


def run(args: argparse.Namespace) -> int:
    s = load_settings(args)
    try:
        inv = load_inventory(s)
    except NvmlError as e:
        print(f"dra-driver inventory: NVML failed: {e}", file=sys.stderr)
        return 1
    if args.json:
        json.dump(inventory_json(inv), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(_table(inv))
    return 0
