"""hack/oci/mkimage.py: OCI image-layout archives from a rootfs (no cluster needed)."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

MKIMAGE = Path(__file__).resolve().parents[2] / "hack" / "oci" / "mkimage.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mkimage", MKIMAGE)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


mkimage = _load()


def rootfs(tmp: Path) -> Path:
    root = tmp / "rootfs"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "tool").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "bin" / "tool", 0o755)
    os.symlink("tool", root / "bin" / "alias")
    os.link(root / "bin" / "tool", root / "bin" / "hard")
    (root / "etc").mkdir()
    (root / "etc" / "hostname").write_text("x\n")
    return root


def read_archive(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {
            m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }


def blob(files: dict[str, bytes], digest: str) -> bytes:
    data = files["blobs/sha256/" + digest.removeprefix("sha256:")]
    assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
    return data


def test_archive_is_a_valid_oci_layout(tmp_path: Path) -> None:
    out = tmp_path / "img.tar"
    digest = mkimage.build(
        rootfs(tmp_path),
        "example.com/team/tool:1.0",
        out,
        entrypoint=["/bin/tool"],
        cmd=["--x"],
        env=[("A", "b")],
        workdir="/etc",
        labels=[("k", "v")],
        user="65535",
    )
    files = read_archive(out)
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(files["index.json"])
    [desc] = index["manifests"]
    assert desc["digest"] == digest
    assert desc["annotations"] == {
        "io.containerd.image.name": "example.com/team/tool:1.0",
        "org.opencontainers.image.ref.name": "1.0",
    }
    manifest = json.loads(blob(files, digest))
    config = json.loads(blob(files, manifest["config"]["digest"]))
    assert config["os"] == "linux" and config["architecture"] == desc["platform"]["architecture"]
    c: dict[str, Any] = config["config"]
    assert c["Entrypoint"] == ["/bin/tool"] and c["Cmd"] == ["--x"]
    assert "A=b" in c["Env"] and any(e.startswith("PATH=") for e in c["Env"])
    assert (c["WorkingDir"], c["Labels"], c["User"]) == ("/etc", {"k": "v"}, "65535")
    [layer_desc] = manifest["layers"]
    layer = blob(files, layer_desc["digest"])
    assert layer_desc["size"] == len(layer)
    plain = gzip.decompress(layer)
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(plain).hexdigest()]
    with tarfile.open(fileobj=io.BytesIO(plain)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert list(members) == sorted(members)
    assert members["bin/alias"].issym() and members["bin/alias"].linkname == "tool"
    # Hard links: the first name in order carries the data, the other links to it.
    hard, tool = members["bin/hard"], members["bin/tool"]
    assert hard.isfile() and tool.islnk() and tool.linkname == "bin/hard"
    assert hard.mode == 0o755 and hard.uid == 0 and hard.mtime == 0 and hard.uname == "root"


def test_same_rootfs_same_digest(tmp_path: Path) -> None:
    root = rootfs(tmp_path)
    a = mkimage.build(root, "busybox:test", tmp_path / "a.tar")
    os.utime(root / "etc" / "hostname", (12345, 12345))
    b = mkimage.build(root, "busybox:test", tmp_path / "b.tar")
    assert a == b
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()


@pytest.mark.parametrize(
    ("ref", "full"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("pause:3.10", "docker.io/library/pause:3.10"),
        ("team/img:v1", "docker.io/team/img:v1"),
        ("registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.10"),
        ("localhost/x", "localhost/x:latest"),
        ("reg:5000/a/b:c", "reg:5000/a/b:c"),
    ],
)
def test_reference_is_normalized_as_the_cri_does(ref: str, full: str) -> None:
    assert mkimage.normalize_reference(ref) == full


@pytest.mark.parametrize("ref", ["", "Upper/Case:1", "a//b", "img@sha256:00", "x:"])
def test_bad_reference_is_refused(ref: str) -> None:
    with pytest.raises(mkimage.MkImageError):
        mkimage.normalize_reference(ref)


def test_command_line_errors_are_clear_and_write_nothing(tmp_path: Path) -> None:
    root = rootfs(tmp_path)
    out = tmp_path / "x.tar"
    cases = [
        (["--rootfs", str(tmp_path / "missing")], "is not a directory"),
        (["--rootfs", str(root), "--env", "NOEQUALS"], "KEY=VALUE"),
        (["--rootfs", str(root), "--cmd", "sleep 1"], "JSON list"),
    ]
    for args, message in cases:
        proc = subprocess.run(
            [sys.executable, str(MKIMAGE), *args, "--name", "t:1", "--out", str(out)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert list(tmp_path.glob("x.tar*")) == []
