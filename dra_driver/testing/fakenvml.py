"""The fake libnvidia-ml.so.1: locate it, describe fake nodes, inject faults.

The native library (``native/fakenvml``, built by ``setup.py`` into
``dra_driver/testing/_fakenvml.cpython-*.so`` with soname ``libnvidia-ml.so.1``)
exports the real NVML C ABI for the calls this driver uses, so our cffi fast
path and nvidia-ml-py both run unchanged against it.  It is a plain C library,
not a Python module: never import ``dra_driver.testing._fakenvml``.

Environment (read by the library at the ``nvmlInit`` that takes its reference
count from 0 to 1):

``FAKE_NVML_TOPOLOGY``
    A topology file path, or the name of a shipped one (``small`` when unset;
    see ``python -m dra_driver.testing.fakenvml topologies``).
``FAKE_NVML_FAULTS``
    The fault log path.  Else ``$FAKE_NVML_STATE_DIR/<topology name>.faults.jsonl``
    when ``FAKE_NVML_STATE_DIR`` is set.  With neither, the run has no fault log
    and sees no faults: there is no shared default, so an injection made for one
    run never reaches a later, unrelated one.  To inject, give the driver process
    and ``inject`` the same log.  Give each simulated node (and each test) its own.

An invalid topology makes ``nvmlInit`` fail with ``NVML_ERROR_UNKNOWN`` and
prints the reason (file, element, problem) to stderr once.

Topology format (JSON object; unknown fields are errors)::

    name                  str, required: also names the default fault log
    description           str, optional
    driver_version        str, required, e.g. "550.54.15" (nvmlSystemGetDriverVersion)
    nvml_version          str, optional, default "<cuda major>.<driver_version>"
    cuda_driver_version   int, required, e.g. 12040 (nvmlSystemGetCudaDriverVersion)
    models                object: model key -> product description
        name                     str, the product name (nvmlDeviceGetName)
        brand                    "NVIDIA" | "Tesla" | "Quadro" | "GeForce" | "Titan" |
                                 "NVS" | "Quadro RTX" | "NVIDIA RTX" | NVML_BRAND_* int
        architecture             "Kepler" ... "Hopper" | "Blackwell" | NVML_DEVICE_ARCH_* int
        cuda_compute_capability  "9.0"
        memory_mib               int, total memory;  memory_reserved_mib int, optional
        multiprocessors          int
        pci_device_id            "0x233010DE" (device id << 16 | vendor id)
        pci_subsystem_id         optional, same form
        pcie_max_link_width      int
        features                 optional {ecc, row_remapping, retired_pages, temperature}
                                 booleans; false -> NVML_ERROR_NOT_SUPPORTED for that query
                                 (defaults: true, true, false, true)
        supported_events         optional list of nvmlEventType names without the prefix
                                 (default: XidCriticalError, PState, Clock,
                                 GpuUnavailableError, and the two ECC events when ecc)
        mig                      optional; present = MIG-capable
            max_devices          int (7 on A100/H100)
            memory_slices        int (8 on A100/H100)
            profiles             list of GPU instance profiles:
                index            NVML_GPU_INSTANCE_PROFILE_* (0 = 1 slice, 7 = 1 slice rev1 ...)
                id               the device's profile id (19 for 1g.10gb on H100)
                name             as NVML reports it, e.g. "MIG 1g.10gb"
                slices, instances, multiprocessors, copy_engines, decoders, encoders,
                jpeg, ofa, memory_mib        ints, as in nvmlGpuInstanceProfileInfo_v2_t
                placement_size   memory slices one instance occupies
                placements       possible start slices
    gpus                  list in NVML index order:
        model             a key of models
        minor             int, /dev/nvidia<minor>
        uuid              "GPU-..."
        serial            str, optional
        pci_bus_id        "00000000:17:00.0"
        pcie_link_width   int, optional current width (default: the maximum)
        temperature       int, optional, degrees C (default 35)
        clocks_event_reasons  int, optional default reasons mask (default 0)
        mig               optional, only for MIG-capable models:
            current, pending  0 | 1
            devices       list of MIG devices (one compute instance each):
                profile_id       a profile id of the model
                placement_start  one of that profile's placements
                gi_id            GPU instance id, unique per GPU
                ci_id            compute instance id, default 0
                uuid             "MIG-..."

Load-time checks: unknown models/profiles, placements that overlap or are not
offered by the profile, MIG devices on a GPU with MIG disabled, duplicate
minors/UUIDs/bus ids/GI ids.

Fault log (the channel between an injecting process and every process using
the library): append-only JSON lines, one object per fault, each appended with
a single ``write`` on an ``O_APPEND`` descriptor, after which the writer
stores the log's new size (8 bytes, little endian) at offset 0 of the sidecar
``<log>.gen``.  Readers map that sidecar and check it on every NVML call (one
memory load), so a record is visible to the next call in any process; a writer
that skips the sidecar is still noticed within 100 ms, and at once by an event
wait.  Fields: ``kind`` and the
target ``gpu`` (its UUID), plus per kind::

    xid            xid, optional gi and ci    -> nvmlEventTypeXidCriticalError
    lost           -                          -> NVML_ERROR_GPU_IS_LOST from every call on
                                                 the GPU and its MIG devices; events Xid 79
                                                 and GpuUnavailableError; then one
                                                 NVML_ERROR_GPU_IS_LOST from the event wait
    ecc            corrected, uncorrected     -> volatile and aggregate counts grow;
                                                 Single/DoubleBitEccError events
    throttle       reasons (mask)             -> nvmlDeviceGetCurrentClocksEventReasons
    pcie           value (width)              -> nvmlDeviceGetCurrPcieLinkWidth
    remap          pending, failure (bools, absent = unchanged), corrected,
                   uncorrected (rows added)   -> nvmlDeviceGetRemappedRows
    retired_pages  pending (bool, default true) -> nvmlDeviceGetRetiredPagesPendingStatus
    temperature    value (degrees C)          -> nvmlDeviceGetTemperature
    recover        gpu optional (absent = all GPUs): back to topology defaults, except
                   aggregate ECC counts (kept in the infoROM across a reset); also
                   lifts that GPU's hangs and delays
    xid            ... optional action: the recovery action the driver sets with it
    recovery_action value (nvmlDeviceGpuRecoveryAction_t) -> NVML_FI_DEV_GET_GPU_RECOVERY_ACTION
                   and an nvmlEventTypeGpuRecoveryAction event (drivers 565+ only:
                   older ones answer the field "not supported" and have no such event)
    hang           fn (NVML function name, absent = every function), gpu optional
                   (absent = every GPU and device-less calls) -> those calls block, with
                   the library's lock released, until a release; fn
                   "nvmlEventSetWait_v2" hangs the event wait
    delay          ms, fn and gpu as for hang -> those calls take ms longer
    release        fn and gpu as for hang (absent = all) -> lifts matching hangs/delays
                   and fails
    fail           fn (required), rc (an nvmlReturn_t, e.g. 23 INSUFFICIENT_RESOURCES,
                   19 IN_USE, 4 NO_PERMISSION), gpu optional, count optional (calls to
                   fail, counted in each process that folds the record; 0/absent = until
                   released) -> those calls answer rc without doing anything
    mig_busy       gi, value (1/0): processes run on that MIG device (or no longer);
                   nvmlComputeInstanceDestroy answers IN_USE while they do

MIG layout records: the library itself appends these when a GPU or compute
instance is created or destroyed (nvmlDeviceCreateGpuInstance[WithPlacement],
nvmlGpuInstanceCreateComputeInstance[WithPlacement], nvmlComputeInstanceDestroy,
nvmlGpuInstanceDestroy), deciding the change under an exclusive ``flock`` of
the log after folding it, so every process sees the same instances with the
same ids and UUIDs, in log order, and each change is an
``nvmlEventMigConfigChange`` event on the GPU::

    gi_create      profile_id, start, gi      a GPU instance (no MIG device yet)
    ci_create      gi, ci, uuid               its compute instance: now a MIG device
    ci_destroy     gi, ci
    gi_destroy     gi

An operator's re-layout can also be written directly (FaultInjector.mig_create
/ mig_destroy): ``mig_create`` profile_id, optional placement_start, gi, uuid
(the library picks the first free placement, the smallest free GI id and a
UUID when absent) and ``mig_destroy`` gi: the whole MIG device at once, no
event; what the GPU cannot take is logged and changes nothing.

Their semantics follow nvml.h: a GPU not in MIG mode answers NOT_SUPPORTED; an
unknown profile or a placement the profile does not offer INVALID_ARGUMENT; an
overlapping placement or a GPU/profile at its instance limit
INSUFFICIENT_RESOURCES; destroying a GI that still has its CI, or a CI with
processes on it, IN_USE. The fake models one compute instance per GPU instance,
spanning it. A destroyed instance leaves a hole in the MIG device indices
(nvmlDeviceGetMigDeviceHandleByIndex answers NOT_FOUND there), as a real GPU does.

Every process folds the whole log into its state at init and then any new
complete lines as they appear, so persistent faults apply to
all processes; each event set delivers the events appended after it registered
a GPU, once.  A blocked ``nvmlEventSetWait`` is woken through inotify within
milliseconds of an append.

Command line::

    python -m dra_driver.testing.fakenvml library
    python -m dra_driver.testing.fakenvml topologies
    python -m dra_driver.testing.fakenvml inject [--topology T] [--faults PATH] KIND ...
        xid --gpu N --xid 79 [--gi G [--ci C]]
        lost --gpu N
        ecc --gpu N [--corrected K] [--uncorrected K]
        throttle --gpu N --reasons MASK|NAME[,NAME...]   (names: see THROTTLE_REASONS)
        pcie --gpu N --width W
        remap --gpu N [--pending | --no-pending] [--failure | --no-failure]
              [--corrected-rows K] [--uncorrected-rows K]
        retired-pages --gpu N [--clear]
        temperature --gpu N --celsius T
        recover [--gpu N]
        recovery-action --gpu N --action A
        hang [--gpu N] [--fn nvmlDeviceGetTemperature]
        delay --ms MS [--gpu N] [--fn NAME]
        release [--gpu N] [--fn NAME]
        fail --fn NAME --rc RC [--gpu N] [--count K]
        mig-busy --gpu N --gi G [--idle]
    python -m dra_driver.testing.fakenvml mig-create [--topology T] [--faults PATH]
        GPU PROFILE [--placement START]      (PROFILE: "1g.5gb" or a profile id)
    python -m dra_driver.testing.fakenvml mig-destroy [--topology T] [--faults PATH] GPU GI
    python -m dra_driver.testing.fakenvml mig-list [--topology T] [--faults PATH]

``mig-create``/``mig-destroy`` act as an operator's ``nvidia-smi mig -cgi/-dgi``:
through the library (nvidia-ml-py on the fake, in that process), so they obey
the same rules and leave the same records; each prints the instance as JSON.

``--topology``/``--faults`` default to ``FAKE_NVML_TOPOLOGY``/``FAKE_NVML_FAULTS``
(resolved as the library does, ``FAKE_NVML_STATE_DIR`` included), so the
injector and the driver agree when they share the environment; with no fault
log named, ``inject`` refuses rather than write to a log no driver reads.

Using the fake from nvidia-ml-py: pynvml loads ``CDLL("libnvidia-ml.so.1")``;
:func:`load_into_pynvml` instead installs ``CDLL(library_path())`` as the
module's library before ``pynvml.nvmlInit()``.  A C client may equally
``dlopen(library_path())`` (or preload it with ``RTLD_GLOBAL``: its soname is
``libnvidia-ml.so.1``).
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.machinery
import importlib.util
import json
import os
import struct
import sys
import tempfile
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

ENV_TOPOLOGY = "FAKE_NVML_TOPOLOGY"
ENV_FAULTS = "FAKE_NVML_FAULTS"
ENV_STATE_DIR = "FAKE_NVML_STATE_DIR"
DEFAULT_TOPOLOGY = "small"
LIBRARY_MODULE = "dra_driver.testing._fakenvml"
TOPOLOGIES_DIR = Path(__file__).resolve().parent / "topologies"

# nvmlClocksEventReason* bits (nvml.h), by the names the CLI accepts.
THROTTLE_REASONS: dict[str, int] = {
    "gpu_idle": 0x1,
    "applications_clocks_setting": 0x2,
    "sw_power_cap": 0x4,
    "hw_slowdown": 0x8,
    "sync_boost": 0x10,
    "sw_thermal_slowdown": 0x20,
    "hw_thermal_slowdown": 0x40,
    "hw_power_brake_slowdown": 0x80,
    "display_clock_setting": 0x100,
}


class FakeNvmlError(Exception):
    """The fake library is missing, or a topology or fault request is invalid."""


def _library_candidates() -> list[Path]:
    """Where a built fake library may be, in order of preference.

    First this package's own directory. Then the same place in every other
    copy of the package on sys.path: run from a source checkout after
    ``pip install .``, the unbuilt source tree shadows the installed package,
    whose directory holds the library.
    """
    spec = importlib.util.find_spec(LIBRARY_MODULE)
    out = [Path(spec.origin)] if spec is not None and spec.origin else []
    names = [f"_fakenvml{suffix}" for suffix in importlib.machinery.EXTENSION_SUFFIXES]
    for entry in sys.path:
        base = Path(entry or ".") / "dra_driver" / "testing"
        out.extend(base / name for name in names)
    return out


def library_path() -> str:
    """Path of the built fake libnvidia-ml (located without importing it)."""
    seen: set[Path] = set()
    for candidate in _library_candidates():
        resolved = candidate.resolve()
        if resolved in seen:
            continue
        seen.add(resolved)
        if resolved.is_file():
            return str(resolved)
    raise FakeNvmlError(
        "the fake NVML library is not built (looked in every dra_driver/testing on sys.path): "
        "run `pip install .` or `python setup.py build_ext --inplace` (needs a C compiler)"
    )


def topology_names() -> list[str]:
    """Names of the topologies shipped with the package."""
    return sorted(p.stem for p in TOPOLOGIES_DIR.glob("*.json"))


def topology_path(spec: str | os.PathLike[str]) -> Path:
    """Resolve a topology name or path exactly as the library does."""
    text = os.fspath(spec)
    if "/" in text or text.endswith(".json"):
        return Path(text)
    if text not in topology_names():
        raise FakeNvmlError(f"unknown topology {text!r}; shipped: {', '.join(topology_names())}")
    return TOPOLOGIES_DIR / f"{text}.json"


@dataclass(frozen=True)
class TopologyMig:
    """One MIG device (GPU instance + its compute instance) of a topology."""

    profile_id: int
    placement_start: int
    gi_id: int
    ci_id: int
    uuid: str


@dataclass(frozen=True)
class TopologyGpu:
    """The parts of a topology GPU that fault injection and tests need."""

    index: int
    minor: int
    uuid: str
    model: str
    name: str
    pcie_max_link_width: int
    mig_devices: tuple[TopologyMig, ...] = ()


@dataclass(frozen=True)
class Topology:
    """A parsed topology file; the library remains the authority on validity."""

    name: str
    path: Path
    driver_version: str
    cuda_driver_version: int
    gpus: tuple[TopologyGpu, ...]
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    def gpu(self, index: int) -> TopologyGpu:
        if not 0 <= index < len(self.gpus):
            raise FakeNvmlError(
                f"topology {self.name} has GPUs 0..{len(self.gpus) - 1}, not {index}"
            )
        return self.gpus[index]


def load_topology(spec: str | os.PathLike[str] | None = None) -> Topology:
    """Parse a topology (default: $FAKE_NVML_TOPOLOGY, else "small")."""
    path = topology_path(spec or os.environ.get(ENV_TOPOLOGY) or DEFAULT_TOPOLOGY)
    try:
        raw = json.loads(path.read_text())
        models = raw["models"]
        gpus = []
        for index, g in enumerate(raw["gpus"]):
            model = models[g["model"]]
            migs = tuple(
                TopologyMig(
                    profile_id=int(d["profile_id"]),
                    placement_start=int(d["placement_start"]),
                    gi_id=int(d["gi_id"]),
                    ci_id=int(d.get("ci_id", 0)),
                    uuid=str(d["uuid"]),
                )
                for d in g.get("mig", {}).get("devices", [])
            )
            gpus.append(
                TopologyGpu(
                    index=index,
                    minor=int(g["minor"]),
                    uuid=str(g["uuid"]),
                    model=str(g["model"]),
                    name=str(model["name"]),
                    pcie_max_link_width=int(model["pcie_max_link_width"]),
                    mig_devices=migs,
                )
            )
        return Topology(
            name=str(raw["name"]),
            path=path,
            driver_version=str(raw["driver_version"]),
            cuda_driver_version=int(raw["cuda_driver_version"]),
            gpus=tuple(gpus),
            raw=raw,
        )
    except OSError as exc:
        raise FakeNvmlError(f"cannot read topology {path}: {exc}") from exc
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise FakeNvmlError(f"malformed topology {path}: {exc!r}") from exc


def default_fault_log(topology_name: str, environ: Mapping[str, str] | None = None) -> Path:
    """The fault log the library uses when FAKE_NVML_FAULTS is unset: under FAKE_NVML_STATE_DIR."""
    env = os.environ if environ is None else environ
    state = env.get(ENV_STATE_DIR)
    if not state:
        raise FakeNvmlError(f"no fault log: neither {ENV_FAULTS} nor {ENV_STATE_DIR} is set")
    return Path(state) / f"{topology_name}.faults.jsonl"


def fault_log_of(topology_name: str, environ: Mapping[str, str] | None = None) -> Path | None:
    """The fault log a library run in environ reads, exactly as it resolves it; None: none."""
    env = os.environ if environ is None else environ
    if env.get(ENV_FAULTS):
        return Path(env[ENV_FAULTS])
    if env.get(ENV_STATE_DIR):
        return default_fault_log(topology_name, env)
    return None


def parse_throttle_reasons(text: str) -> int:
    """A mask ("0x48", "72") or comma-separated THROTTLE_REASONS names."""
    try:
        return int(text, 0)
    except ValueError:
        pass
    mask = 0
    for name in filter(None, (part.strip().lower() for part in text.split(","))):
        if name not in THROTTLE_REASONS:
            raise FakeNvmlError(
                f"unknown throttle reason {name!r}; known: {', '.join(THROTTLE_REASONS)}"
            )
        mask |= THROTTLE_REASONS[name]
    return mask


MIG_RECORD_KINDS = (
    "gi_create",
    "ci_create",
    "ci_destroy",
    "gi_destroy",
    "mig_create",
    "mig_destroy",
)


def current_migs(topology: Topology, fault_log: Path | None) -> dict[int, tuple[TopologyMig, ...]]:
    """The MIG devices each GPU has now: the topology's, changed by the log's layout records.

    Folds the records as the library does (only complete GPU+compute instances
    count as MIG devices; a GPU instance without its compute instance is not one).
    """
    by_uuid = {g.uuid.lower(): g.index for g in topology.gpus}
    gis: dict[int, dict[int, dict[str, Any]]] = {
        g.index: {
            m.gi_id: {
                "profile_id": m.profile_id,
                "start": m.placement_start,
                "ci": m.ci_id,
                "uuid": m.uuid,
            }
            for m in g.mig_devices
        }
        for g in topology.gpus
    }
    lines: list[str] = []
    if fault_log is not None:
        try:
            lines = fault_log.read_text().splitlines()
        except FileNotFoundError:
            lines = []
        except OSError as exc:
            raise FakeNvmlError(f"cannot read fault log {fault_log}: {exc}") from exc
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if not isinstance(rec, dict) or rec.get("kind") not in MIG_RECORD_KINDS:
            continue
        gpu = by_uuid.get(str(rec.get("gpu", "")).lower())
        if gpu is not None and rec["kind"] == "mig_create":
            _fold_operator_create(topology, gpu, gis[gpu], rec)
            continue
        gi = rec.get("gi")
        if gpu is None or not isinstance(gi, int):
            continue
        layout = gis[gpu]
        kind = rec["kind"]
        if kind == "gi_create" and gi not in layout:
            layout[gi] = {
                "profile_id": rec.get("profile_id"),
                "start": rec.get("start"),
                "ci": None,
                "uuid": None,
            }
        elif kind == "ci_create" and gi in layout and layout[gi]["ci"] is None:
            layout[gi].update(ci=rec.get("ci"), uuid=rec.get("uuid"))
        elif kind == "ci_destroy" and gi in layout:
            layout[gi].update(ci=None, uuid=None)
        elif kind == "gi_destroy" and gi in layout and layout[gi]["ci"] is None:
            del layout[gi]
        elif kind == "mig_destroy":
            layout.pop(gi, None)
    return {
        gpu: tuple(
            TopologyMig(int(d["profile_id"]), int(d["start"]), gi, int(d["ci"]), str(d["uuid"]))
            for gi, d in sorted(layout.items())
            if d["ci"] is not None
        )
        for gpu, layout in gis.items()
    }


def _fold_operator_create(
    topology: Topology, gpu: int, layout: dict[int, dict[str, Any]], rec: Mapping[str, Any]
) -> None:
    """An operator's mig_create record, decided as the library decides it (migmgmt.c)."""
    model = topology.raw["models"][topology.gpu(gpu).model].get("mig", {})
    profiles = {int(p["id"]): p for p in model.get("profiles", [])}
    p = profiles.get(int(rec.get("profile_id", -1)))
    if p is None or len(layout) >= int(model.get("max_devices", 0)):
        return
    used = 0
    for d in layout.values():
        q = profiles.get(int(d["profile_id"]))
        if q is not None:
            used |= ((1 << int(q["placement_size"])) - 1) << int(d["start"])
    want = rec.get("placement_start")
    mask = (1 << int(p["placement_size"])) - 1
    starts = [s for s in p["placements"] if (want is None or s == want) and not used & mask << s]
    if not starts:
        return
    gi = rec.get("gi")
    if gi is None:
        gi = 1
        while gi in layout:
            gi += 1
    if gi in layout:
        return
    uuid = rec.get("uuid") or f"MIG-{gpu + 1:08x}-0000-4000-8000-{gi:012x}"
    layout[int(gi)] = {"profile_id": p["id"], "start": starts[0], "ci": 0, "uuid": uuid}


