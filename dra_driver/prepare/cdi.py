"""Per-claim CDI specs: what a container runtime must do to hand a claim's devices over.

One transient spec per claim, `<cdi_root>/k8s.<driver>-claim_<claimUID>.json`,
kind `k8s.<driver>/claim`, one CDI device per prepared device named
`<claimUID>-<device name>` so names are never reused across claims (runtimes
cache specs). Only edits this driver can compute from the host are written:

* device nodes that exist under dev_root: the GPU's `/dev/nvidia<minor>`, the
  control nodes, and for MIG devices the `nvidia-cap<N>` nodes that
  `<proc_root>/driver/nvidia/capabilities/gpu<minor>/mig/gi<G>[/ci<C>]/access`
  name ("DeviceFileMinor: N"); major/minor are recorded only for real
  character devices (a regular file stands in for a node in tests);
* per device, env `NVIDIA_DRA_DEVICE_<NAME>_UUID=<uuid>` (and
  `..._ADMIN_ACCESS=true` for admin access). Deliberately not
  `NVIDIA_VISIBLE_DEVICES` / `CUDA_VISIBLE_DEVICES`: a legacy-mode
  nvidia-container-runtime would inject devices a second time from the former,
  and with several claims in one container the last spec's value of either
  would hide the other claims' devices. Per-device names cannot collide;
* when `nvidia-cdi-hook` is installed under driver_root, read-only mounts of
  the driver's user-space libraries and tools found there for the running
  driver version, plus the `create-symlinks` and `update-ldcache`
  createContainer hooks that make them loadable. Without the hook no
  libraries are injected (the container must bring them).

Files are looked up where this process sees them (dev_root, proc_root,
driver_root, nvidia_proc_dir) but every path a spec names is the host's: a
driver root mounted elsewhere in a container (`--driver-root /driver-root`)
is written as the host's (`--host-driver-root`), since the runtime that
applies the spec runs on the host. Device nodes are named by their /dev path
and carry their major/minor, so the runtime never looks them up under our
mount.

cdiVersion is the lowest version whose features the spec uses (CDI's
MinimumRequiredVersion rules), so older runtimes' CDI libraries accept it.
Files are written atomically: a temp file whose name does not end in .json,
fsync, rename, directory fsync.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..hostpaths import DriverRoot, library_dirs
from ..inventory import Device
from .files import Recycler, fsync_dir

log = logging.getLogger(__name__)

CLAIM_CLASS = "claim"
# \Z, not $: "$" also matches before a trailing newline. Use fullmatch() with it.
CLAIM_UID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
_VENDOR_RE = re.compile(r"^[A-Za-z]([A-Za-z0-9_.-]*[A-Za-z0-9])?\Z")
_NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.:-]*[A-Za-z0-9])?\Z")
_ENV_NAME_RE = re.compile(r"[^A-Z0-9_]")
_CAP_MINOR_RE = re.compile(r"^DeviceFileMinor:\s*(\d+)\s*$", re.MULTILINE)
CONTROL_NODES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools")
MOUNT_OPTIONS = ("ro", "nosuid", "nodev", "rbind", "rprivate")
HOOK_PATHS = ("usr/bin/nvidia-cdi-hook", "usr/local/bin/nvidia-cdi-hook")
# User-space driver libraries a CUDA/NVML workload loads (the toolkit's "compute,utility").
DRIVER_LIBRARIES = (
    "libcuda.so",
    "libcudadebugger.so",
    "libnvidia-ml.so",
    "libnvidia-ptxjitcompiler.so",
    "libnvidia-nvvm.so",
    "libnvidia-gpucomp.so",
    "libnvidia-cfg.so",
    "libnvidia-allocator.so",
)
DRIVER_BINARIES = ("usr/bin/nvidia-smi", "usr/bin/nvidia-debugdump")


class CdiError(RuntimeError):
    """A claim's CDI spec cannot be built or written; the message says why."""


class InvalidClaimUid(CdiError):
    """A claim UID that is not a lowercase RFC 4122 UUID; never used in a path."""


def check_claim_uid(uid: str) -> str:
    """Return uid if it is a Kubernetes object UID (a lowercase UUID), else raise."""
    if not CLAIM_UID_RE.fullmatch(uid):
        raise InvalidClaimUid(f"claim UID {uid!r} is not a lowercase UUID")
    return uid


@dataclass(frozen=True)
class SpecDevice:
    """One device of a claim, as the spec builder needs it."""

    device: Device
    admin_access: bool = False


# --- version computation ---------------------------------------------------------------

_KNOWN_VERSIONS = ("0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0", "1.1.0")


