"""`dra-driver slices`: the ResourceSlices this node would publish (dry run, no API server)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import yaml

from .. import settings as settings_mod
from ..nvml.errors import NvmlError
from ..slices import validation
from ..slices.builder import build_slices
from .common import load_settings
from .inventory import load_inventory


def register(sub: Any) -> None:
    p = sub.add_parser(
        "slices",
        help="print the ResourceSlices this node would publish (no API server needed)",
        description="Read this node's devices through NVML and print the ResourceSlices the "
        "plugin would publish for them, validated as the API server would. A dry run: "
        "nothing is written anywhere.",
    )
    settings_mod.add_arguments(p, settings_mod.SLICES)
    p.add_argument(
        "--node", dest="node_name", default=argparse.SUPPRESS, help="alias of --node-name"
    )
    p.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml", help="output format")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    s = load_settings(args)
    problem = validation.driver_name_problem(s.driver_name) or validation.pool_name_problem(
        s.node_name
    )
    if problem:
        print(f"dra-driver slices: {problem}", file=sys.stderr)
        return 2
    try:
        inv = load_inventory(s)
    except NvmlError as e:
        print(f"dra-driver slices: NVML failed: {e}", file=sys.stderr)
        return 1
    objs, problems = build_slices(
        inv,
        driver=s.driver_name,
        node_name=s.node_name,
        partitionable=s.partitionable_devices,
        dynamic_mig=s.dynamic_mig,
    )
    for p in problems:
        print(p, file=sys.stderr)
    if args.output == "json":
        doc = {"apiVersion": "v1", "kind": "List", "items": objs}
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        yaml.safe_dump_all(objs, sys.stdout, sort_keys=False, explicit_start=True)
    return 0
