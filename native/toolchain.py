"""Fail a build without a C compiler or Python headers at once, with what to install.

Both native parts are C (the cffi NVML fast path and the fake libnvidia-ml);
without a compiler setuptools fails only after a while, with "Failed building
wheel" and a compiler error buried in the log.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sysconfig
from collections.abc import Mapping
from pathlib import Path

INSTALL_HINT = (
    "install one, e.g. `apt-get install gcc python3-dev` (Debian/Ubuntu) or "
    "`dnf install gcc python3-devel` (Fedora/RHEL)"
)


def missing_toolchain(environ: Mapping[str, str] | None = None) -> str | None:
    """Why the native parts cannot build here, or None when they can."""
    env = os.environ if environ is None else environ
    cc = env.get("CC") or sysconfig.get_config_var("CC") or "cc"
    compiler = shlex.split(cc)[0] if cc.strip() else "cc"
    if shutil.which(compiler, path=env.get("PATH")) is None:
        return (
            f"dra-driver-gpu needs a C compiler to build its native parts, and {compiler!r} "
            f"is not on PATH: {INSTALL_HINT}"
        )
    include = sysconfig.get_paths().get("include", "")
    if not (Path(include) / "Python.h").is_file():
        return f"dra-driver-gpu needs the Python C headers (Python.h in {include}): {INSTALL_HINT}"
    return None
