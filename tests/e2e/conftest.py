"""Shared end-to-end fixtures: the real `python -m dra_driver run` on the fake NVML.

start_plugin() launches the process (the kit's PluginProcess) in its own short
temp directory (unix socket paths must stay under 108 bytes), with a hermetic
environment (no inherited driver settings, no API server unless a test passes
--kubeconfig), and returns the PluginProcess with the paths, pid, log and stop().
Fixtures:
- plugin_factory: function-scoped; everything it started is stopped at teardown;
- module_plugin_factory: the same for a module, to share one process across tests;
- api: an API server double with this node's Node object (modules that share one
  across their tests override it with a module-scoped one);
- root: a short directory for a plugin's sockets and state.

Environment knobs: DRA_E2E_NVML_BACKEND (default "auto": the cffi fast path if
built, else nvidia-ml-py).
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from dra_driver.inventory import Inventory
from dra_driver.settings import Settings
from dra_driver.testing import PluginProcess
from dra_driver.testing.apiserver import ApiServerDouble

__all__ = ["DRIVER_NAME", "NODE_NAME", "PluginFactory", "PluginProcess", "start_plugin"]

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
            pytest.fail(f"fake NVML not available: {e} (CI is set: it must be installed)")
        pytest.skip(f"fake NVML not available: {e}")


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
    fake_nvml_library()
    own_root = root is None
    root = root or Path(tempfile.mkdtemp(prefix="dra-e2e-", dir="/tmp"))
    p = PluginProcess.start(
        root,
        extra_args,
        env,
        node_name=NODE_NAME,
        driver_name=DRIVER_NAME,
        topology=topology,
        nvml_backend=os.environ.get("DRA_E2E_NVML_BACKEND", "auto"),
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


@pytest.fixture
def api() -> Iterator[ApiServerDouble]:
    with ApiServerDouble() as server:
        server.create_node(NODE_NAME)
        yield server


@pytest.fixture
def root(short_dir: Path) -> Path:
    return short_dir
