"""Health policy: NVML signals -> per-device conditions -> one verdict per device.

Pure and deterministic: no threads, no NVML, no logging; time comes from an
injectable monotonic clock. The monitor (monitor.py) feeds it events and
samples and logs the notes it hands back.

Model. Each device carries a set of active *conditions*, keyed by a short
reason ("xid-79", "gpu-lost", "pcie-x8-of-x16", ...), each DEGRADED or
UNHEALTHY. The verdict is the worst severity; its message lists every active
condition, most severe first and, within a severity, oldest first (so the
verdict's reason, which becomes the taint value, does not change when a
second problem joins the first).

Blast radius. A MIG-scoped event (GI/CI ids other than 0xFFFFFFFF) hits only
the MIG device with that (parent UUID, GI, CI); an event naming a GI or CI we
do not know widens to the whole GPU (and says so). GPU-wide events, polled
signals and a lost GPU hit the full-GPU device and all of its MIG children,
never another GPU. (NVIDIA's driver marks every device on the node for a
lost GPU; its k8s-device-plugin#1929 shows the cost of getting this wrong.)

Three kinds of condition, by how they clear:

* POLLED: recomputed from every health sample (row-remap failure/pending,
  retired pages pending, HW slowdown / thermal / power-brake clock reasons,
  a PCIe link below its maximum width, a temperature at or above the
  threshold). It disappears with its signal. A reading NVML answers
  NOT_SUPPORTED is an absent signal; a reading that fails otherwise keeps
  that signal's previous conditions (no news is not good news).
* UNTIL_ANSWERS: the GPU is lost (event, wait error, or a sample with
  GPU_IS_LOST) or needs a reset (RESET_REQUIRED). It clears at the first
  successful sample *started after* it was last seen, so a sample already in
  flight when the GPU fell off cannot clear it.
* HELD (sticky with expiry): XIDs, double-bit ECC events, a rise of the
  volatile uncorrected ECC count, a recovery-action event. These are edges,
  not levels: nothing tells us when the fault is over. Last-event-wins
  (clear on the next quiet poll) would let a GPU that throws an XID every
  minute look healthy most of the time; sticky-forever (NVIDIA today, their
  issue #1455) leaves a device tainted until someone restarts the plugin
  even after a GPU reset fixed it. So a held condition clears only after
  `hold_seconds` (default 10 minutes) without a repeat AND once the GPU has
  answered a health sample successfully after the last occurrence; time the
  GPU spent not answering (lost, needing a reset) does not count towards the
  hold, so a GPU back from the dead is watched for a full hold first. A
  repeat restarts the hold and is counted in the message. A recovery-action event
  with NONE clears the GPU's recovery-action conditions at once: that is
  NVML itself saying the action is done.

Recovery. Every condition says what it needs (recovery.py): none, GPU reset,
node reboot, drain P2P, drain and reset. NVML's recovery action (field
NVML_FI_DEV_GET_GPU_RECOVERY_ACTION read with every sample, or the
recovery-action event; drivers 565+) decides it where the driver has one;
otherwise XIDs are classified by NVIDIA's XID catalogue and the other
conditions by what their signal documents. Once a non-NONE action was seen
for a held condition, the condition clears as soon as a sample of the GPU
answers with the action back at NONE: NVML saying the fault is handled
replaces waiting out the hold. Without such a driver the hold applies.

Never healthy by default. A GPU whose NVML calls overrun their deadline is
*unresponsive* (set by the monitor, which owns the clocks and threads): its
devices read UNKNOWN ("NVML has not answered for N s") until a call on it
returns, unless a known UNHEALTHY condition already says more. When the event
path or the poller stalls, every device reads UNKNOWN.

Notes (e.g. "not monitored for NVML events") are per-GPU remarks appended to
the message without changing the verdict: a GPU whose driver cannot deliver
XID events is not itself faulty, and calling it DEGRADED forever would only
teach operators to ignore DEGRADED.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum

from ..inventory import Inventory
from ..nvml.errors import ERROR_GPU_IS_LOST, ERROR_RESET_REQUIRED, SUCCESS, is_unsupported
from ..nvml.types import (
    EVENT_DOUBLE_BIT_ECC,
    EVENT_GPU_RECOVERY_ACTION,
    EVENT_GPU_UNAVAILABLE,
    EVENT_SINGLE_BIT_ECC,
    EVENT_XID_CRITICAL,
    INSTANCE_ID_ALL,
    HealthSample,
    NvmlEvent,
    Reading,
)
from . import recovery
from .board import DeviceHealth, Health

# XIDs that report application faults (bad kernels, page faults of one
# process, preemption cleanup), not a sick GPU: NVIDIA's device plugin and DRA
# driver skip the same set.
DEFAULT_IGNORED_XIDS: tuple[int, ...] = (13, 31, 43, 45, 68, 109)
DEFAULT_HOLD_SECONDS = 600.0
DEFAULT_TEMPERATURE_THRESHOLD_C = 90

# Human text for the XIDs operators meet most (NVIDIA's XID catalog).
XID_DESCRIPTIONS: dict[int, str] = {
    13: "graphics engine exception",
    31: "GPU memory page fault",
    43: "GPU stopped processing",
    45: "preemptive cleanup after earlier errors",
    48: "double-bit ECC error",
    61: "internal micro-controller breakpoint/warning",
    62: "internal micro-controller halt",
    63: "ECC page retirement or row remapping recorded",
    64: "ECC page retirement or row remapping recording failure",
    68: "video processor exception",
    74: "NVLink error",
    79: "GPU has fallen off the bus",
    92: "high single-bit ECC error rate",
    94: "contained ECC error",
    95: "uncontained ECC error",
    109: "context switch timeout",
    119: "GSP RPC timeout",
    120: "GSP error",
}

# nvmlDeviceGpuRecoveryAction_t (nvml.h), as reason suffixes.
RECOVERY_ACTION_NONE = 0
RECOVERY_ACTIONS: dict[int, str] = {
    1: "gpu-reset",
    2: "node-reboot",
    3: "drain-p2p",
    4: "drain-and-reset",
    5: "recover-imex-domain",
    6: "bus-reset",
    7: "system-reboot",
}
RECOVERY_ACTION_PREFIX = "recovery-action-"

# nvmlClocksEventReason* bits that mean the hardware is protecting itself.
# SW power cap, idle, application clocks, sync boost and SW thermal slowdown
# are normal operation and deliberately not listed.
CLOCK_REASONS: tuple[tuple[int, str, str], ...] = (
    (0x8, "hw-slowdown", "hardware slowdown (clocks cut by half or more)"),
    (0x40, "hw-thermal-slowdown", "hardware thermal slowdown: the GPU is too hot"),
    (0x80, "hw-power-brake", "hardware power brake slowdown (external power brake)"),
)

REASON_GPU_LOST = "gpu-lost"
REASON_RESET_REQUIRED = "reset-required"
REASON_ECC_DBE = "ecc-dbe"
REASON_ECC_UNCORRECTED = "ecc-uncorrected"
REASON_REMAP_FAILURE = "remap-failure"
REASON_REMAP_PENDING = "remap-pending"
REASON_RETIRED_PAGES = "retired-pages-pending"
REASON_THERMAL = "thermal"
NOTE_UNMONITORED = "unmonitored"
REASON_UNRESPONSIVE = "nvml-unresponsive"  # Unknown: a GPU's NVML calls overran
REASON_STALLED = "health-checks-stalled"  # Unknown: the event thread or poller stopped
SIGNAL_RECOVERY = "recovery-action"

# What the conditions that are not XIDs need, by reason (fallback when NVML has no action).
REASON_RECOVERY: dict[str, str] = {
    "gpu-lost": recovery.NODE_REBOOT,  # XID 79's bucket: RESTART_BM
    "reset-required": recovery.GPU_RESET,
    "ecc-dbe": recovery.GPU_RESET,  # XID 48: "a GPU reset or node reboot is needed"
    "ecc-uncorrected": recovery.GPU_RESET,
    "remap-failure": recovery.GPU_RESET,  # XID 64's bucket: RESET_GPU
    "remap-pending": recovery.GPU_RESET,
    "retired-pages-pending": recovery.GPU_RESET,
}


class Kind(Enum):
    """How a condition clears (see the module docstring)."""

    HELD = "held"
    POLLED = "polled"
    UNTIL_ANSWERS = "until-answers"


_RANK = {Health.UNHEALTHY: 2, Health.DEGRADED: 1}


@dataclass(frozen=True)
class Condition:
    """One active problem of one device."""

    reason: str
    severity: Health  # DEGRADED or UNHEALTHY
    message: str
    kind: Kind
    since: float  # policy clock: first seen
    last_seen: float  # policy clock: latest occurrence (holds count from here)
    count: int = 1
    signal: str = ""  # POLLED only: which sampled signal produced it
    recovery: str = recovery.NONE  # what it needs (recovery.py classes)
    # HELD only: NVML reported a recovery action (not NONE) since its last occurrence,
    # so NONE again means the driver handled it.
    action_seen: bool = False

    def describe(self) -> str:
        repeat = f" ({self.count} times)" if self.count > 1 else ""
        return (
            f"{self.reason} ({self.severity.value.lower()}): {self.message}{repeat} "
            f"[{recovery.describe(self.recovery)}]"
        )


@dataclass(frozen=True)
class PolicyConfig:
    hold_seconds: float = DEFAULT_HOLD_SECONDS
    ignored_xids: frozenset[int] = frozenset(DEFAULT_IGNORED_XIDS)
    temperature_threshold_c: int = DEFAULT_TEMPERATURE_THRESHOLD_C  # <= 0: off

    def __post_init__(self) -> None:
        if self.hold_seconds < 0:
            raise ValueError(f"hold_seconds must not be negative, got {self.hold_seconds}")


@dataclass(frozen=True)
class Note:
    """Something the monitor should log: level is a logging level."""

    level: int
    text: str


@dataclass
class Outcome:
    """What one input did: devices whose verdict may have changed, and notes to log."""

    changed: set[str] = field(default_factory=set)
    notes: list[Note] = field(default_factory=list)

    def note(self, level: int, text: str) -> None:
        self.notes.append(Note(level, text))

    def merge(self, other: Outcome) -> None:
        self.changed |= other.changed
        self.notes.extend(other.notes)


@dataclass
class _Gpu:
    """What the policy knows about one physical GPU."""

    index: int
    uuid: str
    full_name: str
    devices: tuple[str, ...]  # the full-GPU name and every MIG child
    migs: dict[tuple[int, int], str]  # (GI, CI) -> MIG device name
    last_ok_at: float | None = None  # start of the latest sample that answered SUCCESS
    last_rc: int | None = None  # rc of the latest sample (None: none yet)
    answering_since: float | None = None  # start of the first good sample after a bad one
    ecc_uncorrected: int | None = None  # previous volatile count
    logged_errors: set[tuple[str, int]] = field(default_factory=set)
    note: str = ""
    action: int | None = None  # latest NVML recovery action (None: driver has not said)
    unresponsive: tuple[float, str] | None = None  # (policy-clock since, what is hung)
    # The latest sample applied in full, kept only while applying an equal sample
    # again would change nothing: it answered SUCCESS, no condition waits for the
    # GPU to answer, and no event has touched the GPU's conditions since.
    settled: HealthSample | None = None


class HealthPolicy:
    """Conditions and verdicts for every device of one inventory. Not thread-safe."""

    def __init__(
        self,
        inventory: Inventory,
        config: PolicyConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config or PolicyConfig()
        self._clock = clock
        self._gpus: dict[str, _Gpu] = {}
        self._by_index: dict[int, _Gpu] = {}
        self._conds: dict[str, dict[str, Condition]] = {}
        self._gpu_by_device: dict[str, _Gpu] = {}
        self._stalled: dict[str, tuple[float, str]] = {}  # key -> (since, what stopped)
        self._held: set[str] = set()  # devices that may have HELD conditions (expire's work)
        for gpu in inventory.gpus:
            migs = {
                (d.mig.gpu_instance_id, d.mig.compute_instance_id): d.name
                for d in gpu.mig_devices
                if d.mig is not None
            }
            state = _Gpu(
                index=gpu.index,
                uuid=gpu.uuid,
                full_name=gpu.name,
                devices=(gpu.name, *(d.name for d in gpu.mig_devices)),
                migs=migs,
            )
            self._gpus[gpu.uuid] = state
            self._by_index[gpu.index] = state
            for name in state.devices:
                self._conds[name] = {}
                self._gpu_by_device[name] = state

    # -- the MIG layout changing (dynamic MIG) -----------------------------------------

    def add_mig(self, gpu_uuid: str, name: str, gi: int, ci: int) -> None:
        """A MIG device created at prepare: its GI/CI-scoped events now hit it."""
        gpu = self._gpus.get(gpu_uuid)
        if gpu is None:
            return
        gpu.migs = {k: v for k, v in gpu.migs.items() if v != name}
        gpu.migs[(gi, ci)] = name
        if name not in gpu.devices:
            gpu.devices = (*gpu.devices, name)
        self._conds.setdefault(name, {})
        self._gpu_by_device[name] = gpu

    def remove_mig(self, gpu_uuid: str, name: str) -> None:
        """A MIG device destroyed at unprepare: it, and its conditions, are gone."""
        gpu = self._gpus.get(gpu_uuid)
        if gpu is None:
            return
        gpu.migs = {k: v for k, v in gpu.migs.items() if v != name}
        gpu.devices = tuple(d for d in gpu.devices if d != name)
        self._conds.pop(name, None)
        self._gpu_by_device.pop(name, None)

    # -- reading -----------------------------------------------------------------------

    @property
    def devices(self) -> list[str]:
        return sorted(self._conds)

    def conditions(self, device: str) -> list[Condition]:
        """Active conditions of a device, most severe first, then oldest first."""
        return sorted(
            self._conds.get(device, {}).values(),
            key=lambda c: (-_RANK[c.severity], c.since, c.reason),
        )

    def verdict(self, device: str) -> DeviceHealth:
        conds = self.conditions(device)
        gpu = self._gpu_by_device.get(device)
        note = gpu.note if gpu is not None else ""
        silent = self._silence(gpu)
        parts = [c.describe() for c in conds]
        if note:
            parts.append(note)
        if conds and conds[0].severity is Health.UNHEALTHY:
            # Known trouble says more than "no answer"; the silence rides along.
            needs = recovery.worst([c.recovery for c in conds if c.severity is Health.UNHEALTHY])
            text = "; ".join(parts + ([silent[1]] if silent else []))
            return DeviceHealth(device, Health.UNHEALTHY, text, conds[0].reason, recovery=needs)
        if silent is not None:
            reason, text = silent
            known = f"; last known: {'; '.join(parts)}" if parts else ""
            return DeviceHealth(device, Health.UNKNOWN, text + known, reason)
        if not conds:
            return DeviceHealth(device, Health.HEALTHY, note)
        needs = recovery.worst([c.recovery for c in conds])
        return DeviceHealth(
            device, conds[0].severity, "; ".join(parts), conds[0].reason, recovery=needs
        )

    def _silence(self, gpu: _Gpu | None) -> tuple[str, str] | None:
        """(reason, text) when this GPU's health cannot be vouched for right now."""
        now = self._clock()
        if self._stalled:
            since, what = min(self._stalled.values())
            return REASON_STALLED, f"health checks stalled: {what} for {now - since:.0f} s"
        if gpu is not None and gpu.unresponsive is not None:
            since, what = gpu.unresponsive
            return REASON_UNRESPONSIVE, f"NVML has not answered for {now - since:.0f} s ({what})"
        return None

    # -- silence (set by the monitor's deadlines and watchdog) -----------------------

    def set_unresponsive(self, gpu_uuid: str, since: float, what: str, index: int = -1) -> Outcome:
        """The GPU's NVML call started at `since` (policy clock) has not returned in time.

        Called again while it stays hung, to refresh "for N s" in the message.
        """
        out = Outcome()
        gpu = self._find_gpu(gpu_uuid, index)
        if gpu is None:
            return out
        if gpu.unresponsive is None:
            out.note(logging.WARNING, f"{gpu.full_name}: NVML has not answered ({what})")
        gpu.unresponsive = (since, what)
        out.changed.update(gpu.devices)
        return out

    def set_answered(self, gpu_uuid: str, index: int = -1) -> Outcome:
        """A call on the GPU returned (whatever it said): it is no longer unresponsive."""
        out = Outcome()
        gpu = self._find_gpu(gpu_uuid, index)
        if gpu is not None and gpu.unresponsive is not None:
            since, what = gpu.unresponsive
            gpu.unresponsive = None
            out.changed.update(gpu.devices)
            out.note(
                logging.INFO,
                f"{gpu.full_name}: NVML answers again ({what} returned after "
                f"{self._clock() - since:.1f} s)",
            )
        return out

    def unresponsive(self, gpu_uuid: str) -> tuple[float, str] | None:
        gpu = self._gpus.get(gpu_uuid)
        return gpu.unresponsive if gpu is not None else None

    def set_stalled(self, key: str, since: float, what: str) -> Outcome:
        """A health producer (key: "events", "poll") made no progress since `since`."""
        out = Outcome()
        if key not in self._stalled:
            out.note(logging.ERROR, f"health checks stalled: {what}; every device is Unknown")
        self._stalled[key] = (since, what)
        out.changed.update(self._conds)
        return out

    def clear_stalled(self, key: str) -> Outcome:
        out = Outcome()
        if self._stalled.pop(key, None) is not None:
            out.changed.update(self._conds)
            out.note(logging.INFO, f"health checks resumed ({key})")
        return out

    def verdicts(self, devices: Iterable[str] | None = None) -> list[DeviceHealth]:
        names = sorted(self._conds if devices is None else set(devices) & set(self._conds))
        return [self.verdict(n) for n in names]

    # -- re-enumeration ----------------------------------------------------------------

    def follow(self, inventory: Inventory) -> set[str]:
        """Take a re-enumerated inventory; returns the device names that are new.

        A GPU keeps everything known about it (its conditions, answers, ECC
        baseline, notes) across the change; only its device list and (GI, CI)
        map follow the new layout. A MIG device that keeps its name keeps its
        conditions; a destroyed one's are dropped; a new one starts clean. GPUs
        not in the new inventory are forgotten (the caller keeps a lost GPU in
        the inventory it hands over).
        """
        gpus: dict[str, _Gpu] = {}
        by_index: dict[int, _Gpu] = {}
        conds: dict[str, dict[str, Condition]] = {}
        by_device: dict[str, _Gpu] = {}
        for gpu in inventory.gpus:
            migs = {
                (d.mig.gpu_instance_id, d.mig.compute_instance_id): d.name
                for d in gpu.mig_devices
                if d.mig is not None
            }
            devices = (gpu.name, *(d.name for d in gpu.mig_devices))
            old = self._gpus.get(gpu.uuid)
            if old is None:
                state = _Gpu(gpu.index, gpu.uuid, gpu.name, devices, migs)
            else:
                state = replace(
                    old, index=gpu.index, full_name=gpu.name, devices=devices, migs=migs
                )
            gpus[gpu.uuid] = state
            by_index[gpu.index] = state
            for name in devices:
                conds[name] = self._conds.get(name, {}) if old is not None else {}
                by_device[name] = state
        new = set(conds) - set(self._conds)
        self._gpus, self._by_index, self._conds, self._gpu_by_device = (
            gpus,
            by_index,
            conds,
            by_device,
        )
        return new

    # -- events ------------------------------------------------------------------------

    def on_event(self, event: NvmlEvent) -> Outcome:
        """One event out of nvmlEventSetWait."""
        out = Outcome()
        gpu = self._find_gpu(event.uuid, event.gpu_index)
        if gpu is None:
            out.note(
                logging.WARNING,
                f"event {event.event_type:#x} (data {event.event_data}) for an unknown GPU "
                f"(index {event.gpu_index}, uuid {event.uuid or '?'}): ignored",
            )
            return out
        now = self._clock()
        kind = event.event_type
        if kind & EVENT_XID_CRITICAL:
            self._on_xid(gpu, event, now, out)
        elif kind & EVENT_DOUBLE_BIT_ECC:
            self._raise(
                gpu.devices,
                REASON_ECC_DBE,
                Health.UNHEALTHY,
                "double-bit (uncorrectable) ECC error event",
                Kind.HELD,
                now,
                out,
                recovery=self._needs(gpu, REASON_RECOVERY[REASON_ECC_DBE]),
            )
        elif kind & EVENT_GPU_UNAVAILABLE:
            self._lost(gpu, now, out, "NVML reported the GPU unavailable")
        elif kind & EVENT_GPU_RECOVERY_ACTION:
            self._on_recovery_action(gpu, event.event_data, now, out)
        elif kind & EVENT_SINGLE_BIT_ECC:
            out.note(logging.DEBUG, f"{gpu.full_name}: single-bit ECC event (corrected)")
        else:
            out.note(logging.DEBUG, f"{gpu.full_name}: event {kind:#x} ignored")
        return out

    def _on_xid(self, gpu: _Gpu, event: NvmlEvent, now: float, out: Outcome) -> None:
        xid = event.event_data
        text = f"XID {xid}" + (f" ({XID_DESCRIPTIONS[xid]})" if xid in XID_DESCRIPTIONS else "")
        targets, scope = self._targets(gpu, event, out)
        if xid in self.config.ignored_xids:
            out.note(logging.INFO, f"{scope}: {text} ignored (an application error, not the GPU)")
            return
        needs = self._needs(gpu, recovery.for_xid(xid))
        out.note(logging.WARNING, f"{scope}: {text}; {recovery.describe(needs)}")
        self._raise(
            targets, f"xid-{xid}", Health.UNHEALTHY, text, Kind.HELD, now, out, recovery=needs
        )

    def _targets(self, gpu: _Gpu, event: NvmlEvent, out: Outcome) -> tuple[tuple[str, ...], str]:
        """The devices an event hits, and a description of where it landed."""
        gi, ci = event.gpu_instance_id, event.compute_instance_id
        if gi == INSTANCE_ID_ALL:
            return gpu.devices, f"{gpu.full_name} (whole GPU)"
        hit = tuple(
            sorted(
                name
                for (g, c), name in gpu.migs.items()
                if g == gi and (ci == INSTANCE_ID_ALL or c == ci)
            )
        )
        if hit:
            return hit, ", ".join(hit)
        out.note(
            logging.WARNING,
            f"{gpu.full_name}: event names GPU instance {gi} compute instance {ci}, which no "
            "known MIG device has; applying it to the whole GPU",
        )
        return gpu.devices, f"{gpu.full_name} (whole GPU, unknown GI {gi} CI {ci})"

    def _needs(self, gpu: _Gpu, fallback: str) -> str:
        """NVML's own action for the GPU when it has one, else the fallback class."""
        if gpu.action is not None and gpu.action != RECOVERY_ACTION_NONE:
            return recovery.for_action(gpu.action)
        return fallback

    def _on_recovery_action(self, gpu: _Gpu, action: int, now: float, out: Outcome) -> None:
        gpu.action = action
        if action == RECOVERY_ACTION_NONE:
            gpu.settled = None
            for name in gpu.devices:
                conds = self._conds[name]
                for reason in [r for r in conds if r.startswith(RECOVERY_ACTION_PREFIX)]:
                    del conds[reason]
                    out.changed.add(name)
            if out.changed:
                out.note(logging.INFO, f"{gpu.full_name}: NVML reports no recovery action needed")
            return
        name = RECOVERY_ACTIONS.get(action, str(action))
        text = f"NVML asks for a recovery action: {name.replace('-', ' ')}"
        out.note(logging.WARNING, f"{gpu.full_name}: {text}")
        self._action_seen(gpu, action, now, out)
        self._raise(
            gpu.devices,
            RECOVERY_ACTION_PREFIX + name,
            Health.UNHEALTHY,
            text,
            Kind.HELD,
            now,
            out,
            recovery=recovery.for_action(action),
        )

    def _action_seen(self, gpu: _Gpu, action: int, at: float, out: Outcome) -> None:
        """NVML reports action (not NONE): held conditions up to `at` are bound to it."""
        needs = recovery.for_action(action)
        for name in gpu.devices:
            conds = self._conds[name]
            for reason, c in list(conds.items()):
                if c.kind is Kind.HELD and c.last_seen <= at:
                    new = replace(c, recovery=needs, action_seen=True)
                    if new != c:
                        conds[reason] = new
                        out.changed.add(name)

    def on_wait_lost(self, gpu_uuid: str, gpu_index: int = -1) -> Outcome:
        """A GPU known to be lost by other means (an attributed wait error)."""
        out = Outcome()
        gpu = self._find_gpu(gpu_uuid, gpu_index)
        if gpu is not None:
            self._lost(gpu, self._clock(), out, "NVML reports the GPU lost (GPU_IS_LOST)")
        return out

    def _lost(self, gpu: _Gpu, now: float, out: Outcome, text: str) -> None:
        self._raise(
            gpu.devices,
            REASON_GPU_LOST,
            Health.UNHEALTHY,
            text,
            Kind.UNTIL_ANSWERS,
            now,
            out,
            recovery=self._needs(gpu, REASON_RECOVERY[REASON_GPU_LOST]),
        )

    # -- samples -----------------------------------------------------------------------

    def on_samples(self, samples: Sequence[HealthSample], sampled_at: float) -> Outcome:
        """Apply one health sample of every GPU; sampled_at = policy clock when it started."""
        out = Outcome()
        for sample in samples:
            gpu = self._find_gpu(sample.uuid, sample.gpu_index)
            if gpu is None:
                out.note(logging.DEBUG, f"sample of unknown GPU {sample.gpu_index}: ignored")
                continue
            self._on_sample(gpu, sample, sampled_at, out)
        out.merge(self.expire())
        return out

    def _on_sample(self, gpu: _Gpu, s: HealthSample, sampled_at: float, out: Outcome) -> None:
        if gpu.unresponsive is not None:  # it answered, whatever it said
            out.merge(self.set_answered(gpu.uuid))
        settled = gpu.settled
        if settled is not None and (s is settled or s == settled):
            # The steady state: the same readings as last time change no condition.
            # Only the time of the latest good answer moves (held conditions expire by it).
            if gpu.last_ok_at is None or sampled_at > gpu.last_ok_at:
                gpu.last_ok_at = sampled_at
            return
        gpu.settled = None
        if s.rc != SUCCESS:
            gpu.answering_since = None
        elif gpu.last_rc != SUCCESS or gpu.answering_since is None:
            gpu.answering_since = sampled_at
        gpu.last_rc = s.rc
        now = self._clock()
        if s.rc == ERROR_GPU_IS_LOST:
            self._lost(gpu, now, out, "NVML reports the GPU lost (GPU_IS_LOST)")
            self._set_polled(gpu, {}, keep=set(), now=now, out=out)
            return
        if s.rc == ERROR_RESET_REQUIRED:
            self._raise(
                gpu.devices,
                REASON_RESET_REQUIRED,
                Health.UNHEALTHY,
                "NVML reports that the GPU needs a reset (RESET_REQUIRED)",
                Kind.UNTIL_ANSWERS,
                now,
                out,
                recovery=self._needs(gpu, recovery.GPU_RESET),
            )
            return
        if s.rc != SUCCESS:
            self._log_once(gpu, "sample", s.rc, out, "health sample failed")
            return
        gpu.last_ok_at = sampled_at if gpu.last_ok_at is None else max(gpu.last_ok_at, sampled_at)
        waiting = False  # an UNTIL_ANSWERS condition raised after this sample started
        for name in gpu.devices:  # the GPU answers: lost / reset-required are over
            conds = self._conds[name]
            for reason, c in list(conds.items()):
                if c.kind is Kind.UNTIL_ANSWERS:
                    if sampled_at >= c.last_seen:
                        del conds[reason]
                        out.changed.add(name)
                        out.note(
                            logging.INFO, f"{name}: {reason} cleared: the GPU answers NVML again"
                        )
                    else:
                        waiting = True
        wanted: dict[str, tuple[str, Health, str]] = {}  # reason -> (signal, severity, text)
        keep: set[str] = set()  # signals whose readings failed: previous conditions stay
        self._sample_remap(gpu, s, wanted, keep, out)
        self._sample_retired_pages(gpu, s, wanted, keep, out)
        self._sample_clocks(gpu, s, wanted, keep, out)
        self._sample_pcie(gpu, s, wanted, keep, out)
        self._sample_temperature(gpu, s, wanted, keep, out)
        self._sample_recovery_action(gpu, s, sampled_at, wanted, keep, out)
        self._set_polled(gpu, wanted, keep, now, out)
        self._sample_ecc(gpu, s, now, out)
        if not waiting:
            gpu.settled = s

    def _sample_recovery_action(
        self,
        gpu: _Gpu,
        s: HealthSample,
        sampled_at: float,
        wanted: dict[str, tuple[str, Health, str]],
        keep: set[str],
        out: Outcome,
    ) -> None:
        """The driver's recovery action, a level: it raises, binds and clears conditions."""
        r = s.recovery_action
        if not self._usable(gpu, SIGNAL_RECOVERY, (r,), keep, out):
            return  # an older driver: classes stay the fallback's, holds apply
        gpu.action = r.value
        if r.value != RECOVERY_ACTION_NONE:
            name = RECOVERY_ACTIONS.get(r.value, str(r.value))
            wanted[RECOVERY_ACTION_PREFIX + name] = (
                SIGNAL_RECOVERY,
                Health.UNHEALTHY,
                f"NVML asks for a recovery action: {name.replace('-', ' ')}",
            )
            self._action_seen(gpu, r.value, sampled_at, out)
            return
        # NONE while the GPU answers: what NVML had asked for is done.
        for name in gpu.devices:
            conds = self._conds[name]
            for reason, c in list(conds.items()):
                done = c.kind is Kind.HELD and c.last_seen <= sampled_at
                if done and (c.action_seen or reason.startswith(RECOVERY_ACTION_PREFIX)):
                    del conds[reason]
                    out.changed.add(name)
                    out.note(
                        logging.INFO,
                        f"{name}: {reason} cleared: NVML reports no recovery action needed "
                        "any more and the GPU answers",
                    )

    def _usable(
        self, gpu: _Gpu, signal: str, readings: Sequence[Reading], keep: set[str], out: Outcome
    ) -> bool:
        """True when every reading answered; unsupported is quietly absent, errors keep."""
        for r in readings:
            if r.ok:
                continue
            if not is_unsupported(r.rc):
                keep.add(signal)
                self._log_once(gpu, signal, r.rc, out, f"reading {signal} failed")
            return False
        return True

    def _sample_remap(
        self,
        gpu: _Gpu,
        s: HealthSample,
        wanted: dict[str, tuple[str, Health, str]],
        keep: set[str],
        out: Outcome,
    ) -> None:
        failure, pending = s.remapped_rows_failure, s.remapped_rows_pending
        if not self._usable(gpu, "remap", (failure, pending), keep, out):
            return
        if failure.value:
            wanted[REASON_REMAP_FAILURE] = (
                "remap",
                Health.UNHEALTHY,
                "row remapping failed: memory errors can no longer be repaired",
            )
        if pending.value:
            wanted[REASON_REMAP_PENDING] = (
                "remap",
                Health.DEGRADED,
                "row remapping pending: needs a GPU reset",
            )

    def _sample_retired_pages(
        self,
        gpu: _Gpu,
        s: HealthSample,
        wanted: dict[str, tuple[str, Health, str]],
        keep: set[str],
        out: Outcome,
    ) -> None:
        r = s.retired_pages_pending
        if self._usable(gpu, "retired-pages", (r,), keep, out) and r.value:
            wanted[REASON_RETIRED_PAGES] = (
                "retired-pages",
                Health.DEGRADED,
                "pages pending retirement: needs a GPU reset",
            )

    def _sample_clocks(
        self,
        gpu: _Gpu,
        s: HealthSample,
        wanted: dict[str, tuple[str, Health, str]],
        keep: set[str],
        out: Outcome,
    ) -> None:
        r = s.clocks_event_reasons
        if not self._usable(gpu, "clocks", (r,), keep, out):
            return
        for bit, reason, text in CLOCK_REASONS:
            if r.value & bit:
                wanted[reason] = ("clocks", Health.DEGRADED, text)

    def _sample_pcie(
        self,
        gpu: _Gpu,
        s: HealthSample,
        wanted: dict[str, tuple[str, Health, str]],
        keep: set[str],
        out: Outcome,
    ) -> None:
        cur, top = s.pcie_link_width_current, s.pcie_link_width_max
        if not self._usable(gpu, "pcie", (cur, top), keep, out):
            return
        if 0 < cur.value < top.value:
            wanted[f"pcie-x{cur.value}-of-x{top.value}"] = (
                "pcie",
                Health.DEGRADED,
                f"PCIe link runs at x{cur.value} of x{top.value} lanes",
            )

    def _sample_temperature(
        self,
        gpu: _Gpu,
        s: HealthSample,
        wanted: dict[str, tuple[str, Health, str]],
        keep: set[str],
        out: Outcome,
    ) -> None:
        limit = self.config.temperature_threshold_c
        t = s.temperature_c
        if limit > 0 and self._usable(gpu, "temperature", (t,), keep, out) and t.value >= limit:
            # The message names the threshold, not the reading: a temperature that
            # wanders by a degree must not re-send the health list each poll.
            wanted[REASON_THERMAL] = (
                "temperature",
                Health.DEGRADED,
                f"GPU temperature at or above {limit} C",
            )

    def _sample_ecc(self, gpu: _Gpu, s: HealthSample, now: float, out: Outcome) -> None:
        r = s.ecc_uncorrected_volatile
        if not r.ok:
            if not is_unsupported(r.rc):
                self._log_once(gpu, "ecc", r.rc, out, "reading ecc failed")
            return
        previous, gpu.ecc_uncorrected = gpu.ecc_uncorrected, r.value
        # The first sample is the baseline; a drop means the counters were reset.
        if previous is not None and r.value > previous:
            self._raise(
                gpu.devices,
                REASON_ECC_UNCORRECTED,
                Health.UNHEALTHY,
                f"volatile uncorrected ECC count rose from {previous} to {r.value}",
                Kind.HELD,
                now,
                out,
                recovery=self._needs(gpu, REASON_RECOVERY[REASON_ECC_UNCORRECTED]),
            )

    def _set_polled(
        self,
        gpu: _Gpu,
        wanted: dict[str, tuple[str, Health, str]],
        keep: set[str],
        now: float,
        out: Outcome,
    ) -> None:
        """Replace the GPU's polled conditions with wanted (signals in keep stay as they are)."""
        for name in gpu.devices:
            conds = self._conds[name]
            for reason, c in list(conds.items()):
                if c.kind is Kind.POLLED and c.signal not in keep and reason not in wanted:
                    del conds[reason]
                    out.changed.add(name)
            for reason, (signal, severity, text) in wanted.items():
                old = conds.get(reason)
                if old is None or old.kind is not Kind.POLLED:
                    needs = REASON_RECOVERY.get(reason, recovery.NONE)
                    if reason.startswith(RECOVERY_ACTION_PREFIX) and gpu.action is not None:
                        needs = recovery.for_action(gpu.action)
                    conds[reason] = Condition(
                        reason,
                        severity,
                        text,
                        Kind.POLLED,
                        now,
                        now,
                        signal=signal,
                        recovery=needs,
                    )
                    out.changed.add(name)
                elif (old.severity, old.message) != (severity, text):
                    conds[reason] = replace(old, severity=severity, message=text, last_seen=now)
                    out.changed.add(name)

    # -- notes, expiry -----------------------------------------------------------------

    def set_note(self, gpu_uuid: str, note: str, gpu_index: int = -1) -> Outcome:
        """Attach a remark to every device of a GPU (empty clears it)."""
        out = Outcome()
        gpu = self._find_gpu(gpu_uuid, gpu_index)
        if gpu is not None and gpu.note != note:
            gpu.note = note
            out.changed.update(gpu.devices)
        return out

    def set_unmonitored(self, gpu_uuid: str, why: str, gpu_index: int = -1) -> Outcome:
        return self.set_note(
            gpu_uuid, f"{NOTE_UNMONITORED}: NVML events are not monitored ({why})", gpu_index
        )

    def expire(self) -> Outcome:
        """Clear held conditions whose hold has passed on a GPU that answers normally."""
        out = Outcome()
        if not self._held:
            return out
        now = self._clock()
        hold = self.config.hold_seconds
        for gpu in self._gpus.values():
            if gpu.last_rc != SUCCESS or gpu.last_ok_at is None or gpu.answering_since is None:
                continue
            for name in gpu.devices:
                conds = self._conds[name]
                for reason, c in list(conds.items()):
                    if (
                        c.kind is Kind.HELD
                        and now - max(c.last_seen, gpu.answering_since) >= hold
                        and gpu.last_ok_at >= c.last_seen
                    ):
                        del conds[reason]
                        out.changed.add(name)
                        out.note(
                            logging.INFO,
                            f"{name}: {reason} cleared after {hold:g}s without a repeat",
                        )
        self._held = {
            name
            for name in self._held
            if any(c.kind is Kind.HELD for c in self._conds[name].values())
        }
        return out

    def next_expiry(self) -> float | None:
        """Policy-clock time at which the earliest held condition may expire, if any."""
        times = [
            c.last_seen + self.config.hold_seconds
            for name in self._held
            for c in self._conds[name].values()
            if c.kind is Kind.HELD
        ]
        return min(times) if times else None

    # -- helpers -----------------------------------------------------------------------

    def _find_gpu(self, uuid: str, index: int) -> _Gpu | None:
        if uuid:
            return self._gpus.get(uuid)
        return self._by_index.get(index)

    def _raise(
        self,
        devices: Iterable[str],
        reason: str,
        severity: Health,
        text: str,
        kind: Kind,
        now: float,
        out: Outcome,
        recovery: str = recovery.NONE,
    ) -> None:
        """Add a condition, or refresh it (count, last_seen, text) when already active.

        A repeat starts over: NVML must report an action for it again before a
        NONE can clear it.
        """
        for name in devices:
            conds = self._conds[name]
            self._gpu_by_device[name].settled = None  # the next sample is applied in full
            if kind is Kind.HELD:
                self._held.add(name)
            old = conds.get(reason)
            if old is None:
                conds[reason] = Condition(reason, severity, text, kind, now, now, recovery=recovery)
                out.changed.add(name)
                continue
            count = old.count + 1 if kind is Kind.HELD else old.count
            new = replace(
                old,
                severity=severity,
                message=text,
                kind=kind,
                last_seen=now,
                count=count,
                recovery=recovery,
                action_seen=False,
            )
            conds[reason] = new
            if (old.severity, old.message, old.count, old.recovery) != (
                severity,
                text,
                count,
                recovery,
            ):
                out.changed.add(name)

    def _log_once(self, gpu: _Gpu, what: str, rc: int, out: Outcome, text: str) -> None:
        if (what, rc) not in gpu.logged_errors:
            gpu.logged_errors.add((what, rc))
            out.note(
                logging.WARNING,
                f"{gpu.full_name}: {text} (nvml rc={rc}); keeping its previous state "
                "(logged once per code)",
            )
