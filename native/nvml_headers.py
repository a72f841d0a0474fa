"""Locate nvml.h at build time (from the nvidia-nvml-dev wheel, or NVML_INCLUDE_DIR)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def include_dir() -> str:
    env = os.environ.get("NVML_INCLUDE_DIR")
    if env and (Path(env) / "nvml.h").is_file():
        return env
    for entry in sys.path:
        base = Path(entry or ".") / "nvidia"
        if base.is_dir():
            for hit in sorted(base.glob("*/include/nvml.h"), reverse=True):
                return str(hit.parent)
    for cand in ("/usr/local/cuda/include", "/usr/include"):
        if (Path(cand) / "nvml.h").is_file():
            return cand
    raise RuntimeError(
        "nvml.h not found: install the nvidia-nvml-dev wheel (a build requirement) "
        "or set NVML_INCLUDE_DIR"
    )