def _edits(spec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    out = [d.get("containerEdits") or {} for d in spec.get("devices") or []]
    out.append(spec.get("containerEdits") or {})
    return out


def minimum_cdi_version(spec: Mapping[str, Any]) -> str:
    """The lowest cdiVersion that accepts spec, by CDI's MinimumRequiredVersion rules."""
    edits = _edits(spec)
    if any(e.get("netDevices") for e in edits):
        return "1.1.0"
    if any(e.get("intelRdt") is not None or e.get("additionalGids") for e in edits):
        return "0.7.0"
    kind_class = str(spec.get("kind", "")).partition("/")[2]
    if (
        spec.get("annotations")
        or any(d.get("annotations") for d in spec.get("devices") or [])
        or "." in kind_class
    ):
        return "0.6.0"
    if any(not str(d.get("name", "a"))[:1].isalpha() for d in spec.get("devices") or []) or any(
        n.get("hostPath") for e in edits for n in e.get("deviceNodes") or []
    ):
        return "0.5.0"
    if any(m.get("type") for e in edits for m in e.get("mounts") or []):
        return "0.4.0"
    return _KNOWN_VERSIONS[0]


# --- host discovery -----------------------------------------------------------------------


class HostLayout:
    """Reads device nodes, MIG capabilities and driver files from the (possibly re-rooted) host.

    Paths in the spec are host paths ("/dev/nvidia0"); they are looked up under
    dev_root / proc_root / driver_root, which tests point at a temp tree, and
    MIG capabilities under nvidia_proc_dir (default <proc_root>/driver/nvidia).
    host_driver_root (default: driver_root) is what specs call driver_root.
    """

    def __init__(
        self,
        dev_root: Path,
        proc_root: Path,
        driver_root: Path,
        driver_version: Callable[[], str] = lambda: "",
        *,
        host_driver_root: Path | None = None,
        nvidia_proc_dir: Path | None = None,
    ) -> None:
        self.dev_root = dev_root
        self.proc_root = proc_root
        self.driver_root = driver_root
        self.root = DriverRoot(driver_root, host_driver_root or driver_root)
        self.nvidia_proc_dir = nvidia_proc_dir or proc_root / "driver/nvidia"
        self._driver_version = driver_version
        self._lock = threading.Lock()
        self._driver_edits: dict[str, Any] | None = None
        self._caps_major: int | None = None

    def _local(self, host_path: str) -> Path:
        return self.dev_root / host_path.lstrip("/")

    def device_node(self, host_path: str) -> dict[str, Any] | None:
        """The spec entry for a node, or None when it does not exist under dev_root."""
        try:
            st = os.stat(self._local(host_path))
        except FileNotFoundError:
            return None
        node: dict[str, Any] = {"path": host_path}
        if stat.S_ISCHR(st.st_mode):
            node.update(type="c", major=os.major(st.st_rdev), minor=os.minor(st.st_rdev))
        return node

    def gpu_nodes(self, minor: int) -> list[dict[str, Any]]:
        node = self.device_node(f"/dev/nvidia{minor}")
        if node is None:
            raise CdiError(
                f"device node /dev/nvidia{minor} does not exist under {self.dev_root}; "
                "is the NVIDIA kernel driver loaded?"
            )
        return [node]

    def control_nodes(self) -> list[dict[str, Any]]:
        return [n for p in CONTROL_NODES if (n := self.device_node(p)) is not None]

    def _cap_minor(self, access_file: Path) -> int:
        try:
            text = access_file.read_text()
        except OSError as e:
            raise CdiError(f"cannot read MIG capability file {access_file}: {e.strerror}") from e
        m = _CAP_MINOR_RE.search(text)
        if not m:
            raise CdiError(f"{access_file} has no 'DeviceFileMinor:' line")
        return int(m.group(1))

    def _nvidia_caps_major(self) -> int | None:
        with self._lock:
            if self._caps_major is not None:
                return self._caps_major
        try:
            lines = (self.proc_root / "devices").read_text().splitlines()
        except OSError:
            return None
        for line in lines:
            parts = line.split()
            if len(parts) == 2 and parts[1] == "nvidia-caps" and parts[0].isdigit():
                with self._lock:
                    self._caps_major = int(parts[0])
                return int(parts[0])
        return None

    def mig_cap_nodes(self, parent_minor: int, gi: int, ci: int) -> list[dict[str, Any]]:
        base = self.nvidia_proc_dir / "capabilities" / f"gpu{parent_minor}" / "mig"
        out = []
        for access in (base / f"gi{gi}" / "access", base / f"gi{gi}" / f"ci{ci}" / "access"):
            minor = self._cap_minor(access)
            path = f"/dev/nvidia-caps/nvidia-cap{minor}"
            node = self.device_node(path)
            if node is None or "major" not in node:
                major = self._nvidia_caps_major()
                if major is not None:
                    node = {"path": path, "type": "c", "major": major, "minor": minor}
            if node is None:
                raise CdiError(
                    f"MIG capability node {path} (from {access}) does not exist under "
                    f"{self.dev_root} and {self.proc_root}/devices has no nvidia-caps major"
                )
            out.append(node)
        return out

    def hook_path(self) -> Path | None:
        """nvidia-cdi-hook as this process finds it (under driver_root), or None."""
        for rel in HOOK_PATHS:
            p = self.driver_root / rel
            if os.access(p, os.X_OK):
                return p
        return None

    def driver_edits(self) -> dict[str, Any]:
        """Library/tool mounts and hooks for the running driver version (cached)."""
        with self._lock:
            if self._driver_edits is not None:
                return self._driver_edits
        edits = self._discover_driver_edits()
        with self._lock:
            self._driver_edits = edits
        return edits

    def _discover_driver_edits(self) -> dict[str, Any]:
        hook = self.hook_path()
        if hook is None:
            log.info(
                "nvidia-cdi-hook not found under %s: CDI specs carry device nodes only; "
                "containers must bring the driver libraries",
                self.driver_root,
            )
            return {}
        version = self._driver_version()
        mounts: list[dict[str, Any]] = []
        links: list[str] = []
        folders: list[str] = []
        if version:
            for rel_dir in library_dirs():
                for lib in DRIVER_LIBRARIES:
                    found = self.driver_root / rel_dir / f"{lib}.{version}"
                    if not found.is_file():
                        continue
                    container = f"/{rel_dir}/{lib}.{version}"
                    mounts.append(
                        {
                            "hostPath": str(self.root.to_host(found)),
                            "containerPath": container,
                            "options": list(MOUNT_OPTIONS),
                        }
                    )
                    links.append(f"{lib}.{version}::/{rel_dir}/{lib}.1")
                    if f"/{rel_dir}" not in folders:
                        folders.append(f"/{rel_dir}")
        for rel in DRIVER_BINARIES:
            found = self.driver_root / rel
            if found.is_file():
                mounts.append(
                    {
                        "hostPath": str(self.root.to_host(found)),
                        "containerPath": f"/{rel}",
                        "options": list(MOUNT_OPTIONS),
                    }
                )
        hooks: list[dict[str, Any]] = []
        hook_on_host = str(self.root.to_host(hook))
        env = ["NVIDIA_CTK_DEBUG=false"]
        if links:
            args = ["nvidia-cdi-hook", "create-symlinks"]
            for link in links:
                args += ["--link", link]
            hooks.append(
                {"hookName": "createContainer", "path": hook_on_host, "args": args, "env": env}
            )
        if folders:
            args = ["nvidia-cdi-hook", "update-ldcache"]
            for folder in folders:
                args += ["--folder", folder]
            hooks.append(
                {"hookName": "createContainer", "path": hook_on_host, "args": args, "env": env}
            )
        if not mounts:
            log.warning(
                "nvidia-cdi-hook found at %s but no driver %s libraries under %s",
                hook,
                version or "(unknown version)",
                self.driver_root,
            )
        out: dict[str, Any] = {}
        if mounts:
            out["mounts"] = mounts
        if hooks:
            out["hooks"] = hooks
        return out


# --- spec files -----------------------------------------------------------------------------


def env_name(device_name: str, what: str) -> str:
    return f"NVIDIA_DRA_DEVICE_{_ENV_NAME_RE.sub('_', device_name.upper())}_{what}"


@dataclass(frozen=True)
class StagedSpec:
    """A spec written and fsynced under a temp name, not yet visible to runtimes."""

    uid: str
    temp_name: str  # a plain string: pathlib would intern every new hidden name
    final: Path

    @property
    def temp(self) -> Path:
        return Path(self.temp_name)


class CdiSpecs:
    """Builds, writes, lists and removes this driver's per-claim transient specs."""

    def __init__(self, cdi_root: Path, driver_name: str, host: HostLayout, owner: str = "") -> None:
        self.root = cdi_root
        self.vendor = f"k8s.{driver_name}"
        if not _VENDOR_RE.match(self.vendor):
            raise CdiError(f"driver name {driver_name!r} gives an invalid CDI vendor")
        self.kind = f"{self.vendor}/{CLAIM_CLASS}"
        self.prefix = f"{self.vendor}-{CLAIM_CLASS}_"
        self.host = host
        self.files = Recycler(cdi_root, self.prefix, mode=0o644, owner=owner)

    def path(self, uid: str) -> Path:
        return self.root / f"{self.prefix}{check_claim_uid(uid)}.json"

    def device_name(self, uid: str, device_name: str) -> str:
        name = f"{check_claim_uid(uid)}-{device_name}"
        if not _NAME_RE.match(name):
            raise CdiError(f"device name {device_name!r} is not a valid CDI device name")
        return name

    def device_id(self, uid: str, device_name: str) -> str:
        return f"{self.kind}={self.device_name(uid, device_name)}"

    def build(self, uid: str, devices: Sequence[SpecDevice]) -> dict[str, Any]:
        """The spec for one claim. Raises CdiError when a needed node is missing."""
        if not devices:
            raise CdiError("a CDI spec needs at least one device")
        entries = []
        for sd in sorted(devices, key=lambda s: s.device.name):
            d = sd.device
            nodes = self.host.gpu_nodes(d.minor)
            if d.mig is not None:
                nodes += self.host.mig_cap_nodes(
                    d.minor, d.mig.gpu_instance_id, d.mig.compute_instance_id
                )
            env = [f"{env_name(d.name, 'UUID')}={d.uuid}"]
            if sd.admin_access:
                env.append(f"{env_name(d.name, 'ADMIN_ACCESS')}=true")
            entries.append(
                {
                    "name": self.device_name(uid, d.name),
                    "containerEdits": {"env": env, "deviceNodes": nodes},
                }
            )
        common: dict[str, Any] = {}
        control = self.host.control_nodes()
        if control:
            common["deviceNodes"] = control
        common.update(self.host.driver_edits())
        spec: dict[str, Any] = {"cdiVersion": "", "kind": self.kind, "devices": entries}
        if common:
            spec["containerEdits"] = common
        spec["cdiVersion"] = minimum_cdi_version(spec)
        return spec

    def stage(self, uid: str, spec: Mapping[str, Any]) -> StagedSpec:
        """Write spec under a hidden temp name and fsync it; commit() makes it visible."""
        final = self.path(uid)
        temp = self.files.write_temp(json.dumps(spec, separators=(",", ":")).encode())
        return StagedSpec(uid, temp, final)

    def commit(self, staged: StagedSpec, sync_dir: bool = True) -> None:
        self.files.commit(staged.temp_name, staged.final)
        if sync_dir:
            fsync_dir(self.root)

    def abort(self, staged: StagedSpec) -> None:
        self.files.discard(staged.temp_name)

    def write(self, uid: str, spec: Mapping[str, Any]) -> Path:
        staged = self.stage(uid, spec)
        self.commit(staged)
        return staged.final

    def remove(self, uid: str, sync_dir: bool = True) -> bool:
        """Delete a claim's spec; True if it existed. Missing is fine (idempotent)."""
        if not self.files.remove(self.path(uid)):
            return False
        if sync_dir:
            fsync_dir(self.root)
        return True

    def exists(self, uid: str) -> bool:
        return self.path(uid).exists()

    def read(self, uid: str) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path(uid).read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise CdiError(f"{self.path(uid)}: unreadable CDI spec: {e}") from e
        if not isinstance(data, dict):
            raise CdiError(f"{self.path(uid)}: not a JSON object")
        return data

    def claim_uids(self) -> list[str]:
        """UIDs of every claim spec of ours on disk (files with a bad UID are skipped)."""
        out = []
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        for name in names:
            if name.startswith(self.prefix) and name.endswith(".json"):
                uid = name[len(self.prefix) : -len(".json")]
                if CLAIM_UID_RE.fullmatch(uid):
                    out.append(uid)
        return sorted(out)

    def sweep(self, keep: Iterable[str], is_alive: Callable[[str], bool]) -> list[str]:
        """Remove our specs whose claim is not in keep, and hidden files of dead writers.

        Returns the UIDs of the removed specs.
        """
        wanted = set(keep)
        removed = [uid for uid in self.claim_uids() if uid not in wanted and self.remove(uid)]
        self.files.sweep(is_alive)
        return removed

    def devices_of(self, uid: str, spec: Mapping[str, Any]) -> list[tuple[str, str, bool, str]]:
        """(device name, CDI id, admin access, uuid) of each device of one of our specs.

        Used to rebuild the checkpoint from disk when it is corrupted.
        """
        prefix = f"{check_claim_uid(uid)}-"
        out = []
        for d in spec.get("devices") or []:
            name = str(d.get("name", ""))
            if not name.startswith(prefix):
                continue
            device = name[len(prefix) :]
            env = (d.get("containerEdits") or {}).get("env") or []
            admin = f"{env_name(device, 'ADMIN_ACCESS')}=true" in env
            uuid = ""
            for e in env:
                key, _, value = str(e).partition("=")
                if key == env_name(device, "UUID"):
                    uuid = value
            out.append((device, f"{self.kind}={name}", admin, uuid))
        return out
