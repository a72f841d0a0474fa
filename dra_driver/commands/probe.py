"""`dra-driver probe`: is the plugin on this node alive and useful? (the pod's probes)

Checks what the kubelet relies on, the way the kubelet reaches it:
- GetInfo on the registration socket names this driver;
- an empty NodePrepareResources on the DRA socket is answered (both calls run
  on the plugin's event loop, so a wedged loop fails them);
- the plugin's heartbeat file says NVML answered within --max-nvml-age;
- with --require-registration, the kubelet confirmed the registration.
Exit 0 when all hold, else 1 with one line saying what failed (the kubelet
puts it in the pod's events). Run it in the plugin's container, with the
plugin's settings (the chart passes them as environment variables).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from .. import settings as settings_mod


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def register(sub: Any) -> None:
    p = sub.add_parser(
        "probe",
        help="check the running plugin: its kubelet sockets answer and NVML answered recently",
        description="Check the plugin running on this node the way the kubelet reaches it: "
        "its registration and DRA sockets answer, and NVML answered within --max-nvml-age. "
        "Exit 0 when all hold, else 1 with one line saying what failed (for the pod's "
        "liveness and readiness probes).",
    )
    settings_mod.add_arguments(p, settings_mod.PROBE)
    p.add_argument(
        "--max-nvml-age",
        type=_positive,
        default=60.0,
        metavar="SECONDS",
        help="fail when NVML last answered longer ago than this (must exceed "
        "--health-poll-interval)",
    )
    p.add_argument(
        "--require-registration",
        action="store_true",
        help="also fail until the kubelet has confirmed the plugin's registration",
    )
    p.add_argument(
        "--timeout",
        type=_positive,
        default=5.0,
        metavar="SECONDS",
        help="deadline of each socket call",
    )
    p.set_defaults(func=run)


def check(
    s: settings_mod.Settings,
    max_nvml_age: float,
    require_registration: bool = False,
    timeout: float = 5.0,
) -> list[str]:
    """What is wrong with the running plugin, as messages (empty when healthy)."""
    import grpc

    from ..heartbeat import FILE_NAME, HeartbeatError, read
    from ..kubelet.proto import dra_v1_pb2
    from ..kubelet.proto import pluginregistration_v1_pb2 as reg_pb
    from ..kubelet.stubs import dra_v1_stub, registration_stub

    problems: list[str] = []
    with grpc.insecure_channel(f"unix:{s.registration_socket}") as channel:
        try:
            info = registration_stub(channel).GetInfo(reg_pb.InfoRequest(), timeout=timeout)
            if info.name != s.driver_name:
                problems.append(
                    f"{s.registration_socket} serves driver {info.name!r}, not {s.driver_name!r}"
                )
        except grpc.RpcError as e:
            problems.append(f"GetInfo on {s.registration_socket}: {e.code().name} {e.details()}")
    with grpc.insecure_channel(f"unix:{s.dra_socket}") as channel:
        try:
            dra_v1_stub(channel).NodePrepareResources(
                dra_v1_pb2.NodePrepareResourcesRequest(claims=[]), timeout=timeout
            )
        except grpc.RpcError as e:
            problems.append(
                f"NodePrepareResources on {s.dra_socket}: {e.code().name} {e.details()}"
            )
    try:
        beat = read(s.state_path / FILE_NAME)
    except HeartbeatError as e:
        problems.append(str(e))
        return problems
    age = time.time() - beat.nvml_answered_at
    if age > max_nvml_age:
        problems.append(f"NVML last answered {age:.0f} s ago (limit {max_nvml_age:g} s)")
    if require_registration and not beat.registered:
        problems.append(
            f"the kubelet has not confirmed the registration of {s.registration_socket} "
            "(is the kubelet's plugins_registry directory mounted at that path?)"
        )
    return problems


def run(args: argparse.Namespace) -> int:
    s = settings_mod.from_args(args)
    problems = check(s, args.max_nvml_age, args.require_registration, args.timeout)
    if problems:
        print("probe failed: " + "; ".join(problems), flush=True)
        return 1
    print("ok", flush=True)
    return 0
