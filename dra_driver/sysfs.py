"""Host facts read from sysfs that NVML does not report."""

from __future__ import annotations

import os
import re
from pathlib import Path

_ROOT_BUS = re.compile(r"^pci([0-9a-f]{4}):([0-9a-f]{2})\Z")


def pcie_root_resolver(sys_root: Path = Path("/sys")) -> PcieRoots:
    return PcieRoots(sys_root)


class PcieRoots:
    """Maps a PCI bus id to its root complex, e.g. "0000:17:00.0" -> "pci0000:16".

    The kernel's device path under /sys/devices starts with the root bus
    (`/sys/devices/pci0000:16/...`); that is the value of the standard
    `resource.kubernetes.io/pcieRoot` attribute. Missing sysfs entries (a
    container without /sys, a test) just yield no attribute.
    """

    def __init__(self, sys_root: Path) -> None:
        self._sys_root = sys_root

    def __call__(self, bus_id: str) -> str | None:
        link = self._sys_root / "bus" / "pci" / "devices" / bus_id
        try:
            target = os.path.realpath(link)
        except OSError:
            return None
        for part in Path(target).parts:
            if _ROOT_BUS.match(part):
                return part
        return None
