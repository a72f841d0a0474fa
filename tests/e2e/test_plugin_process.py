"""The kit's PluginProcess and the simhost recipe, as the demo and a person use them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dra_driver.prepare.types import ClaimRef
from dra_driver.testing import (
    ApiServerDouble,
    DraClient,
    PluginExited,
    PluginProcess,
    claim_object,
    register,
)

from .conftest import NODE_NAME, fake_nvml_library

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def root(short_dir: Path) -> Path:
    fake_nvml_library()  # skips (or fails under CI) without the fake library
    return short_dir


def test_the_child_ignores_what_the_callers_shell_exports(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRIVER_NAME", "evil.example.com")
    monkeypatch.setenv("KUBECONFIG", "/nonexistent/kubeconfig")
    monkeypatch.setenv("FAKE_NVML_FAULTS", "/tmp/someone-elses.faults.jsonl")
    p = PluginProcess.start(root, node_name=NODE_NAME)
    try:
        assert p.wait_ready() > 0
        assert p.registration_socket.name == "gpu.nvidia.com-reg.sock"
        assert "KUBECONFIG" not in p.env and "DRIVER_NAME" not in p.env
        assert p.fault_log == root / "fakenvml" / "small.faults.jsonl"
        assert p.env["FAKE_NVML_FAULTS"] == str(p.fault_log)
    finally:
        assert p.stop() == 0, p.log_text()
    assert not p.registration_socket.exists()


def test_an_exit_before_ready_raises_with_the_log(root: Path) -> None:
    p = PluginProcess.start(
        root, ["--nvml-library=/nonexistent/libnvidia-ml.so.1"], node_name=NODE_NAME
    )
    with pytest.raises(PluginExited, match="before it was ready") as info:
        p.wait_ready()
    assert "/nonexistent/libnvidia-ml.so.1" in str(info.value)
    assert p.stop() != 0


async def test_the_simhost_recipe_runs_and_prepares_a_claim(root: Path) -> None:
    """The demo's by-hand recipe: simhost's printed flags are all `run` needs for the host.

    As root the nodes are real character devices (--mknod), and the CDI spec
    carries their type, major and minor, as a container runtime needs them.
    """
    mknod = os.geteuid() == 0
    cmd = [sys.executable, "-m", "dra_driver.testing.simhost", str(root / "host")]
    made = subprocess.run(
        [*cmd, "--topology", "small", *(["--mknod"] if mknod else [])],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    flags = made.stdout.split()
    assert flags[0] == "--fake-nvml=small"
    with ApiServerDouble() as api:
        api.create_node(NODE_NAME)
        p = PluginProcess.start(
            root,
            [*flags, f"--kubeconfig={api.kubeconfig_path(root)}"],
            {"FAKE_NVML_FAULTS": str(root / "faults.jsonl")},
            node_name=NODE_NAME,
            topology=None,
        )
        try:
            p.wait_ready()
            obj = claim_object("", "c", [{"request": "gpu", "device": "gpu-1"}], pool=NODE_NAME)
            del obj["metadata"]["uid"]
            uid = api.create("resourceclaims", obj)["metadata"]["uid"]
            reg = await register(p.registration_socket)
            async with DraClient.for_registration(reg) as dra:
                resp = await dra.prepare([ClaimRef("default", uid, "c")])
            assert resp.claims[uid].error == "", p.log_text()
        finally:
            assert p.stop() == 0, p.log_text()
    spec = json.loads((p.cdi_root / f"k8s.gpu.nvidia.com-claim_{uid}.json").read_text())
    nodes = spec["devices"][0]["containerEdits"]["deviceNodes"]
    gpu = next(n for n in nodes if n["path"] == "/dev/nvidia1")
    if mknod:
        assert gpu == {"path": "/dev/nvidia1", "type": "c", "major": 195, "minor": 1}
    else:
        assert gpu == {"path": "/dev/nvidia1"}
    assert p.fault_log == root / "faults.jsonl" and p.fault_log.exists()
