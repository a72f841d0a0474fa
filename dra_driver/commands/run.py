"""`dra-driver run`: the kubelet plugin process (see dra_driver.app)."""

from __future__ import annotations

import argparse
import signal
from types import FrameType
from typing import Any

from .. import settings as settings_mod
from ..kubelet.options import PluginOptions


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def register(sub: Any) -> None:
    p = sub.add_parser("run", help="run the DRA kubelet plugin on this node")
    settings_mod.add_arguments(p)
    d = PluginOptions()
    p.add_argument(
        "--health-resend-interval",
        type=_positive,
        default=d.health_resend_interval,
        metavar="SECONDS",
        help="re-send the full device health list this often even without changes",
    )
    p.add_argument(
        "--registration-backoff",
        type=_positive,
        default=d.registration_backoff,
        metavar="SECONDS",
        help="first delay before re-registering after the kubelet refused us (doubles, capped)",
    )
    p.add_argument(
        "--shutdown-grace",
        type=_positive,
        default=d.shutdown_grace,
        metavar="SECONDS",
        help="how long in-flight kubelet calls may run after SIGTERM",
    )
    p.set_defaults(func=run)


def _exit_before_start(signum: int, frame: FrameType | None) -> None:
    """SIGTERM/SIGINT while still importing: nothing to clean up yet, exit 0."""
    raise SystemExit(0)


def run(args: argparse.Namespace) -> int:
    # Until the event loop installs its own handlers, a stop signal just ends
    # the process cleanly instead of killing it mid-import.
    signal.signal(signal.SIGTERM, _exit_before_start)
    signal.signal(signal.SIGINT, _exit_before_start)
    from ..app import run as run_app

    options = PluginOptions(
        health_resend_interval=args.health_resend_interval,
        registration_backoff=args.registration_backoff,
        shutdown_grace=args.shutdown_grace,
    )
    return run_app(settings_mod.from_args(args), options)
