"""`dra-driver run`: the kubelet plugin process (see dra_driver.app)."""

from __future__ import annotations

import argparse
import signal
from types import FrameType
from typing import Any

from .. import settings as settings_mod
from .common import load_settings

DESCRIPTION = """\
Run the DRA kubelet plugin of this node: read the GPUs and MIG devices through
NVML, publish them as ResourceSlices, serve the kubelet's DRA and registration
sockets (prepare and unprepare claims, write their CDI specs) and, with
--health, watch device health. Runs until SIGTERM or SIGINT. Every flag also
reads an environment variable, named in its help.
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help="run the DRA kubelet plugin on this node",
        description=DESCRIPTION,
    )
    settings_mod.add_arguments(p, settings_mod.RUN)
    p.set_defaults(func=run)


def _exit_before_start(signum: int, frame: FrameType | None) -> None:
    """SIGTERM/SIGINT while still importing: nothing to clean up yet, exit 0."""
    raise SystemExit(0)


def run(args: argparse.Namespace) -> int:
    # Until the event loop installs its own handlers, a stop signal just ends
    # the process cleanly instead of killing it mid-import.
    signal.signal(signal.SIGTERM, _exit_before_start)
    signal.signal(signal.SIGINT, _exit_before_start)
    settings = load_settings(args)
    from ..app import run as run_app

    return run_app(settings)
