"""`dra-driver` entry point: dispatches to one module per subcommand."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from . import __version__
from .settings import SettingsError

DESCRIPTION = """\
The Kubernetes DRA (Dynamic Resource Allocation) driver for NVIDIA GPUs and
MIG devices. `run` is the node plugin the kubelet talks to; the other
commands look at this node without changing it, or clean up after it.
"""
EPILOG = "Run `dra-driver COMMAND --help` for a command's flags and their environment variables."

# Each module defines register(subparsers) that adds its parser and sets
# `func(args) -> int` as the handler.
COMMAND_MODULES = [
    "dra_driver.commands.inventory",
    "dra_driver.commands.slices",
    "dra_driver.commands.cleanup",
    "dra_driver.commands.run",
    "dra_driver.commands.probe",
    "dra_driver.commands.demo",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dra-driver", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    for command_parser in sub.choices.values():
        command_parser.set_defaults(_command_parser=command_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    command_parser: argparse.ArgumentParser = getattr(args, "_command_parser", parser)
    if extra:
        # The subcommand's own usage, not the top-level one, says which flags it has.
        command_parser.error(f"unrecognized arguments: {' '.join(extra)}")
    level = getattr(args, "log_level", "INFO")
    logging.basicConfig(
        level=getattr(logging, str(level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        result: int = args.func(args)
    except SettingsError as e:
        command_parser.error(str(e))
    except BrokenPipeError:
        # Output piped into `head` and the like: not an error worth a traceback.
        sys.stderr.close()
        return 0
    return result
