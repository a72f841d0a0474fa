"""Device health -> the taints this node's ResourceSlices carry. Pure.

Keys follow NVIDIA's driver, so tolerations written for it keep working.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from ..health.board import DeviceHealth, Health
from ..health.policy import (
    REASON_ECC_DBE,
    REASON_ECC_UNCORRECTED,
    REASON_GPU_LOST,
    REASON_REMAP_FAILURE,
    REASON_RESET_REQUIRED,
    RECOVERY_ACTION_PREFIX,
    RECOVERY_ACTIONS,
)
from .options import TaintPolicy

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
    no taint here: the informational effect None is valid only from Kubernetes
    1.35, so apply_taint_policy adds it where the server is new enough.
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


# --- effects by class: NoSchedule by default, NoExecute by opt-in, None for Degraded ------

DEGRADED_TAINT = "degraded"  # "<driver>/degraded=<reason>", effect None (informational)
EFFECT_NONE_SINCE = (1, 35)  # the first API server that accepts effect None on device taints
EVICT_ALL = "all"
# What --health-evict may name besides xid-<n> and recovery-action-<class>: the
# reasons of Unhealthy verdicts and the recovery classes.
EVICT_REASONS = frozenset(
    {
        REASON_GPU_LOST,
        REASON_RESET_REQUIRED,
        REASON_ECC_DBE,
        REASON_ECC_UNCORRECTED,
        REASON_REMAP_FAILURE,
    }
)
EVICT_CLASSES = frozenset(RECOVERY_ACTIONS.values())
_XID = re.compile(r"^xid-[0-9]+$")


def evict_word_problem(word: str) -> str:
    """Why `word` cannot be a --health-evict entry ("" when it can)."""
    if word == EVICT_ALL or word in EVICT_REASONS or word in EVICT_CLASSES or _XID.match(word):
        return ""
    if word.startswith(RECOVERY_ACTION_PREFIX) and word[len(RECOVERY_ACTION_PREFIX) :] in (
        EVICT_CLASSES
    ):
        return ""
    return (
        f"{word!r} is neither a reason (xid-<n>, {', '.join(sorted(EVICT_REASONS))}) nor a "
        f"recovery class ({', '.join(sorted(EVICT_CLASSES))}) nor {EVICT_ALL!r}"
    )


def evicts(policy: TaintPolicy, health: DeviceHealth) -> bool:
    """Whether an Unhealthy verdict's pods should be evicted (NoExecute).

    Matches the verdict's reason (its worst, oldest condition) or the recovery
    class it needs (from NVML, or the XID catalogue). Unknown never evicts: a
    check that did not answer is no proof that the device is dead.
    """
    if health.health is not Health.UNHEALTHY or not policy.evict:
        return False
    if EVICT_ALL in policy.evict or health.reason in policy.evict:
        return True
    classes = {health.recovery}
    if health.reason.startswith(RECOVERY_ACTION_PREFIX):
        classes.add(health.reason[len(RECOVERY_ACTION_PREFIX) :])
    return bool(classes & policy.evict)


def effect_none_supported(server_version: tuple[int, int] | None) -> bool:
    """Effect None only where the API server is known to accept it (1.35+)."""
    return server_version is not None and server_version >= EFFECT_NONE_SINCE


def apply_taint_policy(
    taints: Mapping[str, list[dict[str, str]]],
    health: Sequence[DeviceHealth],
    driver: str,
    policy: TaintPolicy,
    server_version: tuple[int, int] | None,
) -> dict[str, list[dict[str, str]]]:
    """health_taints' output with the policy's effects: a pure rewrite, keys and values kept.

    * Unhealthy devices the policy evicts: their health taint (xid, gpu-lost,
      unhealthy keys) becomes NoExecute, so kube-controller-manager evicts the
      pods using them (pod condition DisruptionTarget, reason
      DeletionByDeviceTaintManager); other taints of the device stay NoSchedule.
    * Degraded devices, on a 1.35+ server: one `<driver>/degraded=<reason>`
      taint with effect None: visible to users and tools, ignored by the
      scheduler and the evictor. Older servers refuse that effect: none then.
    """
    out = {device: [dict(t) for t in ts] for device, ts in taints.items()}
    health_keys = {f"{driver}/{k}" for k in (XID_TAINT, GPU_LOST_TAINT, UNHEALTHY_TAINT)}
    informational = policy.informational_degraded and effect_none_supported(server_version)
    for h in health:
        if evicts(policy, h):
            for t in out.get(h.device, ()):
                if t["key"] in health_keys:
                    t["effect"] = "NoExecute"
        elif h.health is Health.DEGRADED and informational:
            out.setdefault(h.device, []).append(
                {
                    "key": f"{driver}/{DEGRADED_TAINT}",
                    "value": taint_value(h.reason or "degraded"),
                    "effect": "None",
                }
            )
    return out
