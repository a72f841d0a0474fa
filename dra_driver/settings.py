"""Process settings: every flag has an environment-variable twin and a default.

Kept in one place so the CLI, the plugin process and the tests agree on what
each knob is called and where files live on a kubelet host.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .health.policy import (
    DEFAULT_HOLD_SECONDS,
    DEFAULT_IGNORED_XIDS,
    DEFAULT_TEMPERATURE_THRESHOLD_C,
)
from .prepare.options import PreparerConfig
from .slices.options import PublisherConfig

DEFAULT_DRIVER = "gpu.nvidia.com"
UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the NUL
# Our state lives in a directory of its own inside the plugin directory: NVIDIA's driver
# keeps its checkpoint.json, cp.lock and pu.lock directly in <plugins dir>/<driver>.
STATE_SUBDIR = "dra-driver-gpu"


@dataclass(frozen=True)
class Settings:
    driver_name: str = DEFAULT_DRIVER
    node_name: str = "localhost"
    plugins_dir: Path = Path("/var/lib/kubelet/plugins")
    registry_dir: Path = Path("/var/lib/kubelet/plugins_registry")
    cdi_root: Path = Path("/var/run/cdi")
    state_dir: Path | None = None  # default: <plugins_dir>/<driver_name>/dra-driver-gpu
    nvml_library: str | None = None  # default: libnvidia-ml.so.1 from the loader path
    nvml_backend: str = "auto"  # auto | cffi | nvidia-ml-py
    fake_nvml: str | None = None  # topology of the bundled fake NVML (demo/testing)
    kubeconfig: str | None = None
    dev_root: Path = Path("/")  # host root where /dev lives (tests use a temp tree)
    proc_root: Path = Path("/proc")
    sys_root: Path = Path("/sys")
    driver_root: Path = Path("/")  # where this process reads the NVIDIA driver's files
    health: bool = True
    health_poll_interval: float = 10.0  # seconds between degradation samples
    health_hold: float = DEFAULT_HOLD_SECONDS  # quiet time before an event's condition clears
    health_ignored_xids: tuple[int, ...] = DEFAULT_IGNORED_XIDS
    health_temperature_threshold: int = DEFAULT_TEMPERATURE_THRESHOLD_C  # 0: off
    log_level: str = "INFO"
    partitionable_devices: bool = False  # publish KEP-4815 counter sets + abstract MIG devices
    metrics_address: str = ""  # HOST:PORT serving Prometheus /metrics; empty: no endpoint
    # The driver root as the host names it, for CDI specs (default: driver_root).
    host_driver_root: Path | None = None
    # The NVIDIA kernel driver's /proc directory (default: <proc_root>/driver/nvidia).
    nvidia_proc_dir: Path | None = None

    @property
    def plugin_dir(self) -> Path:
        """This driver's own directory under the kubelet plugins dir."""
        return self.plugins_dir / self.driver_name

    @property
    def dra_socket(self) -> Path:
        return self.plugin_dir / "dra.sock"

    @property
    def registration_socket(self) -> Path:
        return self.registry_dir / f"{self.driver_name}-reg.sock"

    @property
    def state_path(self) -> Path:
        return self.state_dir if self.state_dir is not None else self.plugin_dir / STATE_SUBDIR

    def resolved_nvml_library(self) -> str | None:
        """--nvml-library, else libnvidia-ml.so.1 under a driver root mounted elsewhere.

        None: the dynamic loader's own search (the driver root is "/").
        """
        if self.nvml_library:
            return self.nvml_library
        from .hostpaths import nvml_library_under

        return nvml_library_under(self.driver_root)

    @property
    def host_driver_root_path(self) -> Path:
        return self.host_driver_root if self.host_driver_root is not None else self.driver_root

    @property
    def nvidia_proc_path(self) -> Path:
        if self.nvidia_proc_dir is not None:
            return self.nvidia_proc_dir
        return self.proc_root / "driver/nvidia"

    def publisher_config(self) -> PublisherConfig:
        return PublisherConfig(
            driver_name=self.driver_name,
            node_name=self.node_name,
            partitionable_devices=self.partitionable_devices,
        )

    def preparer_config(self) -> PreparerConfig:
        return PreparerConfig(
            driver_name=self.driver_name,
            pool_name=self.node_name,
            state_dir=self.state_path,
            cdi_root=self.cdi_root,
            dev_root=self.dev_root,
            proc_root=self.proc_root,
            driver_root=self.driver_root,
            host_driver_root=self.host_driver_root_path,
            nvidia_proc_dir=self.nvidia_proc_path,
        )


# Every variable a flag reads, recorded by _env() as add_arguments() runs.
_ENV_NAMES: set[str] = set()
# Read by a child plugin process without being flags: the in-cluster API
# server address and the fake NVML's own settings.
_OTHER_ENV = (
    "KUBERNETES_SERVICE_HOST",
    "KUBERNETES_SERVICE_PORT",
    "FAKE_NVML_TOPOLOGY",
    "FAKE_NVML_FAULTS",
    "FAKE_NVML_STATE_DIR",
)


