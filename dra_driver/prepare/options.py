"""What the claim preparer needs to know about its host: names and directories.

Frozen and owned here, so the preparer never reads process settings; the
command line (dra_driver.settings) builds one of these.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_CDI_ROOT = Path("/var/run/cdi")
DEFAULT_WORKERS = 16


@dataclass(frozen=True)
class PreparerConfig:
    """Where claims are recorded and specs written, and whose allocations are ours."""

    driver_name: str
    pool_name: str  # this node's pool: the node name
    state_dir: Path  # the checkpoint and the instance registry
    cdi_root: Path = DEFAULT_CDI_ROOT
    dev_root: Path = Path("/")  # host root where /dev lives (tests use a temp tree)
    proc_root: Path = Path("/proc")
    driver_root: Path = Path("/")  # where this process reads the NVIDIA driver's files
    # The same directory as the host names it, written into CDI specs (None: driver_root).
    host_driver_root: Path | None = None
    # The kernel driver's /proc/driver/nvidia (None: <proc_root>/driver/nvidia).
    nvidia_proc_dir: Path | None = None
    workers: int = DEFAULT_WORKERS  # claims prepared in parallel
    dynamic_mig: bool = False  # create a MIG device at prepare when it does not exist yet
