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


def health_taints(health: Sequence[DeviceHealth], driver: str) -> dict[str, list[dict[str, str]]]:
    """Which health verdicts taint which device, and how.

    Unhealthy -> one NoSchedule taint for its reason (see health_taint): new
    claims avoid the device, running pods are left alone (eviction is the
    admin's decision, via a DeviceTaintRule). Degraded and unknown devices stay
    schedulable and get no taint: the informational effect None is valid only
    from Kubernetes 1.35, and the health stream's message already says what is
    degraded.
    """
    return {
        h.device: [health_taint(h.reason, driver)] for h in health if h.health is Health.UNHEALTHY
    }