def _env(name: str, default: str | None) -> str | None:
    _ENV_NAMES.add(name)
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _non_negative_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def _xid_list(text: str) -> tuple[int, ...]:
    """Comma-separated XID numbers; empty or "none" ignores none."""
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        xids = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated XID numbers, got {text!r}"
        ) from None
    if any(x < 0 for x in xids):
        raise argparse.ArgumentTypeError(f"XIDs are non-negative numbers, got {text!r}")
    return tuple(xids)


def _celsius(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of degrees: {text!r}") from None
    if not 0 <= value <= 200:
        raise argparse.ArgumentTypeError(f"must be 0 (off) to 200, got {text}")
    return value


def parse_host_port(text: str) -> tuple[str, int]:
    """Split HOST:PORT, [IPv6]:PORT or :PORT (every interface); ValueError says what is wrong."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep:
        raise ValueError(f"expected HOST:PORT (or :PORT for every interface), got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not host:
            raise ValueError(f"empty IPv6 address in {text!r}")
    elif ":" in host:
        raise ValueError(f"write an IPv6 address in brackets, e.g. [::1]:8080; got {text!r}")
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise ValueError(f"port must be a number from 0 to 65535, got {port_text!r}")
    return host, int(port_text)


def _metrics_address(text: str) -> str:
    if text.strip() == "":
        return ""
    try:
        parse_host_port(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text.strip()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every common flag; defaults come from the environment, then Settings."""
    d = Settings()
    parser.add_argument("--driver-name", default=_env("DRIVER_NAME", d.driver_name))
    parser.add_argument("--node-name", default=_env("NODE_NAME", d.node_name))
    parser.add_argument(
        "--plugins-dir", default=_env("KUBELET_PLUGINS_DIRECTORY_PATH", str(d.plugins_dir))
    )
    parser.add_argument(
        "--registry-dir", default=_env("KUBELET_REGISTRAR_DIRECTORY_PATH", str(d.registry_dir))
    )
    parser.add_argument("--cdi-root", default=_env("CDI_ROOT", str(d.cdi_root)))
    parser.add_argument("--state-dir", default=_env("STATE_DIR", None))
    parser.add_argument(
        "--nvml-library",
        default=_env("NVML_LIBRARY", None),
        help="path of libnvidia-ml.so.1 to load (env NVML_LIBRARY)",
    )
    parser.add_argument(
        "--fake-nvml",
        metavar="TOPOLOGY",
        default=_env("FAKE_NVML", None),
        help="use the bundled fake NVML library with this topology (small, a100, dgx-h100, "
        "or a topology file): a simulated node for demos and tests (env FAKE_NVML)",
    )
    parser.add_argument(
        "--nvml-backend",
        choices=["auto", "cffi", "nvidia-ml-py"],
        default=_env("NVML_BACKEND", d.nvml_backend),
    )
    parser.add_argument("--kubeconfig", default=_env("KUBECONFIG", None))
    parser.add_argument("--dev-root", default=_env("DEV_ROOT", str(d.dev_root)))
    parser.add_argument("--proc-root", default=_env("PROC_ROOT", str(d.proc_root)))
    parser.add_argument("--sys-root", default=_env("SYS_ROOT", str(d.sys_root)))
    parser.add_argument(
        "--driver-root",
        default=_env("DRIVER_ROOT_CTR_PATH", None),
        metavar="DIR",
        help="where this process reads the NVIDIA driver's files (in a pod: where the host's "
        "driver root is mounted, e.g. /driver-root); default: --host-driver-root "
        "(env DRIVER_ROOT_CTR_PATH)",
    )
    parser.add_argument(
        "--host-driver-root",
        default=_env("NVIDIA_DRIVER_ROOT", _env("HOST_DRIVER_ROOT", None)),
        metavar="DIR",
        help="the same directory as the host names it, written into CDI specs: / or e.g. "
        "/run/nvidia/driver; default: --driver-root, else / (env NVIDIA_DRIVER_ROOT)",
    )
    parser.add_argument(
        "--nvidia-proc-dir",
        default=_env("NVIDIA_PROC_DIR", None),
        metavar="DIR",
        help="the NVIDIA kernel driver's /proc/driver/nvidia (MIG capabilities); default: "
        "<--proc-root>/driver/nvidia (env NVIDIA_PROC_DIR)",
    )
    parser.add_argument(
        "--health",
        action=argparse.BooleanOptionalAction,
        default=_env("DEVICE_HEALTH", "true") not in ("0", "false", "no"),
    )
    parser.add_argument(
        "--health-poll-interval",
        type=_positive_seconds,
        default=_env("HEALTH_POLL_INTERVAL", str(d.health_poll_interval)),
        metavar="SECONDS",
        help="sample degradation signals (ECC, row remapping, clocks, PCIe, temperature) this "
        "often (env HEALTH_POLL_INTERVAL)",
    )
    parser.add_argument(
        "--health-hold",
        type=_non_negative_seconds,
        default=_env("HEALTH_HOLD", str(d.health_hold)),
        metavar="SECONDS",
        help="an XID, ECC or recovery-action condition clears only after this long without a "
        "repeat, once the GPU answers NVML normally (env HEALTH_HOLD)",
    )
    parser.add_argument(
        "--health-ignored-xids",
        type=_xid_list,
        default=_env("HEALTH_IGNORED_XIDS", ",".join(map(str, d.health_ignored_xids))),
        metavar="XID,...",
        help="XIDs that are application errors, not device faults; 'none' to ignore none "
        "(env HEALTH_IGNORED_XIDS)",
    )
    parser.add_argument(
        "--health-temperature-threshold",
        type=_celsius,
        default=_env("HEALTH_TEMPERATURE_THRESHOLD", str(d.health_temperature_threshold)),
        metavar="CELSIUS",
        help="a GPU at or above this temperature is Degraded; 0 turns the check off "
        "(env HEALTH_TEMPERATURE_THRESHOLD)",
    )
    parser.add_argument("--log-level", default=_env("LOG_LEVEL", d.log_level))
    parser.add_argument(
        "--partitionable-devices",
        action=argparse.BooleanOptionalAction,
        default=_env("PARTITIONABLE_DEVICES", "false") in ("1", "true", "yes"),
        help="publish MIG-capable GPUs as partitionable devices (KEP-4815; Kubernetes >= 1.36)",
    )
    parser.add_argument(
        "--metrics-address",
        type=_metrics_address,
        default=_env("METRICS_ADDRESS", d.metrics_address),
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics, e.g. 127.0.0.1:8080 or "
        ":8080 for every interface (NVIDIA's driver calls this --http-endpoint); empty, the "
        "default, serves none (env METRICS_ADDRESS)",
    )


def hermetic_environ(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment without any variable that would steer a child `dra-driver`.

    For launching a plugin process whose behaviour depends on its flags alone
    (the demo, the end-to-end tests), whatever the caller's shell exports.
    """
    add_arguments(argparse.ArgumentParser())  # records the variable of every flag
    drop = _ENV_NAMES.union(_OTHER_ENV)
    source = os.environ if environ is None else environ
    return {k: v for k, v in source.items() if k not in drop}


def from_args(ns: argparse.Namespace) -> Settings:
    return Settings(
        driver_name=ns.driver_name,
        node_name=ns.node_name,
        plugins_dir=Path(ns.plugins_dir).absolute(),
        registry_dir=Path(ns.registry_dir).absolute(),
        cdi_root=Path(ns.cdi_root).absolute(),
        state_dir=Path(ns.state_dir).absolute() if ns.state_dir else None,
        nvml_library=_fake_nvml_library(ns.fake_nvml) if ns.fake_nvml else ns.nvml_library,
        fake_nvml=ns.fake_nvml,
        nvml_backend=ns.nvml_backend,
        kubeconfig=ns.kubeconfig,
        dev_root=Path(ns.dev_root),
        proc_root=Path(ns.proc_root),
        sys_root=Path(ns.sys_root),
        driver_root=Path(ns.driver_root or ns.host_driver_root or "/"),
        host_driver_root=Path(ns.host_driver_root) if ns.host_driver_root else None,
        nvidia_proc_dir=Path(ns.nvidia_proc_dir) if ns.nvidia_proc_dir else None,
        health=ns.health,
        health_poll_interval=ns.health_poll_interval,
        health_hold=ns.health_hold,
        health_ignored_xids=tuple(ns.health_ignored_xids),
        health_temperature_threshold=ns.health_temperature_threshold,
        log_level=ns.log_level,
        partitionable_devices=getattr(ns, "partitionable_devices", False),
        metrics_address=getattr(ns, "metrics_address", ""),
    )


def _fake_nvml_library(topology: str) -> str:
    """Point NVML at the bundled fake and select its topology.

    The fake library reads FAKE_NVML_TOPOLOGY at nvmlInit, so the choice is
    made through this process's environment (inherited by anything it spawns).
    """
    from .testing import fakenvml

    try:
        fakenvml.topology_path(topology)  # fail early, with the list of names, on a typo
        library = fakenvml.library_path()
    except fakenvml.FakeNvmlError as e:
        raise SystemExit(f"dra-driver: --fake-nvml: {e}") from e
    os.environ["FAKE_NVML_TOPOLOGY"] = topology
    return library


def check_socket_paths(settings: Settings) -> list[str]:
    """Socket paths longer than the unix limit, as messages (empty when fine)."""
    out = []
    for path in (settings.dra_socket, settings.registration_socket):
        n = len(os.fsencode(str(path)))
        if n > UNIX_PATH_MAX:
            out.append(
                f"socket path {path} is {n} bytes; unix sockets allow at most {UNIX_PATH_MAX}"
            )
    return out
