"""Settings flags/env and the health board's change notification."""

from __future__ import annotations

import argparse
import asyncio
import threading
from pathlib import Path

import pytest

from dra_driver import settings as settings_mod
from dra_driver.health.board import DeviceHealth, Health, HealthBoard
from dra_driver.kubelet.sockets import socket_path_problems


def _parse(argv: list[str]) -> settings_mod.Settings:
    p = argparse.ArgumentParser()
    settings_mod.add_arguments(p)
    return settings_mod.from_args(p.parse_args(argv))


def test_defaults_follow_kubelet_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("NODE_NAME", "DRIVER_NAME", "CDI_ROOT", "KUBELET_PLUGINS_DIRECTORY_PATH"):
        monkeypatch.delenv(var, raising=False)
    s = _parse([])
    assert s.driver_name == "gpu.nvidia.com"
    assert s.dra_socket == Path("/var/lib/kubelet/plugins/gpu.nvidia.com/dra.sock")
    assert s.registration_socket == Path(
        "/var/lib/kubelet/plugins_registry/gpu.nvidia.com-reg.sock"
    )
    assert s.cdi_root == Path("/var/run/cdi")
    # Not the plugin directory itself: NVIDIA's driver keeps its checkpoint.json there.
    assert s.state_path == Path("/var/lib/kubelet/plugins/gpu.nvidia.com/dra-driver-gpu")


def test_env_then_flag_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_NAME", "node-a")
    monkeypatch.setenv("DEVICE_HEALTH", "false")
    assert _parse([]).node_name == "node-a"
    assert _parse([]).health is False
    assert _parse(["--node-name", "node-b", "--health"]).node_name == "node-b"


def test_overlong_socket_paths_are_reported(tmp_path: Path) -> None:
    s = _parse(["--plugins-dir", str(tmp_path / ("x" * 120))])
    problems = socket_path_problems(s.dra_socket, s.registration_socket)
    assert len(problems) == 1 and "dra.sock" in problems[0]
    fine = _parse(["--plugins-dir", str(tmp_path)])
    assert socket_path_problems(fine.dra_socket, fine.registration_socket) == []


async def test_board_wakes_waiters_from_other_threads() -> None:
    board = HealthBoard(["gpu-0", "gpu-1"])
    v0 = board.version
    waiter = asyncio.create_task(board.wait_changed(v0, timeout=5))
    await asyncio.sleep(0)
    t = threading.Thread(
        target=board.update, args=([DeviceHealth("gpu-1", Health.UNHEALTHY, "xid 79", "xid-79")],)
    )
    t.start()
    assert await asyncio.wait_for(waiter, 2) == v0 + 1
    t.join()
    snap = {d.device: d for d in board.snapshot()}
    assert snap["gpu-1"].health is Health.UNHEALTHY and snap["gpu-1"].reason == "xid-79"
    assert snap["gpu-0"].health is Health.HEALTHY


async def test_board_ignores_no_op_updates_and_unknown_devices() -> None:
    board = HealthBoard(["gpu-0"])
    assert not board.update([DeviceHealth("gpu-0", Health.HEALTHY)])
    assert not board.update([DeviceHealth("gpu-9", Health.UNHEALTHY)])
    assert await board.wait_changed(board.version, timeout=0.05) == board.version


async def test_board_follows_inventory_changes() -> None:
    board = HealthBoard(["gpu-0", "gpu-1"])
    v = board.version
    board.set_devices(["gpu-1", "gpu-2"])
    assert [d.device for d in board.snapshot()] == ["gpu-1", "gpu-2"]
    assert board.version == v + 1
    board.set_devices(["gpu-1", "gpu-2"])
    assert board.version == v + 1


def test_hermetic_environ_drops_every_flag_variable() -> None:
    parser = argparse.ArgumentParser()
    settings_mod.add_arguments(parser)
    flag_vars = {"NODE_NAME", "KUBECONFIG", "CDI_ROOT", "NVML_BACKEND", "HEALTH_HOLD", "FAKE_NVML"}
    environ = {name: "x" for name in flag_vars} | {
        "FAKE_NVML_TOPOLOGY": "small",
        "KUBERNETES_SERVICE_HOST": "10.0.0.1",
        "PATH": "/usr/bin",
        "HOME": "/root",
    }
    assert settings_mod.hermetic_environ(environ) == {"PATH": "/usr/bin", "HOME": "/root"}
