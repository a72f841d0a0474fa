"""Host versus container paths: the plugin reads through mounts, CDI specs name the host.

In the chart, the host's driver root is mounted at /driver-root and the host's
/proc/driver/nvidia at /host/proc/driver/nvidia. A container runtime applies a
spec on the host, so a spec written in that layout must name host paths only.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest

from dra_driver import settings as settings_mod
from dra_driver.hostpaths import DriverRoot, library_dirs, nvml_library_under
from dra_driver.inventory import Inventory
from dra_driver.prepare.cdi import CdiSpecs, HostLayout, SpecDevice
from dra_driver.testing.simhost import make_inventory, populate_host

HOST_ROOT = Path("/run/nvidia/driver")  # the GPU Operator's driver root on the host
UID = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"


@pytest.fixture
def inv() -> Inventory:
    return make_inventory(gpus=2, mig_gpus=[1])


def _parse(argv: list[str]) -> settings_mod.Settings:
    parser = argparse.ArgumentParser()
    settings_mod.add_arguments(parser, settings_mod.RUN)
    return settings_mod.from_args(parser.parse_args(["--node-name=n", *argv]))


def _container_layout(tmp_path: Path, inv: Inventory) -> tuple[HostLayout, Path]:
    """A simulated node with the driver root where the chart mounts it, in a temp tree."""
    host = populate_host(tmp_path, inv, cdi_hook=True)
    mounted = tmp_path / "driver-root"  # populate_host's driver root: our "/driver-root"
    nvidia_proc = tmp_path / "host-proc-driver-nvidia"
    (host.proc_root / "driver/nvidia").rename(nvidia_proc)
    layout = HostLayout(
        host.dev_root,
        host.proc_root,
        mounted,
        lambda: inv.driver_version,
        host_driver_root=HOST_ROOT,
        nvidia_proc_dir=nvidia_proc,
    )
    return layout, tmp_path


def _all_paths(spec: dict[str, object]) -> list[str]:
    """Every host-side path a runtime would open for this spec."""
    found: list[str] = []
    for obj in [*json.loads(json.dumps(spec)).get("devices", []), spec]:
        edits = obj.get("containerEdits") or {}
        found += [m["hostPath"] for m in edits.get("mounts", [])]
        found += [h["path"] for h in edits.get("hooks", [])]
        found += [n.get("hostPath", n["path"]) for n in edits.get("deviceNodes", [])]
    return found


def test_spec_written_in_container_layout_names_host_paths(tmp_path: Path, inv: Inventory) -> None:
    layout, tree = _container_layout(tmp_path, inv)
    specs = CdiSpecs(tmp_path / "cdi", "gpu.nvidia.com", layout)
    mig = next(d for d in inv.devices if d.mig is not None)
    gpu = next(d for d in inv.devices if d.mig is None)
    spec = specs.build(UID, [SpecDevice(gpu), SpecDevice(mig)])

    paths = _all_paths(spec)
    assert paths, spec
    assert not [p for p in paths if p.startswith(str(tree))], "a container path leaked"
    edits = spec["containerEdits"]
    arch = os.uname().machine
    ver = inv.driver_version
    assert {m["hostPath"] for m in edits["mounts"]} == {
        f"{HOST_ROOT}/usr/lib/{arch}-linux-gnu/libcuda.so.{ver}",
        f"{HOST_ROOT}/usr/lib/{arch}-linux-gnu/libnvidia-ml.so.{ver}",
        f"{HOST_ROOT}/usr/lib/{arch}-linux-gnu/libnvidia-ptxjitcompiler.so.{ver}",
        f"{HOST_ROOT}/usr/bin/nvidia-smi",
    }
    # Inside the workload's container the libraries sit where the toolkit puts them.
    assert all(not m["containerPath"].startswith(str(HOST_ROOT)) for m in edits["mounts"])
    assert {h["path"] for h in edits["hooks"]} == {f"{HOST_ROOT}/usr/bin/nvidia-cdi-hook"}
    # Device nodes are named by their /dev path (the MIG ones found through nvidia_proc_dir).
    nodes = [n["path"] for d in spec["devices"] for n in d["containerEdits"]["deviceNodes"]]
    assert "/dev/nvidia0" in nodes or "/dev/nvidia1" in nodes
    assert any(n.startswith("/dev/nvidia-caps/nvidia-cap") for n in nodes)
    assert all(n.startswith("/dev/") for n in nodes)


def test_same_root_when_not_in_a_container(tmp_path: Path, inv: Inventory) -> None:
    host = populate_host(tmp_path, inv, cdi_hook=True)
    layout = HostLayout(host.dev_root, host.proc_root, host.driver_root, lambda: inv.driver_version)
    edits = layout.driver_edits()
    assert all(m["hostPath"].startswith(str(host.driver_root)) for m in edits["mounts"])


def test_driver_root_flags_default_to_each_other(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("DRIVER_ROOT_CTR_PATH", "NVIDIA_DRIVER_ROOT", "HOST_DRIVER_ROOT"):
        monkeypatch.delenv(var, raising=False)
    s = _parse([])
    assert (s.driver_root, s.host_driver_root_path) == (Path("/"), Path("/"))
    s = _parse(["--host-driver-root", "/run/nvidia/driver"])  # a host run: read it there
    assert (s.driver_root, s.host_driver_root_path) == (HOST_ROOT, HOST_ROOT)
    s = _parse(["--driver-root", "/tmp/sim"])
    assert (s.driver_root, s.host_driver_root_path) == (Path("/tmp/sim"), Path("/tmp/sim"))
    # The chart's environment (NVIDIA's variable names).
    monkeypatch.setenv("DRIVER_ROOT_CTR_PATH", "/driver-root")
    monkeypatch.setenv("NVIDIA_DRIVER_ROOT", "/run/nvidia/driver")
    s = _parse([])
    assert (s.driver_root, s.host_driver_root_path) == (Path("/driver-root"), HOST_ROOT)


def test_nvidia_proc_dir_defaults_under_proc_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NVIDIA_PROC_DIR", raising=False)
    assert _parse(["--proc-root", "/p"]).nvidia_proc_path == Path("/p/driver/nvidia")
    monkeypatch.setenv("NVIDIA_PROC_DIR", "/host/proc/driver/nvidia")
    assert _parse([]).nvidia_proc_path == Path("/host/proc/driver/nvidia")


def test_nvml_library_is_found_under_a_mounted_driver_root(tmp_path: Path) -> None:
    assert nvml_library_under(Path("/")) is None  # the loader's own search
    assert nvml_library_under(tmp_path) is None  # nothing there: the error says so later
    lib = tmp_path / library_dirs()[1] / "libnvidia-ml.so.1"
    lib.parent.mkdir(parents=True)
    lib.write_bytes(b"")
    assert nvml_library_under(tmp_path) == str(lib)
    s = settings_mod.Settings(driver_root=tmp_path)
    assert s.resolved_nvml_library() == str(lib)
    explicit = settings_mod.Settings(driver_root=tmp_path, nvml_library="/x.so")
    assert explicit.resolved_nvml_library() == "/x.so"


def test_to_host_refuses_paths_outside_the_root() -> None:
    root = DriverRoot(Path("/driver-root"), HOST_ROOT)
    assert root.to_host(Path("/driver-root/usr/bin/x")) == HOST_ROOT / "usr/bin/x"
    with pytest.raises(ValueError):
        root.to_host(Path("/etc/passwd"))
