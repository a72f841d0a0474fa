"""The simulated host: its tree, the run flags it prints, and real device nodes (--mknod)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from dra_driver.prepare.cdi import HostLayout
from dra_driver.sysfs import pcie_root_resolver
from dra_driver.testing import load_topology, simhost

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = simhost.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_prints_run_flags_that_point_at_the_tree(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(capsys, str(tmp_path / "h"), "--topology", "small")
    assert code == 0, err
    flags = dict(line.split("=", 1) for line in out.splitlines())
    root = tmp_path / "h"
    assert flags == {
        "--fake-nvml": "small",
        "--dev-root": str(root / "dev-root"),
        "--proc-root": str(root / "proc"),
        "--driver-root": str(root / "driver-root"),
        "--sys-root": str(root / "sys"),
    }
    topo = load_topology("small")
    for gpu in topo.gpus:
        assert (root / "dev-root/dev" / f"nvidia{gpu.minor}").is_file()
    assert (root / "proc/sys/kernel/random/boot_id").read_text().strip()
    assert os.access(root / "driver-root/usr/bin/nvidia-cdi-hook", os.X_OK)
    assert "boot id in" in err


def test_cli_json_describes_every_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    topo_file = tmp_path / "mine.json"
    topo_file.write_text(load_topology("a100").path.read_text())
    code, out, _ = _run(capsys, str(tmp_path / "h"), "--topology", str(topo_file), "--json")
    assert code == 0
    info = json.loads(out)
    assert info["fake_nvml"] == str(topo_file)  # a file goes by its absolute path
    assert info["device_nodes"] == "regular files"
    assert f"--fake-nvml={topo_file}" in info["run_flags"]
    assert Path(info["boot_id_file"]).is_file()
    assert info["env"]["FAKE_NVML_FAULTS"].startswith(str(tmp_path / "h"))


def test_cli_refuses_a_directory_in_use(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "something").write_text("")
    code, out, err = _run(capsys, str(tmp_path))
    assert (code, out) == (2, "")
    assert err.startswith("simhost: ") and "not a new or empty directory" in err


def test_cli_rejects_an_unknown_topology(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(capsys, str(tmp_path / "h"), "--topology", "nope")
    assert code == 2 and "unknown topology 'nope'" in err
    assert not (tmp_path / "h").exists()


def test_mknod_needs_root(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(simhost.os, "geteuid", lambda: 1000)
    code, _, err = _run(capsys, str(tmp_path / "h"), "--mknod")
    assert code == 2
    assert err.strip() == "simhost: --mknod creates character devices and needs root"


def test_regular_file_nodes_give_paths_and_the_caps_major_from_proc(tmp_path: Path) -> None:
    host = simhost.build(tmp_path / "h", "small")
    layout = HostLayout(host.dev_root, host.proc_root, host.driver_root)
    assert layout.gpu_nodes(1) == [{"path": "/dev/nvidia1"}]
    mig = load_topology("small").gpu(0).mig_devices[0]
    caps = layout.mig_cap_nodes(0, mig.gi_id, mig.ci_id)
    assert [n["major"] for n in caps] == [simhost.NVIDIA_CAPS_MAJOR] * 2


def test_dynamic_mig_hosts_have_capabilities_for_instances_yet_to_be_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(capsys, str(tmp_path / "d"), "--topology", "a100-dynamic", "--dynamic-mig")
    assert code == 0, err
    static = simhost.build(tmp_path / "s", "a100-dynamic")
    topo = load_topology("a100-dynamic")
    raws = topo.raw["gpus"]
    mig_mode = [
        g.minor for g, r in zip(topo.gpus, raws, strict=True) if r.get("mig", {}).get("current")
    ]
    dyn = tmp_path / "d"
    assert mig_mode and len(mig_mode) < len(topo.gpus)
    layout = HostLayout(dyn / "dev-root", dyn / "proc", dyn / "driver-root")
    minors = set()
    for minor in mig_mode:
        for gi in simhost.SPARE_GI_IDS:
            caps = layout.mig_cap_nodes(minor, gi, 0)
            minors.update(n["minor"] for n in caps)
    assert len(minors) == 2 * len(mig_mode) * len(simhost.SPARE_GI_IDS)  # each entry its own
    caps_root = "driver/nvidia/capabilities"
    assert not list((static.proc_root / caps_root).glob("gpu*/mig/gi*"))  # none without it
    full = [g.minor for g in topo.gpus if g.minor not in mig_mode]
    assert not any((dyn / "proc" / caps_root / f"gpu{m}").exists() for m in full)


@needs_root
def test_mknod_makes_character_devices_a_runtime_accepts(tmp_path: Path) -> None:
    host = simhost.build(tmp_path / "h", "small", mknod=True)
    layout = HostLayout(host.dev_root, host.proc_root, host.driver_root)
    topo = load_topology("small")
    for gpu in topo.gpus:
        assert layout.gpu_nodes(gpu.minor) == [
            {"path": f"/dev/nvidia{gpu.minor}", "type": "c", "major": 195, "minor": gpu.minor}
        ]
    control = {n["path"]: (n["type"], n["major"], n["minor"]) for n in layout.control_nodes()}
    uvm = host.majors.nvidia_uvm
    assert control == {
        "/dev/nvidiactl": ("c", 195, 255),
        "/dev/nvidia-uvm": ("c", uvm, 0),
        "/dev/nvidia-uvm-tools": ("c", uvm, 1),
    }
    mig = topo.gpu(0).mig_devices[0]
    for node in layout.mig_cap_nodes(0, mig.gi_id, mig.ci_id):
        st = os.stat(host.dev_root / node["path"].lstrip("/"))
        assert stat.S_ISCHR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o444
        assert (node["type"], node["major"]) == ("c", host.majors.nvidia_caps)
        assert node["minor"] == os.minor(st.st_rdev)
    # The simulated /proc/devices names the majors the nodes carry.
    proc = (host.proc_root / "devices").read_text()
    assert f"{uvm} nvidia-uvm" in proc and f"{host.majors.nvidia_caps} nvidia-caps" in proc


def test_dynamic_majors_avoid_the_hosts_drivers() -> None:
    host = "Character devices:\n195 nvidia-frontend\n508 dax\n510 nvidia-uvm\n511 x\n"
    m = simhost.majors_for_host(host + "\nBlock devices:\n509 blk\n")
    assert (m.nvidia, m.nvidia_uvm) == (195, 510)  # its own driver's major is fine
    assert m.nvidia_caps not in (508, 510, 511) and 384 <= m.nvidia_caps <= 511
    with pytest.raises(simhost.SimHostError, match="belongs to 'other'"):
        simhost.majors_for_host("Character devices:\n195 other\n")


def test_sysfs_links_give_each_gpu_its_pcie_root(tmp_path: Path) -> None:
    host = simhost.build(tmp_path / "h", "small")
    roots = pcie_root_resolver(host.sys_root)
    buses = [g["pci_bus_id"] for g in load_topology("small").raw["gpus"]]
    got = [roots(b[4:].lower()) for b in buses]
    assert all(r is not None and r.startswith("pci0000:") for r in got)
    assert len(set(got)) == len(got)