def profile_id_of(topology: Topology, gpu: int, profile: str) -> int:
    """A GPU's GI profile id from a name ("1g.5gb", "MIG 1g.5gb") or an id ("19")."""
    g = topology.gpu(gpu)
    model = topology.raw["models"][g.model]
    profiles = model.get("mig", {}).get("profiles", [])
    if not profiles:
        raise FakeNvmlError(f"GPU {gpu} ({g.name}) is not MIG-capable")
    wanted = profile.strip().removeprefix("MIG ").strip()
    for p in profiles:
        if wanted == str(p["id"]) or wanted == str(p["name"]).removeprefix("MIG ").strip():
            return int(p["id"])
    known = ", ".join(str(p["name"]).removeprefix("MIG ") for p in profiles)
    raise FakeNvmlError(f"GPU {gpu} has no MIG profile {profile!r} (has: {known})")


class FaultInjector:
    """Appends validated fault records to one topology instance's fault log."""

    def __init__(self, topology: Topology, fault_log: Path) -> None:
        self.topology = topology
        self.fault_log = fault_log

    def _append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        try:
            self.fault_log.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(
                self.fault_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644
            )
            try:
                # One write on O_APPEND: readers never see two records interleaved.
                if os.write(fd, line) != len(line):
                    raise FakeNvmlError(f"short write to {self.fault_log}")
                size = os.fstat(fd).st_size
            finally:
                os.close(fd)
            self._bump_generation(size)
        except OSError as e:
            raise FakeNvmlError(
                f"cannot write fault log {self.fault_log}: {e.strerror or e}"
            ) from e

    def _bump_generation(self, size: int) -> None:
        """Publish the new log size in the sidecar every reader maps.

        Readers compare this word on each NVML call instead of stat()ing the
        log, so the record is visible to the very next call in any process.
        """
        gen = self.fault_log.with_name(self.fault_log.name + ".gen")
        fd = os.open(gen, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            os.pwrite(fd, struct.pack("<Q", size), 0)
        finally:
            os.close(fd)

    def _gpu(self, index: int) -> TopologyGpu:
        return self.topology.gpu(index)

    def xid(
        self,
        gpu: int,
        xid: int,
        gi: int | None = None,
        ci: int | None = None,
        action: int | None = None,
    ) -> None:
        """An XID on the whole GPU, or attributed to one MIG GPU/compute instance.

        action: the recovery action the driver sets along with it (565+ drivers).
        """
        g = self._gpu(gpu)
        if xid < 0:
            raise FakeNvmlError("an XID is a non-negative number")
        record: dict[str, Any] = {"kind": "xid", "gpu": g.uuid, "xid": xid}
        if action is not None:
            if not 0 <= action <= 0xFFFF:
                raise FakeNvmlError("a recovery action is a small non-negative number")
            record["action"] = action
        if ci is not None and gi is None:
            raise FakeNvmlError("--ci needs --gi")
        if gi is not None:
            match = [m for m in current_migs(self.topology, self.fault_log)[gpu] if m.gi_id == gi]
            if not match:
                known = sorted(m.gi_id for m in g.mig_devices) or "none"
                raise FakeNvmlError(f"GPU {gpu} has no GPU instance {gi} (has: {known})")
            ci = match[0].ci_id if ci is None else ci
            if all(m.ci_id != ci for m in match):
                raise FakeNvmlError(f"GPU {gpu} GI {gi} has no compute instance {ci}")
            record.update(gi=gi, ci=ci)
        self._append(record)

    def lost(self, gpu: int) -> None:
        """The GPU falls off the bus."""
        self._append({"kind": "lost", "gpu": self._gpu(gpu).uuid})

    def ecc(self, gpu: int, corrected: int = 0, uncorrected: int = 0) -> None:
        """Add single-bit (corrected) and double-bit (uncorrected) ECC errors."""
        if corrected < 0 or uncorrected < 0 or corrected + uncorrected == 0:
            raise FakeNvmlError("give a positive --corrected and/or --uncorrected count")
        self._append(
            {
                "kind": "ecc",
                "gpu": self._gpu(gpu).uuid,
                "corrected": corrected,
                "uncorrected": uncorrected,
            }
        )

    def throttle(self, gpu: int, reasons: int) -> None:
        """Set the current clocks-event (throttle) reasons mask."""
        if reasons < 0 or reasons >= 1 << 64:
            raise FakeNvmlError("the reasons mask is a 64-bit unsigned value")
        self._append({"kind": "throttle", "gpu": self._gpu(gpu).uuid, "reasons": reasons})

    def pcie(self, gpu: int, width: int) -> None:
        """Set the current PCIe link width (at most the GPU's maximum)."""
        g = self._gpu(gpu)
        if not 1 <= width <= g.pcie_max_link_width:
            raise FakeNvmlError(f"GPU {gpu} link width must be 1..{g.pcie_max_link_width}")
        self._append({"kind": "pcie", "gpu": g.uuid, "value": width})

    def remap(
        self,
        gpu: int,
        pending: bool | None = None,
        failure: bool | None = None,
        corrected_rows: int = 0,
        uncorrected_rows: int = 0,
    ) -> None:
        """Row remapping: set pending/failure flags and/or add remapped rows."""
        if corrected_rows < 0 or uncorrected_rows < 0:
            raise FakeNvmlError("remapped row counts are non-negative")
        record: dict[str, Any] = {
            "kind": "remap",
            "gpu": self._gpu(gpu).uuid,
            "corrected": corrected_rows,
            "uncorrected": uncorrected_rows,
        }
        if pending is not None:
            record["pending"] = pending
        if failure is not None:
            record["failure"] = failure
        self._append(record)

    def retired_pages(self, gpu: int, pending: bool = True) -> None:
        """Set (or clear) the retired-pages-pending flag (pre-Ampere GPUs)."""
        self._append({"kind": "retired_pages", "gpu": self._gpu(gpu).uuid, "pending": pending})

    def temperature(self, gpu: int, celsius: int) -> None:
        """Set the GPU core temperature."""
        if not 0 <= celsius <= 200:
            raise FakeNvmlError("temperature must be 0..200 C")
        self._append({"kind": "temperature", "gpu": self._gpu(gpu).uuid, "value": celsius})

    def _stall_target(self, kind: str, gpu: int | None, fn: str | None) -> dict[str, Any]:
        record: dict[str, Any] = {"kind": kind}
        if gpu is not None:
            record["gpu"] = self._gpu(gpu).uuid
        if fn is not None:
            if not fn.startswith("nvml") or not fn.isidentifier() or len(fn) >= 64:
                raise FakeNvmlError(f"{fn!r} is not an NVML function name (nvml...)")
            record["fn"] = fn
        return record

    def hang(self, gpu: int | None = None, fn: str | None = None) -> None:
        """Calls of fn (every function if None) on gpu (every GPU if None) block until released."""
        self._append(self._stall_target("hang", gpu, fn))

    def delay(self, ms: int, gpu: int | None = None, fn: str | None = None) -> None:
        """Calls of fn on gpu take ms milliseconds longer (until released)."""
        if not 0 < ms <= 600_000:
            raise FakeNvmlError("a delay is 1..600000 ms")
        self._append({**self._stall_target("delay", gpu, fn), "ms": ms})

    def release(self, gpu: int | None = None, fn: str | None = None) -> None:
        """Lift the hangs and delays matching gpu and fn (all of them when both are None)."""
        self._append(self._stall_target("release", gpu, fn))

    def recovery_action(self, gpu: int, action: int) -> None:
        """Set the GPU's NVML recovery action (0 none, 1 GPU reset, 2 node reboot, 3 drain
        P2P, 4 drain and reset, ...), with its event, as a 565+ driver reports it."""
        if not 0 <= action <= 0xFFFF:
            raise FakeNvmlError("a recovery action is a small non-negative number")
        self._append({"kind": "recovery_action", "gpu": self._gpu(gpu).uuid, "value": action})

    def fail(self, fn: str, rc: int, gpu: int | None = None, count: int = 0) -> None:
        """Calls of fn (on gpu, every GPU if None) answer rc, count times (0: until released)."""
        if not 0 < rc <= 0xFFFF:
            raise FakeNvmlError("a fail needs a non-zero NVML return code (--rc)")
        if count < 0:
            raise FakeNvmlError("--count is >= 0 (0: until released)")
        record = self._stall_target("fail", gpu, fn)
        record.update(rc=rc)
        if count:
            record["count"] = count
        self._append(record)

    def mig_busy(self, gpu: int, gi: int, busy: bool = True) -> None:
        """Processes run (busy) or no longer run on MIG device GI of gpu."""
        if all(m.gi_id != gi for m in current_migs(self.topology, self.fault_log)[gpu]):
            raise FakeNvmlError(f"GPU {gpu} has no MIG device with GPU instance {gi}")
        self._append({"kind": "mig_busy", "gpu": self._gpu(gpu).uuid, "gi": gi, "value": int(busy)})

    def create_mig_device(
        self, gpu: int, profile: str, placement: int | None = None
    ) -> TopologyMig:
        """Create a MIG device (GI + its CI) through the library's NVML calls, in another
        process (`mig-create`), as nvidia-smi does; errors are NVML's."""
        argv = [str(gpu), profile] + ([] if placement is None else ["--placement", str(placement)])
        out = self._mig_cli("mig-create", argv)
        return TopologyMig(**out)

    def destroy_mig_device(self, gpu: int, gi: int) -> None:
        """Destroy a MIG device (its CI, then its GI) through the library (`mig-destroy`)."""
        self._mig_cli("mig-destroy", [str(gpu), str(gi)])

    def _mig_cli(self, command: str, argv: list[str]) -> dict[str, Any]:
        import subprocess

        cmd = [
            sys.executable,
            "-m",
            "dra_driver.testing.fakenvml",
            command,
            "--topology",
            str(self.topology.path),
            "--faults",
            str(self.fault_log),
            *argv,
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise FakeNvmlError(done.stderr.strip().removeprefix("error: ") or command)
        result: dict[str, Any] = json.loads(done.stdout or "{}")
        return result

    def recover(self, gpu: int | None = None) -> None:
        """Clear one GPU's faults (or every GPU's), as after a GPU reset."""
        record: dict[str, Any] = {"kind": "recover"}
        if gpu is not None:
            record["gpu"] = self._gpu(gpu).uuid
        self._append(record)

    # Operator actions, not faults: a static MIG re-layout on a GPU in MIG mode, as
    # `nvidia-smi mig -dci -dgi -gi N` / `nvidia-smi mig -cgi P -C` make it. Every
    # process on the topology sees the new layout at its next NVML call; a
    # re-layout the GPU cannot take (no room, no such instance) is logged by the
    # library and changes nothing.

    def mig_destroy(self, gpu: int, gi: int) -> None:
        """Destroy the MIG device (GPU instance gi and its compute instance)."""
        if gi < 0:
            raise FakeNvmlError("a GPU instance id is a non-negative number")
        self._append({"kind": "mig_destroy", "gpu": self._gpu(gpu).uuid, "gi": gi})

    def mig_create(
        self,
        gpu: int,
        profile_id: int,
        placement_start: int | None = None,
        gi: int | None = None,
        uuid: str | None = None,
    ) -> None:
        """Create a MIG device of GPU instance profile profile_id (placement, GI id and UUID
        chosen by the library when not given: first free placement, smallest free GI id)."""
        record: dict[str, Any] = {
            "kind": "mig_create",
            "gpu": self._gpu(gpu).uuid,
            "profile_id": profile_id,
        }
        if placement_start is not None:
            record["placement_start"] = placement_start
        if gi is not None:
            record["gi"] = gi
        if uuid is not None:
            if not uuid.startswith("MIG-"):
                raise FakeNvmlError("a MIG UUID starts with 'MIG-'")
            record["uuid"] = uuid
        self._append(record)


@dataclass
class FakeNode:
    """One simulated node: a topology plus its own fault log (default: in a new temp dir).

    ``env()`` gives the variables a driver process needs; ``apply_env`` sets
    them in a mapping (``os.environ`` for the current process, before its
    first nvmlInit).
    """

    topology: str | os.PathLike[str] = DEFAULT_TOPOLOGY
    fault_log: Path | None = None
    spec: Topology = field(init=False)
    faults: FaultInjector = field(init=False)

    def __post_init__(self) -> None:
        self.spec = load_topology(self.topology)
        if self.fault_log is None:  # a log of this node's own, never a shared one
            state = tempfile.mkdtemp(prefix=f"fakenvml-{self.spec.name}-")
            self.fault_log = Path(state) / f"{self.spec.name}.faults.jsonl"
        self.fault_log = Path(self.fault_log)
        self.faults = FaultInjector(self.spec, self.fault_log)

    def env(self) -> dict[str, str]:
        return {ENV_TOPOLOGY: str(self.spec.path), ENV_FAULTS: str(self.fault_log)}

    def apply_env(self, environ: MutableMapping[str, str] | None = None) -> None:
        (os.environ if environ is None else environ).update(self.env())

    def reset_faults(self) -> None:
        """Start from a clean log.  Only between runs: live readers refold it."""
        assert self.fault_log is not None
        self.fault_log.parent.mkdir(parents=True, exist_ok=True)
        self.fault_log.write_bytes(b"")
        self.faults._bump_generation(0)


def load_into_pynvml() -> ModuleType:
    """Point nvidia-ml-py at the fake library; returns the pynvml module.

    Call before ``pynvml.nvmlInit()``.  Swapping libraries under a pynvml that
    is initialized against another one is refused, since its handles would
    belong to the old library.
    """
    import pynvml

    lib = ctypes.CDLL(library_path())
    with pynvml.libLoadLock:
        current = pynvml.nvmlLib
        swapping = current is not None and getattr(current, "_name", None) != lib._name
        if swapping and pynvml._nvmlLib_refcount > 0:
            raise FakeNvmlError("pynvml is initialized against another NVML library")
        pynvml.nvmlLib = lib
        # pynvml caches function pointers by name: drop any from another library.
        pynvml._nvmlGetFunctionPointer_cache.clear()
    module: ModuleType = pynvml
    return module


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dra_driver.testing.fakenvml",
        description="The fake libnvidia-ml: library path, shipped topologies, fault injection.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("library", help="print the path of the built fake libnvidia-ml.so.1")
    sub.add_parser("topologies", help="list shipped topologies")
    inject = sub.add_parser(
        "inject",
        help="append a fault to a fake node's fault log",
        description="Append a fault record; every process using the fault log sees it.",
    )
    inject.add_argument(
        "--topology",
        help=f"topology name or path (default: ${ENV_TOPOLOGY}, else {DEFAULT_TOPOLOGY})",
    )
    inject.add_argument(
        "--faults",
        type=Path,
        help=f"fault log (default: ${ENV_FAULTS}, else ${ENV_STATE_DIR}/<topology>.faults.jsonl;"
        " with neither, inject refuses: a driver run reads faults only from a log it is given "
        f"the same way, so an injection never leaks into later, unrelated runs)",
    )
    kinds = inject.add_subparsers(dest="kind", required=True)

    def kind(name: str, text: str, gpu_required: bool = True) -> argparse.ArgumentParser:
        p = kinds.add_parser(name, help=text, description=text)
        p.add_argument("--gpu", type=int, required=gpu_required, help="GPU index")
        return p

    p = kind("xid", "an XID error event (optionally scoped to a MIG GI/CI)")
    p.add_argument("--xid", type=int, required=True, help="XID number, e.g. 79, 48, 94")
    p.add_argument("--gi", type=int, help="GPU instance id of the MIG device it hits")
    p.add_argument("--ci", type=int, help="compute instance id (default: the GI's only CI)")
    p.add_argument("--action", type=int, help="recovery action the driver sets with it (565+)")
    kind("lost", "the GPU falls off the bus (GPU_IS_LOST from then on)")
    p = kind("ecc", "ECC errors: SBE (corrected) and/or DBE (uncorrected)")
    p.add_argument("--corrected", type=int, default=0, help="single-bit errors to add")
    p.add_argument("--uncorrected", type=int, default=0, help="double-bit errors to add")
    p = kind("throttle", "set the clocks-event (throttle) reasons")
    p.add_argument(
        "--reasons",
        required=True,
        help=f"mask (0x48) or names ({', '.join(THROTTLE_REASONS)}); 0 clears",
    )
    p = kind("pcie", "set the current PCIe link width")
    p.add_argument("--width", type=int, required=True, help="lanes, e.g. 8")
    p = kind("remap", "row remapping state")
    p.add_argument("--pending", action=argparse.BooleanOptionalAction, help="remap pending")
    p.add_argument("--failure", action=argparse.BooleanOptionalAction, help="remap failed")
    p.add_argument("--corrected-rows", type=int, default=0, help="rows remapped (correctable)")
    p.add_argument("--uncorrected-rows", type=int, default=0, help="rows remapped (uncorr.)")
    p = kind("retired-pages", "set the retired-pages-pending flag (pre-Ampere GPUs)")
    p.add_argument("--clear", action="store_true", help="clear the flag instead")
    p = kind("temperature", "set the GPU temperature")
    p.add_argument("--celsius", type=int, required=True)
    kind("recover", "clear the faults of one GPU (--gpu) or of all", gpu_required=False)
    p = kind("recovery-action", "set the GPU's NVML recovery action (field 230 and its event)")
    p.add_argument(
        "--action",
        type=int,
        required=True,
        help="0 none, 1 GPU reset, 2 node reboot, 3 drain P2P, 4 drain and reset",
    )
    for name, text in (
        ("hang", "NVML calls block until released (every GPU / function unless named)"),
        ("delay", "NVML calls take longer (every GPU / function unless named)"),
        ("release", "lift hangs and delays (all unless --gpu / --fn name some)"),
    ):
        p = kind(name, text, gpu_required=False)
        p.add_argument("--fn", help="NVML function, e.g. nvmlDeviceGetTemperature")
        if name == "delay":
            p.add_argument("--ms", type=int, required=True, help="milliseconds added per call")
    p = kind("fail", "calls of an NVML function answer an error code", gpu_required=False)
    p.add_argument("--fn", required=True, help="NVML function, e.g. nvmlGpuInstanceDestroy")
    p.add_argument("--rc", type=int, required=True, help="nvmlReturn_t, e.g. 23, 19, 4")
    p.add_argument("--count", type=int, default=0, help="calls to fail (0: until released)")
    p = kind("mig-busy", "processes run on a MIG device (destroy answers IN_USE)")
    p.add_argument("--gi", type=int, required=True, help="its GPU instance id")
    p.add_argument("--idle", action="store_true", help="no processes on it any more")

    def layout_command(name: str, text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--topology", help=f"topology name or path (default: ${ENV_TOPOLOGY})")
        p.add_argument("--faults", type=Path, help="fault log (as for inject)")
        return p

    p = layout_command("mig-create", "create a MIG device (GPU + compute instance), as an operator")
    p.add_argument("gpu", type=int, help="GPU index")
    p.add_argument("profile", help='GI profile name ("1g.5gb") or id')
    p.add_argument("--placement", type=int, help="start memory slice (default: the first free)")
    p = layout_command("mig-destroy", "destroy a MIG device (its compute, then GPU instance)")
    p.add_argument("gpu", type=int, help="GPU index")
    p.add_argument("gi", type=int, help="GPU instance id")
    layout_command("mig-list", "print every GPU's MIG devices now (JSON)")
    return parser


def _inject(args: argparse.Namespace) -> None:
    topo = load_topology(args.topology)
    log = args.faults or fault_log_of(topo.name)
    if log is None:
        raise FakeNvmlError(
            f"no fault log: give --faults PATH or set {ENV_FAULTS}, and run the driver with "
            f"the same {ENV_FAULTS} (there is no shared default log)"
        )
    inj = FaultInjector(topo, log)
    k = args.kind
    if k == "xid":
        inj.xid(args.gpu, args.xid, args.gi, args.ci, args.action)
    elif k == "lost":
        inj.lost(args.gpu)
    elif k == "ecc":
        inj.ecc(args.gpu, args.corrected, args.uncorrected)
    elif k == "throttle":
        inj.throttle(args.gpu, parse_throttle_reasons(args.reasons))
    elif k == "pcie":
        inj.pcie(args.gpu, args.width)
    elif k == "remap":
        inj.remap(args.gpu, args.pending, args.failure, args.corrected_rows, args.uncorrected_rows)
    elif k == "retired-pages":
        inj.retired_pages(args.gpu, pending=not args.clear)
    elif k == "temperature":
        inj.temperature(args.gpu, args.celsius)
    elif k == "recover":
        inj.recover(args.gpu)
    elif k == "recovery-action":
        inj.recovery_action(args.gpu, args.action)
    elif k == "hang":
        inj.hang(args.gpu, args.fn)
    elif k == "delay":
        inj.delay(args.ms, args.gpu, args.fn)
    elif k == "release":
        inj.release(args.gpu, args.fn)
    elif k == "fail":
        inj.fail(args.fn, args.rc, args.gpu, args.count)
    elif k == "mig-busy":
        inj.mig_busy(args.gpu, args.gi, busy=not args.idle)


def _layout_target(args: argparse.Namespace) -> tuple[Topology, Path]:
    topo = load_topology(args.topology)
    log = args.faults or fault_log_of(topo.name)
    if log is None:
        raise FakeNvmlError(
            f"no fault log: give --faults PATH or set {ENV_FAULTS} (a MIG change lives in the "
            "log every process of the node folds)"
        )
    return topo, log


def _with_library(topo: Topology, log: Path) -> Any:
    """nvidia-ml-py on the fake, initialised for this node (this process only)."""
    os.environ[ENV_TOPOLOGY] = str(topo.path)
    os.environ[ENV_FAULTS] = str(log)
    nvml = load_into_pynvml()
    nvml.nvmlInit()
    return nvml


def _nvml_failure(exc: Exception, what: str) -> FakeNvmlError:
    return FakeNvmlError(f"{what}: {exc} (nvml rc={getattr(exc, 'value', '?')})")


def _mig_create(args: argparse.Namespace) -> dict[str, Any]:
    topo, log = _layout_target(args)
    profile_id = profile_id_of(topo, args.gpu, args.profile)
    nvml = _with_library(topo, log)
    try:
        dev = nvml.nvmlDeviceGetHandleByIndex(args.gpu)
        try:
            if args.placement is None:
                gi = nvml.nvmlDeviceCreateGpuInstance(dev, profile_id)
            else:
                placement = nvml.c_nvmlGpuInstancePlacement_t()
                placement.start = args.placement
                placement.size = _placement_size(topo, args.gpu, profile_id)
                # nvidia-ml-py passes the placement as given: it must be a pointer.
                gi = nvml.nvmlDeviceCreateGpuInstanceWithPlacement(
                    dev, profile_id, ctypes.byref(placement)
                )
        except nvml.NVMLError as exc:
            raise _nvml_failure(exc, f"cannot create a GPU instance on GPU {args.gpu}") from exc
        gi_info = nvml.nvmlGpuInstanceGetInfo(gi)
        try:
            slices = _slice_count(topo, args.gpu, profile_id)
            ci_profile = nvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(
                gi, _CI_PROFILE_BY_SLICES[slices], 0
            )
            ci = nvml.nvmlGpuInstanceCreateComputeInstance(gi, ci_profile.id)
        except nvml.NVMLError as exc:
            nvml.nvmlGpuInstanceDestroy(gi)
            raise _nvml_failure(exc, "cannot create the compute instance") from exc
        ci_info = nvml.nvmlComputeInstanceGetInfo(ci)
        uuid = ""
        for i in range(nvml.nvmlDeviceGetMaxMigDeviceCount(dev)):
            try:
                mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(dev, i)
            except nvml.NVMLError:
                continue
            if nvml.nvmlDeviceGetGpuInstanceId(mig) == gi_info.id:
                uuid = _text(nvml.nvmlDeviceGetUUID(mig))
        return {
            "profile_id": profile_id,
            "placement_start": gi_info.placement.start,
            "gi_id": gi_info.id,
            "ci_id": ci_info.id,
            "uuid": uuid,
        }
    finally:
        nvml.nvmlShutdown()


def _mig_destroy(args: argparse.Namespace) -> dict[str, Any]:
    topo, log = _layout_target(args)
    nvml = _with_library(topo, log)
    try:
        dev = nvml.nvmlDeviceGetHandleByIndex(args.gpu)
        try:
            gi = nvml.nvmlDeviceGetGpuInstanceById(dev, args.gi)
        except nvml.NVMLError as exc:
            raise _nvml_failure(exc, f"GPU {args.gpu} has no GPU instance {args.gi}") from exc
        try:
            for profile in range(_CI_PROFILE_COUNT):
                cis = (nvml.c_nvmlComputeInstance_t * 8)()
                count = ctypes.c_uint(len(cis))
                try:
                    nvml.nvmlGpuInstanceGetComputeInstances(gi, profile, cis, ctypes.byref(count))
                except nvml.NVMLError:
                    continue
                for ci in cis[: count.value]:
                    nvml.nvmlComputeInstanceDestroy(ci)
            nvml.nvmlGpuInstanceDestroy(gi)
        except nvml.NVMLError as exc:
            raise _nvml_failure(exc, f"cannot destroy GPU instance {args.gi}") from exc
        return {"gpu": args.gpu, "gi_id": args.gi}
    finally:
        nvml.nvmlShutdown()


# NVML_COMPUTE_INSTANCE_PROFILE_* by slice count (nvml.h), as nvidia-smi's default CI.
_CI_PROFILE_BY_SLICES = {1: 0, 2: 1, 3: 2, 4: 3, 7: 4, 8: 5, 6: 6}
_CI_PROFILE_COUNT = 9


def _profile_raw(topo: Topology, gpu: int, profile_id: int) -> Mapping[str, Any]:
    model = topo.raw["models"][topo.gpu(gpu).model]
    for p in model["mig"]["profiles"]:
        if int(p["id"]) == profile_id:
            return dict(p)
    raise FakeNvmlError(f"GPU {gpu} has no profile id {profile_id}")


def _placement_size(topo: Topology, gpu: int, profile_id: int) -> int:
    return int(_profile_raw(topo, gpu, profile_id)["placement_size"])


def _slice_count(topo: Topology, gpu: int, profile_id: int) -> int:
    return int(_profile_raw(topo, gpu, profile_id)["slices"])


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        if args.command == "library":
            print(library_path())
        elif args.command == "topologies":
            for name in topology_names():
                topo = load_topology(name)
                desc = topo.raw.get("description", "")
                print(f"{name}\t{len(topo.gpus)} GPUs\tdriver {topo.driver_version}\t{desc}")
        elif args.command == "mig-create":
            print(json.dumps(_mig_create(args)))
        elif args.command == "mig-destroy":
            print(json.dumps(_mig_destroy(args)))
        elif args.command == "mig-list":
            topo, log = _layout_target(args)
            layout = current_migs(topo, log)
            print(json.dumps({str(g): [asdict(m) for m in migs] for g, migs in layout.items()}))
        else:
            _inject(args)
    except FakeNvmlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
