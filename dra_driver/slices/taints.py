"""Device health -> the taints this node's ResourceSlices carry. Pure.

Keys follow NVIDIA's driver, so tolerations written for it keep working.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..health.board import DeviceHealth, Health

UNHEALTHY_TAINT = "unhealthy"  # key is "<driver>/unhealthy"
XID_TAINT = "xid"  # NVIDIA's key for XID errors: "<driver>/xid=<n>"
GPU_LOST_TAINT = "gpu-lost"  # NVIDIA's key for a GPU off the bus
UNKNOWN_TAINT = "unknown"  # "<driver>/unknown=<reason>": no check vouches for the device
RECOVERY_TAINT = "recovery"  # "<driver>/recovery=<what it needs>", beside the health taint


def taint_value(reason: str) -> str:
    """A health reason as a label value ("XID 79" -> "XID-79"), at most 63 characters."""
    text = re.sub(r"[^A-Za-z0-9_.-]+", "-", reason.strip())[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", text) or "unknown"


def health_taint(reason: str, driver: str) -> dict[str, str]:
    """The NoSchedule taint for one Unhealthy verdict, keyed as NVIDIA's driver keys it.

    XIDs are `<driver>/xid=<n>` and a lost GPU `<driver>/gpu-lost`, exactly
    NVIDIA's keys, so tolerations written for that driver keep working; every
    other reason is `<driver>/unhealthy=<reason>`.
    """
    if reason.startswith("xid-") and reason[4:].isdigit():
        return {"key": f"{driver}/{XID_TAINT}", "value": reason[4:], "effect": "NoSchedule"}
    if reason == "gpu-lost":
        return {"key": f"{driver}/{GPU_LOST_TAINT}", "effect": "NoSchedule"}
    return {
        "key": f"{driver}/{UNHEALTHY_TAINT}",
        "value": taint_value(reason or "unknown"),
        "effect": "NoSchedule",
    }


def recovery_taint(recovery: str, driver: str) -> dict[str, str]:
    """What an Unhealthy device needs (gpu-reset, node-reboot, drain-p2p, drain-and-reset, ...).

    A key of its own keeps NVIDIA's xid / gpu-lost keys and values as they are
    (tolerations written for them keep working) while letting a toleration or
    a DeviceTaintRule select on the action a fault needs.
    """
    return {
        "key": f"{driver}/{RECOVERY_TAINT}",
        "value": taint_value(recovery),
        "effect": "NoSchedule",
    }


def unknown_taint(reason: str, driver: str) -> dict[str, str]:
    """NoSchedule for a device no check vouches for (NVML hung, health checks stalled)."""
    return {
        "key": f"{driver}/{UNKNOWN_TAINT}",
        "value": taint_value(reason or "not-checked"),
        "effect": "NoSchedule",
    }


def health_taints(health: Sequence[DeviceHealth], driver: str) -> dict[str, list[dict[str, str]]]:
    """Which health verdicts taint which device, and how.

    Unhealthy -> one NoSchedule taint for its reason (see health_taint), plus
    one saying what it needs when that is more than nothing (recovery_taint):
    new claims avoid the device, running pods are left alone (eviction is the
    admin's decision, via a DeviceTaintRule). Unknown -> `<driver>/unknown`
    NoSchedule (unknown_taint): nothing vouches for the device, so new claims
    avoid it until a check answers. Degraded devices stay schedulable and get
    no taint: the informational effect None is valid only from Kubernetes
    1.35, and the health stream's message already says what is degraded.
    """
    out: dict[str, list[dict[str, str]]] = {}
    for h in health:
        if h.health is Health.UNHEALTHY:
            taints = [health_taint(h.reason, driver)]
            if h.recovery and h.recovery != "none":
                taints.append(recovery_taint(h.recovery, driver))
            out[h.device] = taints
        elif h.health is Health.UNKNOWN:
            out[h.device] = [unknown_taint(h.reason, driver)]
    return out
