"""The command line's edge: every flag, its environment twin, parser, default and help.

One table, FLAGS, makes each subcommand's argparse options and --help; a
subcommand shows only the flags it uses. from_args() turns the parsed
namespace into Settings, which hands each component its own frozen config
(PreparerConfig, PublisherConfig, PluginConfig, ...). Defaults live in the
component that owns them and are read from there: this module imports
components, never the reverse.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .claimstatus.options import ClaimStatusConfig
from .health.monitor import DEFAULT_POLL_INTERVAL, MonitorConfig
from .health.policy import (
    DEFAULT_HOLD_SECONDS,
    DEFAULT_IGNORED_XIDS,
    DEFAULT_TEMPERATURE_THRESHOLD_C,
    PolicyConfig,
)
from .hostport import parse_host_port
from .kubelet.options import (
    DEFAULT_PLUGINS_DIR,
    DEFAULT_REGISTRY_DIR,
    PluginConfig,
    PluginOptions,
)
from .nvml.deadline import DEFAULT_DEADLINE
from .nvml.migops import DEFAULT_MIG_DEADLINE
from .prepare.options import DEFAULT_CDI_ROOT, PreparerConfig
from .slices.options import PublisherConfig, TaintPolicy
from .slices.taints import EVICT_ALL, evict_word_problem

DEFAULT_DRIVER = "gpu.nvidia.com"
LOCAL_NODE_NAME = "localhost"  # the node name of a local try (--allow-default-node-name)
_PLUGIN_DEFAULTS = PluginOptions()
# Our state lives in a directory of its own inside the plugin directory: NVIDIA's driver
# keeps its checkpoint.json, cp.lock and pu.lock directly in <plugins dir>/<driver>.
STATE_SUBDIR = "dra-driver-gpu"


class SettingsError(ValueError):
    """The flags and environment together make no valid setting; the message says why."""


@dataclass(frozen=True)
class Settings:
    """Every setting of one `dra-driver` process, as parsed; components get views of it."""

    driver_name: str = DEFAULT_DRIVER
    node_name: str = LOCAL_NODE_NAME
    plugins_dir: Path = DEFAULT_PLUGINS_DIR
    registry_dir: Path = DEFAULT_REGISTRY_DIR
    cdi_root: Path = DEFAULT_CDI_ROOT
    state_dir: Path | None = None  # default: <plugins_dir>/<driver_name>/dra-driver-gpu
    nvml_library: str | None = None  # default: libnvidia-ml.so.1 from the loader path
    rescan_interval: float = 10.0  # re-read the inventory this often; 0: only at start
    nvml_backend: str = "auto"  # auto | cffi | nvidia-ml-py
    fake_nvml: str | None = None  # topology of the bundled fake NVML (demo/testing)
    kubeconfig: str | None = None
    claim_device_status: bool = True
    dev_root: Path = Path("/")  # host root where /dev lives (tests use a temp tree)
    proc_root: Path = Path("/proc")
    sys_root: Path = Path("/sys")
    driver_root: Path = Path("/")  # where this process reads the NVIDIA driver's files
    health: bool = True
    health_poll_interval: float = DEFAULT_POLL_INTERVAL
    health_hold: float = DEFAULT_HOLD_SECONDS
    health_ignored_xids: tuple[int, ...] = DEFAULT_IGNORED_XIDS
    health_temperature_threshold: int = DEFAULT_TEMPERATURE_THRESHOLD_C  # 0: off
    health_evict: tuple[str, ...] = ()  # reasons/classes whose Unhealthy devices get NoExecute
    health_degraded_taint: bool = True  # Degraded -> effect-None taint on 1.35+ servers
    health_nvml_deadline: float = DEFAULT_DEADLINE  # a GPU's NVML job overrunning this: Unknown
    health_resend_interval: float = _PLUGIN_DEFAULTS.health_resend_interval
    registration_backoff: float = _PLUGIN_DEFAULTS.registration_backoff
    shutdown_grace: float = _PLUGIN_DEFAULTS.shutdown_grace
    log_level: str = "INFO"
    partitionable_devices: bool = False
    dynamic_mig: bool = False
    mig_deadline: float = DEFAULT_MIG_DEADLINE  # a MIG create/destroy overrunning this: hung
    metrics_address: str = ""  # HOST:PORT serving Prometheus /metrics; empty: no endpoint
    # The driver root as the host names it, for CDI specs (default: driver_root).
    host_driver_root: Path | None = None
    # The NVIDIA kernel driver's /proc directory (default: <proc_root>/driver/nvidia).
    nvidia_proc_dir: Path | None = None

    @property
    def plugin_dir(self) -> Path:
        return self.plugin_config().plugin_dir

    @property
    def dra_socket(self) -> Path:
        return self.plugin_config().dra_socket

    @property
    def registration_socket(self) -> Path:
        return self.plugin_config().registration_socket

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

    def plugin_config(self) -> PluginConfig:
        return PluginConfig(
            driver_name=self.driver_name,
            node_name=self.node_name,
            plugins_dir=self.plugins_dir,
            registry_dir=self.registry_dir,
            health=self.health,
        )

    def plugin_options(self) -> PluginOptions:
        return PluginOptions(
            health_resend_interval=self.health_resend_interval,
            health_check_interval=self.health_poll_interval,
            registration_backoff=self.registration_backoff,
            shutdown_grace=self.shutdown_grace,
        )

    def monitor_config(self) -> MonitorConfig:
        return MonitorConfig(
            poll_interval=self.health_poll_interval,
            deadline=self.health_nvml_deadline,
            policy=PolicyConfig(
                hold_seconds=self.health_hold,
                ignored_xids=frozenset(self.health_ignored_xids),
                temperature_threshold_c=self.health_temperature_threshold,
            ),
        )

    def publisher_config(self) -> PublisherConfig:
        return PublisherConfig(
            driver_name=self.driver_name,
            node_name=self.node_name,
            partitionable_devices=self.partitionable_devices or self.dynamic_mig,
            dynamic_mig=self.dynamic_mig,
            taint_policy=TaintPolicy(
                evict=frozenset(self.health_evict),
                informational_degraded=self.health_degraded_taint,
            ),
        )

    def claim_status_config(self) -> ClaimStatusConfig:
        return ClaimStatusConfig(driver_name=self.driver_name, pool_name=self.node_name)

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
            dynamic_mig=self.dynamic_mig,
        )


# --- value parsers: each raises ArgumentTypeError with a message for the user -----------

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def parse_bool(text: str) -> bool:
    """The one spelling of a boolean in an environment variable."""
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false (or 1/0, yes/no), got {text!r}")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def positive_seconds(text: str) -> float:
    value = _seconds(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def non_negative_seconds(text: str) -> float:
    value = _seconds(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def xid_list(text: str) -> tuple[int, ...]:
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


def evict_list(text: str) -> tuple[str, ...]:
    """Comma-separated reasons or recovery classes; empty or "none" evicts for none."""
    if text.strip().lower() in ("", "none"):
        return ()
    words = sorted({w.strip().lower() for w in text.split(",") if w.strip()})
    for word in words:
        problem = evict_word_problem(word)
        if problem:
            raise argparse.ArgumentTypeError(problem)
    return tuple(words)


def celsius(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of degrees: {text!r}") from None
    if not 0 <= value <= 200:
        raise argparse.ArgumentTypeError(f"must be 0 (off) to 200, got {text}")
    return value


def metrics_address(text: str) -> str:
    if text.strip() == "":
        return ""
    try:
        parse_host_port(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text.strip()


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def log_level(text: str) -> str:
    value = text.strip().upper()
    if value == "WARN":
        value = "WARNING"
    if value not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(
            f"unknown log level {text!r}; one of {', '.join(LOG_LEVELS)}"
        )
    return value


def _text(text: str) -> str:
    return text


def _path(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path")
    return Path(text)


def _optional_path(text: str) -> Path | None:
    """A path whose empty value means unset (the flag's documented default)."""
    return Path(text) if text.strip() else None


# --- the table ---------------------------------------------------------------------------

RUN, INVENTORY, SLICES, CLEANUP, PROBE = "run", "inventory", "slices", "cleanup", "probe"
_ALL = frozenset({RUN, INVENTORY, SLICES, CLEANUP, PROBE})
_NVML = frozenset({RUN, INVENTORY, SLICES})


@dataclass(frozen=True)
class Flag:
    """One setting: its flag, environment twin, parser, default and help."""

    flag: str
    env: str
    parse: Callable[[str], Any]
    default: Any  # a parsed value; None: unset (help says what unset means)
    help: str
    commands: frozenset[str]
    group: str
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    boolean: bool = False

    @property
    def dest(self) -> str:
        return self.flag[2:].replace("-", "_")

    def shown_default(self) -> str:
        if self.boolean:
            return "on" if self.default else "off"
        if isinstance(self.default, tuple):
            return ",".join(map(str, self.default)) or "none"
        if self.default == "":
            return "empty"
        return str(self.default)


_D = Settings()
_IDENTITY, _KUBELET, _NVML_G, _API, _HEALTH, _SLICES_G, _PROCESS = (
    "identity",
    "kubelet plugin",
    "NVML",
    "API server",
    "device health",
    "ResourceSlices",
    "process",
)

FLAGS: tuple[Flag, ...] = (
    Flag("--driver-name", "DRIVER_NAME", _text, _D.driver_name,
         "the DRA driver name: device class selectors and claims refer to it",
         frozenset({RUN, SLICES, CLEANUP, PROBE}), _IDENTITY, "NAME"),
    Flag("--node-name", "NODE_NAME", _text, None,
         "this node's name, also the ResourceSlice pool's name (in a pod: the downward "
         "API's spec.nodeName); required unless --allow-default-node-name",
         frozenset({RUN, SLICES, CLEANUP}), _IDENTITY, "NAME"),
    Flag("--allow-default-node-name", "ALLOW_DEFAULT_NODE_NAME", parse_bool, False,
         f"without a node name, use {LOCAL_NODE_NAME!r} (for a local try, never on a "
         "cluster node)",
         frozenset({RUN, CLEANUP}), _IDENTITY, boolean=True),
    Flag("--plugins-dir", "KUBELET_PLUGINS_DIRECTORY_PATH", _path, _D.plugins_dir,
         "the kubelet's plugins directory; the DRA socket and state go in <dir>/<driver>",
         frozenset({RUN, PROBE}), _KUBELET, "DIR"),
    Flag("--registry-dir", "KUBELET_REGISTRAR_DIRECTORY_PATH", _path, _D.registry_dir,
         "the kubelet's plugin registration directory",
         frozenset({RUN, PROBE}), _KUBELET, "DIR"),
    Flag("--state-dir", "STATE_DIR", _optional_path, None,
         "where the claim checkpoint lives (unset: <plugins-dir>/<driver-name>/dra-driver-gpu)",
         frozenset({RUN, PROBE}), _KUBELET, "DIR"),
    Flag("--cdi-root", "CDI_ROOT", _path, _D.cdi_root,
         "where claim CDI specs are written for the container runtime",
         frozenset({RUN}), _KUBELET, "DIR"),
    Flag("--dev-root", "DEV_ROOT", _path, _D.dev_root,
         "the host root under which /dev is found (a container mounts the host's here)",
         frozenset({RUN}), _KUBELET, "DIR"),
    Flag("--proc-root", "PROC_ROOT", _path, _D.proc_root,
         "the host's /proc (the boot id and the driver's parameters are read there)",
         frozenset({RUN}), _KUBELET, "DIR"),
    Flag("--driver-root", "DRIVER_ROOT_CTR_PATH", _optional_path, None,
         "where this process reads the NVIDIA driver's files (in a pod: where the host's "
         "driver root is mounted, e.g. /driver-root); unset: --host-driver-root",
         frozenset({RUN}), _KUBELET, "DIR"),
    Flag("--host-driver-root", "NVIDIA_DRIVER_ROOT", _optional_path, None,
         "the same directory as the host names it, written into CDI specs: / or e.g. "
         "/run/nvidia/driver; unset: --driver-root, else /",
         frozenset({RUN}), _KUBELET, "DIR"),
    Flag("--nvidia-proc-dir", "NVIDIA_PROC_DIR", _optional_path, None,
         "the NVIDIA kernel driver's /proc/driver/nvidia (MIG capabilities); "
         "unset: <--proc-root>/driver/nvidia",
         frozenset({RUN}), _KUBELET, "DIR"),
    Flag("--health-resend-interval", "HEALTH_RESEND_INTERVAL", positive_seconds,
         _D.health_resend_interval,
         "re-send the full device health list to the kubelet this often even without changes",
         frozenset({RUN}), _KUBELET, "SECONDS"),
    Flag("--registration-backoff", "REGISTRATION_BACKOFF", positive_seconds,
         _D.registration_backoff,
         "first delay before re-registering after the kubelet refused us (doubles, capped)",
         frozenset({RUN}), _KUBELET, "SECONDS"),
    Flag("--shutdown-grace", "SHUTDOWN_GRACE", positive_seconds, _D.shutdown_grace,
         "how long in-flight kubelet calls may run after SIGTERM",
         frozenset({RUN}), _KUBELET, "SECONDS"),
    Flag("--sys-root", "SYS_ROOT", _path, _D.sys_root,
         "the host's /sys (PCIe topology of the GPUs is read there)",
         _NVML, _NVML_G, "DIR"),
    Flag("--nvml-library", "NVML_LIBRARY", _text, None,
         "path of libnvidia-ml.so.1 to load (unset: the dynamic loader's search path)",
         _NVML, _NVML_G, "PATH"),
    Flag("--nvml-backend", "NVML_BACKEND", _text, _D.nvml_backend,
         "how NVML is called: the bundled cffi fast path, the nvidia-ml-py package, or "
         "auto (cffi when it loads)",
         _NVML, _NVML_G, choices=("auto", "cffi", "nvidia-ml-py")),
    Flag("--rescan-interval", "RESCAN_INTERVAL", non_negative_seconds, _D.rescan_interval,
         "re-read the GPUs and MIG devices this often: a GPU that answers again, or a MIG "
         "re-layout by an operator, is published and monitored without a restart; 0 reads "
         "them only at start",
         frozenset({RUN}), _NVML_G, "SECONDS"),
    Flag("--fake-nvml", "FAKE_NVML", _text, None,
         "use the bundled fake NVML library with this topology (small, a100, a100-dynamic, "
         "dgx-h100, dgx-h100-mig7, mixed, or a topology file): a simulated node for demos "
         "and tests",
         _NVML, _NVML_G, "TOPOLOGY"),
    Flag("--kubeconfig", "KUBECONFIG", _text, None,
         "kubeconfig file of the API server (unset: the pod's service account)",
         frozenset({RUN, CLEANUP}), _API, "FILE"),
    Flag("--claim-device-status", "CLAIM_DEVICE_STATUS", parse_bool, _D.claim_device_status,
         "write each prepared device's conditions (Ready, Healthy) and data (UUID, MIG "
         "profile) into ResourceClaim status.devices by server-side apply; needs RBAC "
         "patch on resourceclaims/status, turns itself off where the server drops the field",
         frozenset({RUN}), _API, boolean=True),
    Flag("--health", "DEVICE_HEALTH", parse_bool, _D.health,
         "watch device health (XIDs, ECC, GPU lost, ...), stream it to the kubelet and "
         "taint unhealthy devices",
         frozenset({RUN}), _HEALTH, boolean=True),
    Flag("--health-poll-interval", "HEALTH_POLL_INTERVAL", positive_seconds,
         _D.health_poll_interval,
         "sample degradation signals (ECC, row remapping, clocks, PCIe, temperature) this often",
         frozenset({RUN}), _HEALTH, "SECONDS"),
    Flag("--health-hold", "HEALTH_HOLD", non_negative_seconds, _D.health_hold,
         "an XID, ECC or recovery-action condition clears only after this long without a "
         "repeat, once the GPU answers NVML normally",
         frozenset({RUN}), _HEALTH, "SECONDS"),
    Flag("--health-ignored-xids", "HEALTH_IGNORED_XIDS", xid_list, _D.health_ignored_xids,
         "XIDs that are application errors, not device faults; 'none' to ignore none",
         frozenset({RUN}), _HEALTH, "XID,..."),
    Flag("--health-temperature-threshold", "HEALTH_TEMPERATURE_THRESHOLD", celsius,
         _D.health_temperature_threshold,
         "a GPU at or above this temperature is Degraded; 0 turns the check off",
         frozenset({RUN}), _HEALTH, "CELSIUS"),
    Flag("--health-evict", "HEALTH_EVICT", evict_list, _D.health_evict,
         "evict the pods using an Unhealthy device (NoExecute taint instead of NoSchedule) "
         "when its reason or recovery class is listed, e.g. gpu-lost,reset-required,xid-79 "
         f"or node-reboot,gpu-reset; {EVICT_ALL!r} for every Unhealthy device; 'none' evicts "
         "for none",
         frozenset({RUN}), _HEALTH, "REASON,..."),
    Flag("--health-degraded-taint", "HEALTH_DEGRADED_TAINT", parse_bool,
         _D.health_degraded_taint,
         "give Degraded devices an informational <driver>/degraded taint (effect None: the "
         "scheduler ignores it) where the API server is 1.35 or newer",
         frozenset({RUN}), _HEALTH, boolean=True),
    Flag("--health-nvml-deadline", "HEALTH_NVML_DEADLINE", positive_seconds,
         _D.health_nvml_deadline,
         "an NVML call on one GPU (health sample, compute mode) that takes longer makes that "
         "GPU Unknown (tainted) and fails the claim step; checks of other GPUs go on",
         frozenset({RUN}), _HEALTH, "SECONDS"),
    Flag("--partitionable-devices", "PARTITIONABLE_DEVICES", parse_bool,
         _D.partitionable_devices,
         "publish MIG-capable GPUs as partitionable devices (KEP-4815; Kubernetes >= 1.36): "
         "a counter set per GPU; without --dynamic-mig only the MIG devices that exist "
         "(and a full GPU not in MIG mode) are published, as only those can be prepared",
         frozenset({RUN, SLICES}), _SLICES_G, boolean=True),
    Flag("--dynamic-mig", "DYNAMIC_MIG", parse_bool, _D.dynamic_mig,
         "dynamic MIG (implies --partitionable-devices): a GPU in MIG mode publishes every "
         "(profile, placement) and prepare creates the MIG device, unprepare destroys it; "
         "MIG mode itself is never changed",
         frozenset({RUN, SLICES}), _SLICES_G, boolean=True),
    Flag("--mig-deadline", "MIG_DEADLINE", positive_seconds, _D.mig_deadline,
         "with --dynamic-mig: a MIG device create or destroy that NVML has not finished in "
         "this long fails the claim (the GPU is taken for hung)",
         frozenset({RUN}), _SLICES_G, "SECONDS"),
    Flag("--metrics-address", "METRICS_ADDRESS", metrics_address, _D.metrics_address,
         "serve Prometheus metrics at http://HOST:PORT/metrics, e.g. 127.0.0.1:8080 or :8080 "
         "for every interface (NVIDIA's driver calls this --http-endpoint); empty serves none",
         frozenset({RUN}), _PROCESS, "HOST:PORT"),
    Flag("--log-level", "LOG_LEVEL", log_level, _D.log_level,
         f"log at this level and above: {', '.join(LOG_LEVELS)}",
         _ALL, _PROCESS, "LEVEL"),
)  # fmt: skip

# Read by a child plugin process without being flags: the in-cluster API
# server address and the fake NVML's own settings.
_OTHER_ENV = (
    "KUBERNETES_SERVICE_HOST",
    "KUBERNETES_SERVICE_PORT",
    "FAKE_NVML_TOPOLOGY",
    "FAKE_NVML_FAULTS",
    "FAKE_NVML_STATE_DIR",
)


def flags_for(command: str | None) -> list[Flag]:
    """The flags a subcommand uses (every flag for None)."""
    return [f for f in FLAGS if command is None or command in f.commands]


class _FromEnv:
    """The type function of a flag whose default came from its environment variable.

    argparse parses a string default with the flag's type at parse time; a bad
    value then names the variable as well as the flag.
    """

    def __init__(self, flag: Flag, raw: str) -> None:
        self._flag = flag
        self._raw = raw
        self.__name__ = flag.dest  # argparse names the type in some messages

    def __call__(self, text: str) -> Any:
        try:
            return self._flag.parse(text)
        except argparse.ArgumentTypeError as e:
            if text is self._raw:
                raise argparse.ArgumentTypeError(
                    f"{e} (from environment variable {self._flag.env})"
                ) from None
            raise


def add_arguments(parser: argparse.ArgumentParser, command: str | None = None) -> None:
    """Add the flags `command` uses (all for None), in groups, each with env and default.

    A set environment variable replaces the built-in default and is parsed
    like the flag; the flag itself wins over both.
    """
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in flags_for(command):
        group = groups.get(f.group)
        if group is None:
            group = groups[f.group] = parser.add_argument_group(f.group)
        raw = os.environ.get(f.env, "")
        shown = "" if f.default is None else f"; default: {f.shown_default()}"
        help_text = f"{f.help} (env {f.env}{shown})"
        default: Any = raw if raw else f.default
        parse: Any = _FromEnv(f, raw) if raw else f.parse
        if f.boolean:
            action = group.add_argument(
                f.flag, action=argparse.BooleanOptionalAction, default=default, help=help_text
            )
            action.type = parse  # parses a string default (the env value) at parse time
        else:
            group.add_argument(
                f.flag,
                type=parse,
                default=default,
                metavar=f.metavar,
                choices=f.choices,
                help=help_text,
            )
    parser.set_defaults(_settings_command=command)


def hermetic_environ(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment without any variable that would steer a child `dra-driver`.

    For launching a plugin process whose behaviour depends on its flags alone
    (the demo, the end-to-end tests), whatever the caller's shell exports.
    """
    drop = {f.env for f in FLAGS}.union(_OTHER_ENV)
    source = os.environ if environ is None else environ
    return {k: v for k, v in source.items() if k not in drop}


# Subcommands that act on a cluster node and so must know which one.
_NEEDS_NODE_NAME = frozenset({RUN, CLEANUP})


def from_args(ns: argparse.Namespace) -> Settings:
    """Settings from a namespace add_arguments() filled; SettingsError if they do not fit."""
    values: dict[str, Any] = {}
    for f in FLAGS:
        if hasattr(ns, f.dest):
            values[f.dest] = getattr(ns, f.dest)
    command = getattr(ns, "_settings_command", None)
    allow_default = values.pop("allow_default_node_name", False)
    if not values.get("node_name"):
        if command in _NEEDS_NODE_NAME and not allow_default:
            raise SettingsError(
                "no node name: pass --node-name or set NODE_NAME (in a pod, from the "
                f"downward API's spec.nodeName); for a local try, --allow-default-node-name "
                f"uses {LOCAL_NODE_NAME!r}"
            )
        values["node_name"] = LOCAL_NODE_NAME
    for key in ("plugins_dir", "registry_dir", "cdi_root", "state_dir"):
        if values.get(key) is not None:
            values[key] = Path(values[key]).absolute()
    for key in (
        "dev_root",
        "proc_root",
        "sys_root",
        "driver_root",
        "host_driver_root",
        "nvidia_proc_dir",
    ):
        if values.get(key) is not None:
            values[key] = Path(values[key])
    if "driver_root" in values and values["driver_root"] is None:
        # One directory named once: the host's driver root, read where it is.
        values["driver_root"] = values.get("host_driver_root") or Path("/")
    if "health_evict" in values:
        values["health_evict"] = tuple(values["health_evict"])
    if "health_ignored_xids" in values:
        values["health_ignored_xids"] = tuple(values["health_ignored_xids"])
    return Settings(**values)
