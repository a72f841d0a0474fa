"""Shared end-to-end fixtures: the real `python -m dra_driver run` on the fake NVML.

start_plugin() launches the process in its own short temp directory (unix
socket paths must stay under 108 bytes), with a hermetic environment (no
inherited driver settings, no API server unless a test passes --kubeconfig),
and returns a PluginProcess with the paths, pid, log and stop(). Fixtures:
- plugin_factory: function-scoped; everything it started is stopped at teardown;
- module_plugin_factory: the same for a module, to share one process across tests.

Environment knobs: DRA_E2E_NVML_BACKEND (default "auto": the cffi fast path if
built, else nvidia-ml-py).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dra_driver.inventory import Inventory
from dra_driver.settings import Settings, hermetic_environ

REPO_ROOT = Path(__file__).resolve().parents[2]
DRIVER_NAME = "gpu.nvidia.com"
NODE_NAME = "node-e2e"


def fake_nvml_library() -> str:
    """The built fake libnvidia-ml, or skip the test with the reason (fail under CI)."""
    try:
        from dra_driver.testing.fakenvml import library_path

        return library_path()
    except Exception as e:
        if os.environ.get("CI"):  # CI installs the package, which builds the library
            pytest.fail(f"fake NVML not available: {e}")
        pytest.skip(f"fake NVML not available: {e}")


@dataclass
class PluginProcess:
    """A running `dra-driver run` and everything a test needs to poke at it."""

    root: Path
    proc: subprocess.Popen[bytes]
    log_path: Path
    plugins_dir: Path
    registry_dir: Path
    cdi_root: Path
    state_dir: Path
    fake_nvml_state: Path
    driver_name: str = DRIVER_NAME
    node_name: str = NODE_NAME
    env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def dra_socket(self) -> Path:
        return self.plugins_dir / self.driver_name / "dra.sock"

    @property
    def registration_socket(self) -> Path:
        return self.registry_dir / f"{self.driver_name}-reg.sock"

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_ready(self, timeout: float = 10.0) -> float:
        """Wait for the registration socket (the last start step); returns seconds waited."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.registration_socket.is_socket():
                return time.monotonic() - t0
            if not self.alive():
                raise RuntimeError(
                    f"plugin exited with {self.returncode} before it was ready:\n{self.log_text()}"
                )
            time.sleep(0.01)
        raise TimeoutError(f"plugin not ready within {timeout}s:\n{self.log_text()}")

    def wait_exit(self, timeout: float = 10.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(
                f"plugin did not exit within {timeout}s:\n{self.log_text()}"
            ) from None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Signal the process and wait for it; kills it if it overstays. Idempotent."""
        if self.alive():
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        assert self.proc.returncode is not None
        return self.proc.returncode

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def status_field(self, name: str) -> int:
        """An integer field of /proc/<pid>/status (VmRSS in kB, Threads, ...)."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(name + ":"):
                    return int(line.split()[1])
        raise KeyError(name)

    def rss_kib(self) -> int:
        return self.status_field("VmRSS")


def hermetic_env(root: Path, topology: str, extra: Mapping[str, str] | None) -> dict[str, str]:
    env = hermetic_environ()
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
    )
    env["FAKE_NVML_TOPOLOGY"] = topology
    env["FAKE_NVML_STATE_DIR"] = str(root / "fakenvml")
    env.update(extra or {})
    return env


def start_plugin(
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    *,
    topology: str = "small",
    root: Path | None = None,
    wait: bool = True,
    timeout: float = 10.0,
) -> PluginProcess:
    """Start `python -m dra_driver run` on the fake NVML in a temp dir.

    extra_args come last, so they override the defaults set here (argparse keeps
    the last value). With wait=False the caller handles readiness (or failure).
    """
    library = fake_nvml_library()
    own_root = root is None
    root = root or Path(tempfile.mkdtemp(prefix="dra-e2e-", dir="/tmp"))
    plugins_dir, registry_dir = root / "plugins", root / "registry"
    cdi_root, state_dir = root / "cdi", root / "state"
    args = [
        sys.executable,
        "-m",
        "dra_driver",
        "run",
        f"--driver-name={DRIVER_NAME}",
        f"--node-name={NODE_NAME}",
        f"--plugins-dir={plugins_dir}",
        f"--registry-dir={registry_dir}",
        f"--cdi-root={cdi_root}",
        f"--state-dir={state_dir}",
        f"--nvml-library={library}",
        f"--nvml-backend={os.environ.get('DRA_E2E_NVML_BACKEND', 'auto')}",
        f"--sys-root={root / 'sys'}",
        f"--dev-root={root}",
        f"--driver-root={root}",
        *extra_args,
    ]
    full_env = hermetic_env(root, topology, env)
    log_path = root / "plugin.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            args, cwd=root, env=full_env, stdout=log, stderr=subprocess.STDOUT, close_fds=True
        )
    p = PluginProcess(
        root=root,
        proc=proc,
        log_path=log_path,
        plugins_dir=plugins_dir,
        registry_dir=registry_dir,
        cdi_root=cdi_root,
        state_dir=state_dir,
        fake_nvml_state=root / "fakenvml",
        env=full_env,
        args=args,
    )
    if wait:
        try:
            p.wait_ready(timeout)
        except BaseException:
            p.stop(signal.SIGKILL)
            if own_root:  # the error message carries the log
                shutil.rmtree(root, ignore_errors=True)
            raise
    return p


PluginFactory = Callable[..., PluginProcess]


def _factory() -> tuple[PluginFactory, Callable[[], None]]:
    started: list[PluginProcess] = []

    def factory(*args: object, **kwargs: object) -> PluginProcess:
        p = start_plugin(*args, **kwargs)  # type: ignore[arg-type]
        started.append(p)
        return p

    def cleanup() -> None:
        for p in started:
            p.stop()
            shutil.rmtree(p.root, ignore_errors=True)

    return factory, cleanup


@pytest.fixture
def plugin_factory() -> Iterator[PluginFactory]:
    """start_plugin(), with every started process stopped and its dir removed at teardown."""
    factory, cleanup = _factory()
    yield factory
    cleanup()


@pytest.fixture(scope="module")
def module_plugin_factory() -> Iterator[PluginFactory]:
    """Like plugin_factory, shared by a module (one process for many tests)."""
    factory, cleanup = _factory()
    yield factory
    cleanup()


@pytest.fixture(scope="module")
def inventory() -> Iterator[Inventory]:
    """The small topology's inventory, read in this process from the fake library."""
    library = fake_nvml_library()
    from dra_driver.commands.inventory import load_inventory

    state = tempfile.mkdtemp(prefix="dra-e2e-nvml-")
    saved = {k: os.environ.get(k) for k in ("FAKE_NVML_TOPOLOGY", "FAKE_NVML_STATE_DIR")}
    os.environ.update(FAKE_NVML_TOPOLOGY="small", FAKE_NVML_STATE_DIR=state)
    try:
        yield load_inventory(Settings(nvml_library=library))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(state, ignore_errors=True)
