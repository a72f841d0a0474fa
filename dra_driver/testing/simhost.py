"""A simulated kubelet host for claim preparation: files, inventories and claims.

Tests, benchmarks and the demo point the driver's dev_root / proc_root /
driver_root / sys_root at a tree built here, for the GPUs of an inventory or
of a fake NVML topology:

    <root>/dev-root/dev/nvidia<minor>, nvidiactl, nvidia-uvm, nvidia-uvm-tools,
        nvidia-caps/nvidia-cap<N>        device nodes
    <root>/proc/devices                   character majors, as the kernel lists them
    <root>/proc/driver/nvidia/capabilities/gpu<minor>/mig/gi<G>[/ci<C>]/access
                                          (with spare_mig_caps also gi1..gi14/ci0 of
                                          every GPU in MIG mode, for dynamic MIG)
    <root>/proc/sys/kernel/random/boot_id the boot id the checkpoint is bound to
    <root>/driver-root/usr/...            nvidia-cdi-hook, nvidia-smi, libraries (cdi_hook)
    <root>/sys/bus/pci/devices/<bus id>   links into sys/devices/pci<root bus>/... (PCIe root)

By default device nodes are regular files (an unprivileged process cannot
mknod), so specs carry paths without major/minor for them and MIG capability
nodes get their major from the simulated /proc/devices, as on a real host.
With mknod=True (root only) they are real character devices with the majors
of that /proc/devices (195 for /dev/nvidia*, as on every NVIDIA host), so a
real container runtime's CDI accepts the specs.

Command line (prints the `dra-driver run` flags that point at the new host)::

    python -m dra_driver.testing.simhost DIR --topology small [--mknod] [--dynamic-mig] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import uuid as uuid_mod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..inventory import Inventory, build_inventory, normalize_pci_bus_id
from ..nvml.types import MigRecord, NvmlSnapshot
from . import records
from .fakenvml import FakeNvmlError, Topology, load_topology, topology_names

# Character device majors. 195 is NVIDIA's fixed major on every host
# (/dev/nvidia<minor>, nvidiactl = 255); nvidia-uvm and nvidia-caps get dynamic
# majors from the kernel, for which these are typical values.
NVIDIA_MAJOR = 195
NVIDIACTL_MINOR = 255
NVIDIA_UVM_MAJOR = 510
NVIDIA_CAPS_MAJOR = 508
DRIVER_VERSION = "550.54.15"
SIM_LIBRARIES = ("libcuda.so", "libnvidia-ml.so", "libnvidia-ptxjitcompiler.so")
# GPU instance ids a driver hands out on A100/H100-class GPUs (NVML numbers them
# from 1; real drivers reach 14 with seven 1g instances).
SPARE_GI_IDS = range(1, 15)


@dataclass(frozen=True)
class Majors:
    """The character majors a simulated /proc/devices lists (and mknod uses)."""

    nvidia: int = NVIDIA_MAJOR
    nvidia_uvm: int = NVIDIA_UVM_MAJOR
    nvidia_caps: int = NVIDIA_CAPS_MAJOR

    def proc_devices(self) -> str:
        entries = sorted(
            [
                (1, "mem"),
                (self.nvidia, "nvidia"),
                (self.nvidia_uvm, "nvidia-uvm"),
                (self.nvidia_caps, "nvidia-caps"),
            ]
        )
        return "Character devices:\n" + "".join(f"{m:3d} {name}\n" for m, name in entries)


@dataclass(frozen=True)
class SimHost:
    root: Path
    dev_root: Path
    proc_root: Path
    driver_root: Path
    boot_id_file: Path
    sys_root: Path
    mknod: bool = False
    majors: Majors = field(default_factory=Majors)

    def set_boot_id(self, boot_id: str) -> None:
        self.boot_id_file.write_text(boot_id + "\n")

    def run_flags(self, fake_nvml: str | None = None) -> list[str]:
        """The `dra-driver run` flags that point the driver at this host."""
        flags = [f"--fake-nvml={fake_nvml}"] if fake_nvml else []
        return [
            *flags,
            f"--dev-root={self.dev_root}",
            f"--proc-root={self.proc_root}",
            f"--driver-root={self.driver_root}",
            f"--sys-root={self.sys_root}",
        ]


def make_snapshot(
    gpus: int = 2, mig_gpus: Iterable[int] = (), driver_version: str = DRIVER_VERSION
) -> NvmlSnapshot:
    """A synthetic H100-like node; GPUs listed in mig_gpus carry two 3g.40gb MIG devices."""
    mig = set(mig_gpus)

    def mig_devices(i: int) -> tuple[MigRecord, ...]:
        return tuple(
            records.mig_record(
                4 * j,
                4,
                gpu=i,
                index=j,
                gi=1 + j,
                uuid=f"MIG-{uuid_mod.UUID(int=(i + 1) << 64 | (j + 1))}",
                multiprocessors=60,
                copy_engines=3,
                decoders=3,
                jpeg_engines=3,
            )
            for j in range(2)
        )

    return records.snapshot(
        *(
            records.gpu_record(
                i,
                mig_devices(i) if i in mig else (),
                uuid=f"GPU-{uuid_mod.UUID(int=i + 1)}",
                bus=f"00000000:{0x18 + 0x10 * i:02X}:00.0",
                brand=2,
            )
            for i in range(gpus)
        ),
        driver_version=driver_version,
    )


def make_inventory(gpus: int = 2, mig_gpus: Iterable[int] = ()) -> Inventory:
    return build_inventory(make_snapshot(gpus, mig_gpus), backend="simulated")


def _touch(path: Path, text: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@dataclass(frozen=True)
class _HostGpu:
    """What the host tree needs of a GPU: its minor, bus id, MIG mode and (GI, CI) pairs."""

    minor: int
    pci_bus_id: str
    migs: tuple[tuple[int, int], ...]
    mig_mode: bool = False


def _host_gpus(source: Inventory | Topology) -> tuple[str, list[_HostGpu]]:
    if isinstance(source, Topology):
        buses = [str(g.get("pci_bus_id", "")) for g in source.raw.get("gpus", [])]
        return source.driver_version, [
            _HostGpu(
                g.minor,
                normalize_pci_bus_id(bus),
                tuple((m.gi_id, m.ci_id) for m in g.mig_devices),
                bool(raw.get("mig", {}).get("current")),
            )
            for g, bus, raw in zip(source.gpus, buses, source.raw.get("gpus", []), strict=True)
        ]
    gpus = []
    for gpu in source.gpus:
        migs = []
        for d in gpu.mig_devices:
            assert d.mig is not None
            migs.append((d.mig.gpu_instance_id, d.mig.compute_instance_id))
        gpus.append(_HostGpu(gpu.minor, gpu.pci_bus_id, tuple(migs), gpu.mig_enabled))
    return source.driver_version, gpus


class _Nodes:
    """Creates device nodes: regular files, or character devices (mknod)."""

    def __init__(self, dev: Path, mknod: bool) -> None:
        self.dev = dev
        self.mknod = mknod

    def make(self, name: str, major: int, minor: int, mode: int = 0o666) -> None:
        path = self.dev / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not self.mknod:
            path.write_text("")
            return
        try:
            os.mknod(path, stat.S_IFCHR | mode, os.makedev(major, minor))
        except PermissionError as e:
            raise SimHostError(
                f"cannot create character device {path}: {e.strerror} "
                "(--mknod needs root with CAP_MKNOD)"
            ) from e
        os.chmod(path, mode)  # mknod applies the umask


def _pci_links(sys_root: Path, bus_ids: Iterable[str]) -> None:
    """sys/bus/pci/devices/<bus> -> ../../../devices/pci<dom>:<root>/<dom>:<root>:01.0/<bus>.

    The root bus is the one below the GPU's, as behind a root port; the
    driver reads it as the resource.kubernetes.io/pcieRoot attribute.
    """
    links = sys_root / "bus/pci/devices"
    links.mkdir(parents=True, exist_ok=True)
    for bus_id in bus_ids:
        domain, _, rest = bus_id.partition(":")
        try:
            root_bus = max(int(rest[:2], 16) - 1, 0)
        except ValueError:
            continue
        port = f"{domain}:{root_bus:02x}:01.0"
        target = sys_root / "devices" / f"pci{domain}:{root_bus:02x}" / port / bus_id
        target.mkdir(parents=True, exist_ok=True)
        link = links / bus_id
        if not link.is_symlink():
            link.symlink_to(os.path.relpath(target, links))


class SimHostError(Exception):
    """The host tree cannot be built; the message says why."""


def populate_host(
    root: Path,
    source: Inventory | Topology,
    *,
    boot_id: str = "00000000-0000-4000-8000-000000000001",
    cdi_hook: bool = False,
    mknod: bool = False,
    majors: Majors | None = None,
    spare_mig_caps: bool = False,
) -> SimHost:
    """Create dev/, proc/, driver/ and sys/ under root for source's GPUs and MIG devices.

    mknod makes real character devices (root only) instead of regular files.
    spare_mig_caps adds the capability entries (and nodes) of MIG devices that do
    not exist yet, on every GPU in MIG mode: a real driver adds them as it creates
    an instance, which the fake NVML cannot do for a tree it does not know.
    """
    majors = majors or Majors()
    dev, proc, driver, sys_root = (
        root / "dev-root",
        root / "proc",
        root / "driver-root",
        root / "sys",
    )
    driver_version, gpus = _host_gpus(source)
    nodes = _Nodes(dev / "dev", mknod)
    nodes.make("nvidiactl", majors.nvidia, NVIDIACTL_MINOR)
    nodes.make("nvidia-uvm", majors.nvidia_uvm, 0)
    nodes.make("nvidia-uvm-tools", majors.nvidia_uvm, 1)
    cap = 1
    for gpu in gpus:
        nodes.make(f"nvidia{gpu.minor}", majors.nvidia, gpu.minor)
        base = proc / "driver/nvidia/capabilities" / f"gpu{gpu.minor}" / "mig"
        pairs = list(gpu.migs)
        if spare_mig_caps and gpu.mig_mode:
            pairs += [(gi_id, 0) for gi_id in SPARE_GI_IDS]
        for gi_id, ci_id in pairs:
            gi = base / f"gi{gi_id}"
            for access in (gi / "access", gi / f"ci{ci_id}" / "access"):
                if not access.exists():
                    _touch(
                        access,
                        f"DeviceFileMinor: {cap}\nDeviceFileMode: 292\nDeviceFileModify: 1\n",
                    )
                    nodes.make(f"nvidia-caps/nvidia-cap{cap}", majors.nvidia_caps, cap, 0o444)
                    cap += 1
    _touch(proc / "devices", majors.proc_devices())
    boot = proc / "sys/kernel/random/boot_id"
    _touch(boot, boot_id + "\n")
    if cdi_hook:
        hook = driver / "usr/bin/nvidia-cdi-hook"
        _touch(hook, "#!/bin/sh\nexit 0\n")
        os.chmod(hook, 0o755)
        _touch(driver / "usr/bin/nvidia-smi")
        arch = os.uname().machine
        for lib in SIM_LIBRARIES:
            _touch(driver / f"usr/lib/{arch}-linux-gnu" / f"{lib}.{driver_version}")
    driver.mkdir(parents=True, exist_ok=True)
    _pci_links(sys_root, (g.pci_bus_id for g in gpus if g.pci_bus_id))
    return SimHost(root, dev, proc, driver, boot, sys_root, mknod, majors)


def claim_uid(n: int) -> str:
    """A deterministic, valid claim UID."""
    return str(uuid_mod.UUID(int=0xC1A1 << 96 | n))


def claim_object(
    uid: str,
    name: str,
    results: Sequence[Mapping[str, Any]],
    *,
    namespace: str = "default",
    configs: Sequence[Mapping[str, Any]] = (),
    driver: str = "gpu.nvidia.com",
    pool: str = "node-1",
    allocated: bool = True,
) -> dict[str, Any]:
    """A resource.k8s.io/v1 ResourceClaim as the API returns it.

    results: {"request", "device"} plus optional "adminAccess", "pool", "driver".
    configs: {"source", "requests", "parameters"} for this driver's opaque configs.
    """
    claim: dict[str, Any] = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": namespace, "uid": uid},
        "spec": {"devices": {"requests": []}},
        "status": {},
    }
    if allocated:
        claim["status"]["allocation"] = {
            "devices": {
                "results": [
                    {"driver": driver, "pool": pool, **{k: v for k, v in r.items()}}
                    for r in results
                ],
                "config": [
                    {
                        "source": c.get("source", "FromClaim"),
                        **({"requests": list(c["requests"])} if c.get("requests") else {}),
                        "opaque": {
                            "driver": c.get("driver", driver),
                            "parameters": c["parameters"],
                        },
                    }
                    for c in configs
                ],
            }
        }
    return claim


# --- command line ------------------------------------------------------------------------


def _registered_majors(proc_devices: str) -> dict[int, str]:
    """Character majors in use, from a /proc/devices text."""
    used: dict[int, str] = {}
    for line in proc_devices.split("Block devices:")[0].splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[0].isdigit():
            used.setdefault(int(parts[0]), parts[1].strip())
    return used


def majors_for_host(proc_devices: str) -> Majors:
    """Majors for real nodes on this host: the dynamic ones moved off any the host uses.

    A node with another driver's major would reach that driver when a
    container opens it. 195 stays: it is NVIDIA's fixed major.
    """
    used = _registered_majors(proc_devices)
    if used.get(NVIDIA_MAJOR, "nvidia").split("-")[0] != "nvidia":
        raise SimHostError(
            f"major {NVIDIA_MAJOR} belongs to {used[NVIDIA_MAJOR]!r} on this host, not NVIDIA"
        )
    taken = set(used)
    chosen = []
    for preferred, name in ((NVIDIA_UVM_MAJOR, "nvidia-uvm"), (NVIDIA_CAPS_MAJOR, "nvidia-caps")):
        if used.get(preferred, name) == name and preferred not in chosen:
            major = preferred
        else:  # the kernel hands out dynamic majors from 511 down to 234
            major = next(
                m
                for m in [*range(511, 383, -1), *range(254, 233, -1)]
                if m not in taken and m not in chosen
            )
        chosen.append(major)
    return Majors(NVIDIA_MAJOR, chosen[0], chosen[1])


def build(
    directory: Path,
    topology: str,
    *,
    mknod: bool = False,
    cdi_hook: bool = True,
    spare_mig_caps: bool = False,
) -> SimHost:
    """The simulated host for a fake NVML topology in directory (new or empty)."""
    try:
        topo = load_topology(topology)
    except FakeNvmlError as e:
        raise SimHostError(str(e)) from e
    directory = directory.absolute()
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise SimHostError(f"{directory} is not a new or empty directory")
    majors = None
    if mknod:
        if os.geteuid() != 0:
            raise SimHostError("--mknod creates character devices and needs root")
        majors = majors_for_host(Path("/proc/devices").read_text())
    try:
        directory.mkdir(parents=True, exist_ok=True)
        return populate_host(
            directory,
            topo,
            cdi_hook=cdi_hook,
            mknod=mknod,
            majors=majors,
            spare_mig_caps=spare_mig_caps,
        )
    except OSError as e:
        raise SimHostError(f"cannot build the host under {directory}: {e}") from e


def _fake_nvml_arg(topology: str) -> str:
    """A shipped topology by name, a file by absolute path (the plugin may run elsewhere)."""
    return topology if topology in topology_names() else str(Path(topology).absolute())


def describe(host: SimHost, topology: str) -> dict[str, Any]:
    """Everything a caller needs to point a driver (and a fault injector) at host."""
    fake_nvml = _fake_nvml_arg(topology)
    faults = host.root / "fakenvml" / "faults.jsonl"
    return {
        "root": str(host.root),
        "dev_root": str(host.dev_root),
        "proc_root": str(host.proc_root),
        "driver_root": str(host.driver_root),
        "sys_root": str(host.sys_root),
        "boot_id_file": str(host.boot_id_file),
        "device_nodes": "character devices" if host.mknod else "regular files",
        "majors": {
            "nvidia": host.majors.nvidia,
            "nvidia-uvm": host.majors.nvidia_uvm,
            "nvidia-caps": host.majors.nvidia_caps,
        },
        "fake_nvml": fake_nvml,
        "env": {"FAKE_NVML_FAULTS": str(faults)},
        "run_flags": host.run_flags(fake_nvml),
    }


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dra_driver.testing.simhost",
        description="Build a simulated GPU host (device nodes, /proc, driver files, sysfs) "
        "for a fake NVML topology and print the `dra-driver run` flags that point at it, "
        "one per line: dra-driver run $(python -m dra_driver.testing.simhost DIR) ...",
    )
    p.add_argument("directory", type=Path, metavar="DIR", help="a new or empty directory")
    p.add_argument(
        "--topology",
        default="small",
        help="fake NVML topology name or file (default: small; list them with "
        "`python -m dra_driver.testing.fakenvml topologies`)",
    )
    p.add_argument(
        "--mknod",
        action="store_true",
        help="make real character device nodes (root only) so a container runtime's CDI "
        "accepts the specs; default: regular files",
    )
    p.add_argument(
        "--no-driver-files",
        dest="cdi_hook",
        action="store_false",
        help="no nvidia-cdi-hook or driver libraries under the driver root (specs then "
        "carry device nodes and env only)",
    )
    p.add_argument(
        "--dynamic-mig",
        dest="spare_mig_caps",
        action="store_true",
        help="for `dra-driver run --dynamic-mig`: MIG capability entries (gi1..gi14, ci0) on "
        "every GPU in MIG mode for the instances prepare will create, as a real driver adds them",
    )
    p.add_argument("--json", action="store_true", help="print every path as one JSON object")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        host = build(
            args.directory,
            args.topology,
            mknod=args.mknod,
            cdi_hook=args.cdi_hook,
            spare_mig_caps=args.spare_mig_caps,
        )
    except SimHostError as e:
        print(f"simhost: {e}", file=sys.stderr)
        return 2
    info = describe(host, args.topology)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for flag in info["run_flags"]:
        print(flag)
    faults = info["env"]["FAKE_NVML_FAULTS"]
    print(
        f"simhost: {info['device_nodes']} under {host.dev_root}/dev; boot id in "
        f"{host.boot_id_file} (change it to simulate a reboot). For a fault log of this "
        f"host's own, give run and `fakenvml inject` FAKE_NVML_FAULTS={faults}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
