"""CDI specs checked against the CDI spec rules (written out independently here)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from dra_driver.inventory import Inventory
from dra_driver.prepare.cdi import (
    CdiError,
    CdiSpecs,
    HostLayout,
    InvalidClaimUid,
    SpecDevice,
    check_claim_uid,
    minimum_cdi_version,
)
from dra_driver.testing.simhost import NVIDIA_CAPS_MAJOR, SimHost, make_inventory, populate_host

# --- an independent validator, from reference/kubelet-dra-protocol.md section 6 ---------

KNOWN = ["0.1.0", "0.2.0", "0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0", "1.1.0"]
VENDOR_CLASS = re.compile(r"^[A-Za-z]([A-Za-z0-9_.-]*[A-Za-z0-9])?$")
DEVICE_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.:-]*[A-Za-z0-9])?$")
HOOK_NAMES = {
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
}
EDIT_KEYS = {
    "env",
    "deviceNodes",
    "mounts",
    "hooks",
    "intelRdt",
    "additionalGids",
    "netDevices",
}
NODE_KEYS = {"path", "hostPath", "type", "major", "minor", "fileMode", "permissions", "uid", "gid"}


def _v(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split("."))


def required_version(spec: Mapping[str, Any]) -> str:
    edits = [d.get("containerEdits", {}) for d in spec["devices"]]
    edits.append(spec.get("containerEdits", {}))
    need = "0.3.0"

    def bump(v: str) -> None:
        nonlocal need
        need = max(need, v, key=_v)

    if any(m.get("type") for e in edits for m in e.get("mounts", [])):
        bump("0.4.0")
    if any(not d["name"][0].isalpha() for d in spec["devices"]):
        bump("0.5.0")
    if any(n.get("hostPath") for e in edits for n in e.get("deviceNodes", [])):
        bump("0.5.0")
    if spec.get("annotations") or any(d.get("annotations") for d in spec["devices"]):
        bump("0.6.0")
    if "." in spec["kind"].split("/", 1)[1]:
        bump("0.6.0")
    if any("intelRdt" in e or e.get("additionalGids") for e in edits):
        bump("0.7.0")
    if any(e.get("netDevices") for e in edits):
        bump("1.1.0")
    return need


def _check_env(env: Any) -> None:
    assert isinstance(env, list)
    for e in env:
        key, eq, _ = e.partition("=")
        assert eq and key, f"env entry {e!r} is not KEY=VALUE"


def _check_edits(edits: Mapping[str, Any]) -> None:
    assert set(edits) <= EDIT_KEYS, set(edits) - EDIT_KEYS
    _check_env(edits.get("env", []))
    for n in edits.get("deviceNodes", []):
        assert set(n) <= NODE_KEYS and n["path"].startswith("/")
        assert n.get("type", "c") in {"b", "c", "u", "p"}
        for k in ("major", "minor"):
            assert isinstance(n.get(k, 0), int) and n.get(k, 0) >= 0
        if "major" in n:
            assert n.get("type") == "c"
    for m in edits.get("mounts", []):
        assert set(m) <= {"hostPath", "containerPath", "options", "type"}
        assert m["hostPath"].startswith("/") and m["containerPath"].startswith("/")
        assert all(isinstance(o, str) for o in m.get("options", []))
    for h in edits.get("hooks", []):
        assert set(h) <= {"hookName", "path", "args", "env", "timeout"}
        assert h["hookName"] in HOOK_NAMES and h["path"].startswith("/")
        assert all(isinstance(a, str) for a in h.get("args", []))
        _check_env(h.get("env", []))


def validate_spec(spec: Mapping[str, Any]) -> None:
    """Raise AssertionError unless spec is a valid CDI spec at its lowest version."""
    assert set(spec) <= {"cdiVersion", "kind", "annotations", "devices", "containerEdits"}
    assert spec["cdiVersion"] in KNOWN
    vendor, slash, cls = spec["kind"].partition("/")
    assert slash and VENDOR_CLASS.match(vendor) and VENDOR_CLASS.match(cls), spec["kind"]
    assert spec["devices"], "a spec needs at least one device"
    names = [d["name"] for d in spec["devices"]]
    assert len(names) == len(set(names)), "device names must be unique"
    for d in spec["devices"]:
        assert set(d) <= {"name", "annotations", "containerEdits"}
        assert DEVICE_NAME.match(d["name"]), d["name"]
        _check_edits(d["containerEdits"])
    _check_edits(spec.get("containerEdits", {}))
    need = required_version(spec)
    assert _v(spec["cdiVersion"]) >= _v(need), f"{spec['cdiVersion']} < required {need}"
    assert spec["cdiVersion"] == need, f"{spec['cdiVersion']} is not the lowest ({need})"


# --- fixtures -------------------------------------------------------------------------------

UID_DIGIT = "0f9a3c5e-1111-4222-8333-944455556666"
UID_LETTER = "af9a3c5e-1111-4222-8333-944455556666"


@pytest.fixture
def inv() -> Inventory:
    return make_inventory(gpus=2, mig_gpus=[1])


def specs_for(tmp_path: Path, inv: Inventory, **kw: Any) -> tuple[CdiSpecs, SimHost]:
    host = populate_host(tmp_path / "host", inv, **kw)
    layout = HostLayout(host.dev_root, host.proc_root, host.driver_root, lambda: inv.driver_version)
    return CdiSpecs(tmp_path / "cdi", "gpu.nvidia.com", layout), host


def dev(inv: Inventory, name: str, admin: bool = False) -> SpecDevice:
    d = inv.device(name)
    assert d is not None
    return SpecDevice(d, admin)


# --- tests ----------------------------------------------------------------------------------


def test_gpu_spec_is_valid_at_lowest_version(tmp_path: Path, inv: Inventory) -> None:
    specs, _ = specs_for(tmp_path, inv)
    digit = specs.build(UID_DIGIT, [dev(inv, "gpu-0")])
    validate_spec(digit)
    assert digit["cdiVersion"] == "0.5.0"  # the device name starts with a digit
    letter = specs.build(UID_LETTER, [dev(inv, "gpu-0")])
    validate_spec(letter)
    assert letter["cdiVersion"] == "0.3.0"
    assert letter["kind"] == "k8s.gpu.nvidia.com/claim"
    (device,) = letter["devices"]
    assert device["name"] == f"{UID_LETTER}-gpu-0"
    assert device["containerEdits"]["deviceNodes"] == [{"path": "/dev/nvidia0"}]
    gpu = inv.device("gpu-0")
    assert gpu is not None
    assert device["containerEdits"]["env"] == [f"NVIDIA_DRA_DEVICE_GPU_0_UUID={gpu.uuid}"]
    assert letter["containerEdits"]["deviceNodes"] == [
        {"path": "/dev/nvidiactl"},
        {"path": "/dev/nvidia-uvm"},
        {"path": "/dev/nvidia-uvm-tools"},
    ]
    assert specs.device_id(UID_LETTER, "gpu-0") == f"k8s.gpu.nvidia.com/claim={UID_LETTER}-gpu-0"


def test_validator_rejects_what_cdi_rejects() -> None:
    good = {
        "cdiVersion": "0.3.0",
        "kind": "k8s.gpu.nvidia.com/claim",
        "devices": [{"name": "a", "containerEdits": {"env": ["A=1"]}}],
    }
    validate_spec(good)
    for bad in (
        {**good, "cdiVersion": "0.9.0"},
        {**good, "cdiVersion": "0.5.0"},  # valid but not the lowest
        {**good, "kind": "gpu"},
        {**good, "kind": "k8s.gpu.nvidia.com/claim.x"},  # class with a dot needs 0.6.0
        {**good, "devices": []},
        {**good, "devices": [{"name": "0a", "containerEdits": {}}]},  # digit needs 0.5.0
        {**good, "devices": [{"name": "a/b", "containerEdits": {}}]},
        {**good, "devices": [{"name": "a", "containerEdits": {"env": ["NOVALUE"]}}]},
        {**good, "extra": 1},
    ):
        with pytest.raises(AssertionError):
            validate_spec(bad)


def test_minimum_version_rules() -> None:
    base = {"kind": "v.x/c", "devices": [{"name": "a", "containerEdits": {}}]}
    assert minimum_cdi_version(base) == "0.3.0"
    mounts = {
        "containerEdits": {"mounts": [{"hostPath": "/a", "containerPath": "/a", "type": "b"}]}
    }
    assert minimum_cdi_version({**base, **mounts}) == "0.4.0"
    host_path = {"containerEdits": {"deviceNodes": [{"path": "/d", "hostPath": "/e"}]}}
    assert minimum_cdi_version({**base, **host_path}) == "0.5.0"
    assert minimum_cdi_version({**base, "annotations": {"a": "b"}}) == "0.6.0"
    assert minimum_cdi_version({**base, "kind": "v.x/c.d"}) == "0.6.0"
    assert minimum_cdi_version({**base, "containerEdits": {"additionalGids": [5]}}) == "0.7.0"
    net = {"containerEdits": {"netDevices": [{"hostInterfaceName": "a", "name": "b"}]}}
    assert minimum_cdi_version({**base, **net}) == "1.1.0"


def test_mig_spec_has_capability_nodes(tmp_path: Path, inv: Inventory) -> None:
    specs, host = specs_for(tmp_path, inv)
    name = "gpu-1-mig-3g40gb-9-4"
    spec = specs.build(UID_LETTER, [dev(inv, name)])
    validate_spec(spec)
    nodes = spec["devices"][0]["containerEdits"]["deviceNodes"]
    assert nodes[0] == {"path": "/dev/nvidia1"}
    d = inv.device(name)
    assert d is not None and d.mig is not None
    access = host.proc_root / f"driver/nvidia/capabilities/gpu1/mig/gi{d.mig.gpu_instance_id}"
    gi_minor = int((access / "access").read_text().split()[1])
    ci_minor = int((access / f"ci{d.mig.compute_instance_id}/access").read_text().split()[1])
    assert nodes[1:] == [
        {
            "path": f"/dev/nvidia-caps/nvidia-cap{m}",
            "type": "c",
            "major": NVIDIA_CAPS_MAJOR,
            "minor": m,
        }
        for m in (gi_minor, ci_minor)
    ]


def test_missing_mig_capability_is_a_clear_error(tmp_path: Path, inv: Inventory) -> None:
    specs, host = specs_for(tmp_path, inv)
    for p in (host.proc_root / "driver/nvidia/capabilities/gpu1/mig/gi1").rglob("access"):
        p.unlink()
    with pytest.raises(CdiError, match=r"cannot read MIG capability file .*gi1/access"):
        specs.build(UID_LETTER, [dev(inv, "gpu-1-mig-3g40gb-9-0")])


def test_real_character_devices_carry_major_minor(tmp_path: Path, inv: Inventory) -> None:
    specs, host = specs_for(tmp_path, inv)
    ctl = host.dev_root / "dev/nvidiactl"
    ctl.unlink()
    ctl.symlink_to("/dev/null")  # a real char device (1:3) stands in for nvidiactl
    (host.dev_root / "dev/nvidia-uvm-tools").unlink()
    spec = specs.build(UID_LETTER, [dev(inv, "gpu-0")])
    validate_spec(spec)
    st = os.stat("/dev/null")
    assert spec["containerEdits"]["deviceNodes"] == [
        {
            "path": "/dev/nvidiactl",
            "type": "c",
            "major": os.major(st.st_rdev),
            "minor": os.minor(st.st_rdev),
        },
        {"path": "/dev/nvidia-uvm"},
    ]


def test_missing_gpu_node_fails(tmp_path: Path, inv: Inventory) -> None:
    specs, host = specs_for(tmp_path, inv)
    (host.dev_root / "dev/nvidia0").unlink()
    with pytest.raises(CdiError, match="/dev/nvidia0 does not exist"):
        specs.build(UID_LETTER, [dev(inv, "gpu-0")])


def test_cdi_hook_adds_library_mounts_and_hooks(tmp_path: Path, inv: Inventory) -> None:
    specs, host = specs_for(tmp_path, inv, cdi_hook=True)
    spec = specs.build(UID_LETTER, [dev(inv, "gpu-0", admin=True)])
    validate_spec(spec)
    edits = spec["containerEdits"]
    arch = os.uname().machine
    libdir = f"/usr/lib/{arch}-linux-gnu"
    ver = inv.driver_version
    assert {m["containerPath"] for m in edits["mounts"]} == {
        f"{libdir}/libcuda.so.{ver}",
        f"{libdir}/libnvidia-ml.so.{ver}",
        f"{libdir}/libnvidia-ptxjitcompiler.so.{ver}",
        "/usr/bin/nvidia-smi",
    }
    assert all(m["hostPath"].startswith(str(host.driver_root)) for m in edits["mounts"])
    hook = str(host.driver_root / "usr/bin/nvidia-cdi-hook")
    symlinks, ldcache = edits["hooks"]
    assert symlinks["path"] == hook and symlinks["args"][:2] == [
        "nvidia-cdi-hook",
        "create-symlinks",
    ]
    assert f"libcuda.so.{ver}::{libdir}/libcuda.so.1" in symlinks["args"]
    assert ldcache["args"] == ["nvidia-cdi-hook", "update-ldcache", "--folder", libdir]
    env = spec["devices"][0]["containerEdits"]["env"]
    assert "NVIDIA_DRA_DEVICE_GPU_0_ADMIN_ACCESS=true" in env


def test_write_is_atomic_named_and_removable(tmp_path: Path, inv: Inventory) -> None:
    specs, _ = specs_for(tmp_path, inv)
    spec = specs.build(UID_LETTER, [dev(inv, "gpu-0")])
    path = specs.write(UID_LETTER, spec)
    assert path == tmp_path / "cdi" / f"k8s.gpu.nvidia.com-claim_{UID_LETTER}.json"
    assert json.loads(path.read_bytes()) == spec
    assert path.stat().st_mode & 0o777 == 0o644
    # Only our .json file is visible to a runtime; hidden helpers never end in .json.
    visible = [n for n in os.listdir(path.parent) if n.endswith((".json", ".yaml"))]
    assert visible == [path.name]
    assert specs.claim_uids() == [UID_LETTER]
    assert specs.remove(UID_LETTER) and not path.exists()
    assert not specs.remove(UID_LETTER)  # idempotent


def test_staged_spec_is_invisible_until_commit(tmp_path: Path, inv: Inventory) -> None:
    specs, _ = specs_for(tmp_path, inv)
    staged = specs.stage(UID_LETTER, specs.build(UID_LETTER, [dev(inv, "gpu-0")]))
    assert specs.claim_uids() == [] and staged.temp.exists()
    assert not staged.temp.name.endswith((".json", ".yaml"))
    specs.commit(staged)
    assert specs.claim_uids() == [UID_LETTER]


@pytest.mark.parametrize(
    "uid", ["../../etc/passwd", "AF9A3C5E-1111-4222-8333-944455556666", "", "x" * 36, "a/b"]
)
def test_uids_never_reach_a_path_unchecked(tmp_path: Path, inv: Inventory, uid: str) -> None:
    specs, _ = specs_for(tmp_path, inv)
    with pytest.raises(InvalidClaimUid):
        specs.path(uid)
    with pytest.raises(InvalidClaimUid):
        check_claim_uid(uid)


def test_sweep_removes_orphans_and_dead_writers_files(tmp_path: Path, inv: Inventory) -> None:
    specs, _ = specs_for(tmp_path, inv)
    for uid in (UID_LETTER, UID_DIGIT):
        specs.write(uid, specs.build(uid, [dev(inv, "gpu-0")]))
    dead = tmp_path / "cdi" / ".k8s.gpu.nvidia.com-claim_.tmp-deadbeef-1"
    live = tmp_path / "cdi" / ".k8s.gpu.nvidia.com-claim_.tmp-livepeer-2"
    dead_spare = tmp_path / "cdi" / ".k8s.gpu.nvidia.com-claim_.spare-deadbeef-3"
    for p in (dead, live, dead_spare):
        p.write_text("{")
    foreign = tmp_path / "cdi" / "nvidia.com-gpu.json"
    foreign.write_text("{}")
    assert specs.sweep([UID_DIGIT], lambda owner: owner == "livepeer") == [UID_LETTER]
    assert specs.claim_uids() == [UID_DIGIT]
    assert not dead.exists() and not dead_spare.exists()
    assert live.exists()  # a live peer's in-flight temp file is left alone
    assert foreign.exists()  # never touch other vendors' specs


def test_devices_can_be_read_back_for_rebuild(tmp_path: Path, inv: Inventory) -> None:
    specs, _ = specs_for(tmp_path, inv)
    spec = specs.build(
        UID_LETTER, [dev(inv, "gpu-0", admin=True), dev(inv, "gpu-1-mig-3g40gb-9-0")]
    )
    validate_spec(spec)
    got = specs.devices_of(UID_LETTER, spec)
    g0, m0 = inv.device("gpu-0"), inv.device("gpu-1-mig-3g40gb-9-0")
    assert g0 is not None and m0 is not None
    assert got == [
        ("gpu-0", specs.device_id(UID_LETTER, "gpu-0"), True, g0.uuid),
        (m0.name, specs.device_id(UID_LETTER, m0.name), False, m0.uuid),
    ]
