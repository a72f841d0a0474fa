"""The NVIDIA driver root as this process reads it and as the host names it.

In a pod the host's driver root is mounted somewhere else (the chart mounts it
at /driver-root). The plugin reads the driver's files through that mount, but
everything it writes into a CDI spec is applied by the container runtime on
the host, so specs must name host paths. DriverRoot keeps the two apart:
`local` is where this process looks, `host` is what a spec says.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

NVML_LIBRARY = "libnvidia-ml.so.1"


def library_dirs() -> list[str]:
    """Where distributions put the driver's user-space libraries, relative to the root."""
    arch = platform.machine()
    return [f"usr/lib/{arch}-linux-gnu", "usr/lib64", f"lib/{arch}-linux-gnu", "usr/lib"]


@dataclass(frozen=True)
class DriverRoot:
    local: Path = Path("/")  # where this process reads the driver's files
    host: Path = Path("/")  # the same directory as the host (and its runtime) names it

    def to_host(self, local_path: Path) -> Path:
        """The host's name for a path found under `local`; ValueError if it is not under it."""
        rel = local_path.relative_to(self.local)
        return self.host / rel

    def find_library(self, name: str = NVML_LIBRARY) -> Path | None:
        """The first `name` in the library directories under `local`, or None."""
        for rel in library_dirs():
            candidate = self.local / rel / name
            if candidate.exists():
                return candidate
        return None


def nvml_library_under(driver_root: Path) -> str | None:
    """libnvidia-ml.so.1 from a driver root mounted elsewhere; None for "/" (the loader's path).

    With the driver root at "/", the dynamic loader's own search (ld.so.cache)
    is the right one; a root mounted elsewhere is not in that cache.
    """
    if driver_root == Path("/"):
        return None
    found = DriverRoot(driver_root, driver_root).find_library()
    return str(found) if found is not None else None
