"""What a condition needs to go away: NVML's recovery action, or the XID catalogue.

Pure data. Drivers 565+ report the action themselves
(NVML_FI_DEV_GET_GPU_RECOVERY_ACTION and the GPU-recovery-action event, see
nvmlDeviceGpuRecoveryAction_t in nvml.h); the policy prefers that. Where the
driver cannot tell (older drivers, or before it has said anything), an XID is
classified by the "Resolution Bucket (Immediate Action)" column of NVIDIA's
XID catalogue for Ampere and newer GPUs
(https://docs.nvidia.com/deploy/xid-errors/analyzing-xid-catalog.html, the
edition listing XIDs up to 172 with R565/R575 linkage), mapped onto the
classes NVML itself uses:

    RESTART_APP, IGNORE, XID_154, CHECK_UVM, WORKFLOW_XID_45  -> none
        (the application restarts; the GPU itself needs nothing)
    RESET_GPU, WORKFLOW_XID_48 ("a GPU reset or node reboot is needed")
                                                              -> gpu-reset
    WORKFLOW_NVLINK_ERR, WORKFLOW_NVLINK5_ERR (NVLink: peers must be drained,
        then the GPU reset)                                   -> drain-and-reset
    RESTART_BM, RESTART_VM, UPDATE_SWFW, CHECK_MECHANICALS    -> node-reboot
        (someone must restart or service the node)

XIDs the catalogue marks unused, and XIDs newer than it, are "unknown".
"""

from __future__ import annotations

NONE = "none"
GPU_RESET = "gpu-reset"
NODE_REBOOT = "node-reboot"
DRAIN_P2P = "drain-p2p"
DRAIN_AND_RESET = "drain-and-reset"
UNKNOWN = "unknown"

# nvmlDeviceGpuRecoveryAction_t -> class.
NVML_ACTION_NONE = 0
NVML_ACTIONS: dict[int, str] = {
    0: NONE,
    1: GPU_RESET,
    2: NODE_REBOOT,
    3: DRAIN_P2P,
    4: DRAIN_AND_RESET,
    5: "recover-imex-domain",
    6: "bus-reset",
    7: "system-reboot",
}

# How disruptive each class is (the verdict and the taint name the worst one).
_RANK: dict[str, int] = {
    NONE: 0,
    UNKNOWN: 1,
    "recover-imex-domain": 2,
    GPU_RESET: 3,
    DRAIN_P2P: 4,
    "bus-reset": 5,
    DRAIN_AND_RESET: 6,
    NODE_REBOOT: 7,
    "system-reboot": 8,
}

_TEXT: dict[str, str] = {
    NONE: "no GPU action needed",
    UNKNOWN: "recovery action unknown",
    GPU_RESET: "needs a GPU reset",
    NODE_REBOOT: "needs a node reboot",
    DRAIN_P2P: "needs peer-to-peer traffic drained",
    DRAIN_AND_RESET: "needs peer-to-peer traffic drained and a GPU reset",
    "recover-imex-domain": "needs its IMEX domain recovered",
    "bus-reset": "needs a PCIe bus reset",
    "system-reboot": "needs a system reboot",
}


def _xids(*ranges: tuple[int, int] | int) -> frozenset[int]:
    out: set[int] = set()
    for r in ranges:
        if isinstance(r, int):
            out.add(r)
        else:
            out.update(range(r[0], r[1] + 1))
    return frozenset(out)


# The catalogue's immediate-action buckets, by class (see the module docstring).
XID_CATALOGUE: dict[str, frozenset[int]] = {
    NONE: _xids(
        8,
        11,
        13,
        14,
        25,
        31,
        32,
        37,
        38,
        (39, 41),
        (43, 45),
        60,
        63,
        (66, 72),
        (75, 77),
        80,
        (82, 86),
        88,
        89,
        (92, 94),
        (96, 108),
        121,
        (126, 135),
        137,
        139,
        141,
        152,
        153,
        154,
        157,
        159,
        160,
        161,
    ),
    GPU_RESET: _xids(46, 48, 62, 64, 95, 109, 110, 119, 120, 136, 140, 143, 155, 156, 158),
    DRAIN_AND_RESET: _xids(74, (144, 150)),
    NODE_REBOOT: _xids(54, 78, 79, 151),
}
_BY_XID: dict[int, str] = {x: cls for cls, xids in XID_CATALOGUE.items() for x in xids}


def for_xid(xid: int) -> str:
    """The catalogue's class for an XID ("unknown" when the catalogue has none)."""
    return _BY_XID.get(xid, UNKNOWN)


def for_action(action: int) -> str:
    """The class of an NVML recovery action value (unknown values keep their number)."""
    return NVML_ACTIONS.get(action, f"action-{action}")


def describe(recovery: str) -> str:
    return _TEXT.get(recovery, f"recovery action {recovery}")


def worst(classes: list[str]) -> str:
    """The most disruptive class among classes ("" when there is none)."""
    known = [c for c in classes if c]
    return max(known, key=lambda c: _RANK.get(c, _RANK[UNKNOWN])) if known else ""
