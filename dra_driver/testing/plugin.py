"""A `python -m dra_driver run` child process: start, wait until ready, stop.

The one way the demo, the end-to-end tests and the benchmarks launch a plugin.
The child gets a hermetic environment (`settings.hermetic_environ()`: nothing
the caller's shell exports steers it, so its flags alone decide), this very
package on PYTHONPATH (it may run in any directory), and, with a topology, the
bundled fake NVML with a fault log of its own under the run's root.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_DRIVER = "gpu.nvidia.com"


class PluginExited(RuntimeError):
    """The plugin exited before it was ready; the message carries its log."""


@dataclass
class PluginProcess:
    """A running `dra-driver run` and the paths a caller needs to poke at it."""

    root: Path
    proc: subprocess.Popen[bytes]
    log_path: Path
    plugins_dir: Path
    registry_dir: Path
    cdi_root: Path
    state_dir: Path
    fake_nvml_state: Path
    fault_log: Path | None
    driver_name: str = DEFAULT_DRIVER
    node_name: str = ""
    env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    started: float = 0.0  # time.monotonic() at exec

    @classmethod
    def start(
        cls,
        root: Path,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        *,
        node_name: str,
        driver_name: str = DEFAULT_DRIVER,
        topology: str | None = "small",
        nvml_backend: str = "auto",
        cwd: Path | None = None,
        log_path: Path | None = None,
        new_session: bool = False,
    ) -> PluginProcess:
        """Exec the plugin with its directories under root.

        topology: run on the bundled fake NVML with this topology (name or
        file) and the fault log <root>/fakenvml/<name>.faults.jsonl; None
        leaves NVML to extra_args. extra_args come last, so they override the
        defaults set here (argparse keeps the last value); env is applied on
        top of the hermetic environment.
        """
        from .. import settings as settings_mod

        plugins_dir, registry_dir = root / "plugins", root / "registry"
        cdi_root, state_dir = root / "cdi", root / "state"
        fake_state = root / "fakenvml"
        args = [
            sys.executable,
            "-m",
            "dra_driver",
            "run",
            f"--driver-name={driver_name}",
            f"--node-name={node_name}",
            f"--plugins-dir={plugins_dir}",
            f"--registry-dir={registry_dir}",
            f"--cdi-root={cdi_root}",
            f"--state-dir={state_dir}",
            f"--nvml-backend={nvml_backend}",
            f"--sys-root={root / 'sys'}",
            f"--dev-root={root}",
            f"--driver-root={root}",
        ]
        full_env = settings_mod.hermetic_environ()
        package_root = str(Path(__file__).resolve().parents[2])
        full_env["PYTHONPATH"] = os.pathsep.join(
            [package_root, *([full_env["PYTHONPATH"]] if full_env.get("PYTHONPATH") else [])]
        )
        fault_log = None
        if topology is not None:
            from .fakenvml import (
                ENV_FAULTS,
                ENV_STATE_DIR,
                ENV_TOPOLOGY,
                library_path,
                load_topology,
            )

            fault_log = fake_state / f"{load_topology(topology).name}.faults.jsonl"
            args.append(f"--nvml-library={library_path()}")
            full_env.update(
                {
                    ENV_TOPOLOGY: topology,
                    ENV_STATE_DIR: str(fake_state),
                    ENV_FAULTS: str(fault_log),
                }
            )
        args.extend(extra_args)
        full_env.update(env or {})
        if env and "FAKE_NVML_FAULTS" in env:
            fault_log = Path(env["FAKE_NVML_FAULTS"])
        root.mkdir(parents=True, exist_ok=True)
        log_path = log_path or root / "plugin.log"
        with open(log_path, "ab") as log:
            started = time.monotonic()
            proc = subprocess.Popen(
                args,
                cwd=cwd or root,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                close_fds=True,
                # Its own session: a terminal's Ctrl-C reaches only the caller,
                # which stops the plugin in order.
                start_new_session=new_session,
            )
        return cls(
            root=root,
            proc=proc,
            log_path=log_path,
            plugins_dir=plugins_dir,
            registry_dir=registry_dir,
            cdi_root=cdi_root,
            state_dir=state_dir,
            fake_nvml_state=fake_state,
            fault_log=fault_log,
            driver_name=driver_name,
            node_name=node_name,
            env=full_env,
            args=args,
            started=started,
        )

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

    def wait_ready(self, timeout: float = 10.0, poll: float = 0.01) -> float:
        """Wait for the registration socket (the last start step); seconds since exec."""
        deadline = time.monotonic() + timeout
        while True:
            if self.registration_socket.is_socket():
                return time.monotonic() - self.started
            if not self.alive():
                raise PluginExited(
                    f"plugin exited with {self.returncode} before it was ready:\n{self.log_text()}"
                )
            if time.monotonic() >= deadline:
                raise TimeoutError(f"plugin not ready within {timeout}s:\n{self.log_text()}")
            time.sleep(poll)

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
