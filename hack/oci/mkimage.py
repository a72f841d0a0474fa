#!/usr/bin/env python3
"""Package a root filesystem directory as a one-layer OCI image-layout archive.

No registry can be reached from our machines, so every image a test cluster
runs is made here and loaded with ``ctr -n k8s.io images import FILE.tar``.
The archive is reproducible: entries sorted, owners root, mtimes zero, gzip
without a timestamp, so the same rootfs always gives the same image digest.

    python3 hack/oci/mkimage.py --rootfs DIR --name REF:TAG --out FILE.tar \\
        [--entrypoint '["/bin/sh"]'] [--cmd '["-c","sleep inf"]'] \\
        [--env K=V ...] [--workdir D] [--label K=V ...] [--user U]

The index carries ``io.containerd.image.name`` (the reference as the
container runtime normalises it, e.g. ``docker.io/library/busybox:1``) and
``org.opencontainers.image.ref.name`` (the tag), so ``ctr images import``
names the image without ``--base-name``. Standard library only.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import platform
import stat
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
GOARCH = {
    "x86_64": "amd64",
    "aarch64": "arm64",
    "armv7l": "arm",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


class MkImageError(Exception):
    pass


def normalize_reference(ref: str) -> str:
    """The full name containerd's CRI resolves ``ref`` to (docker.io/library/..., :latest)."""
    if not ref or any(c.isspace() for c in ref) or ref != ref.strip("/"):
        raise MkImageError(f"not an image reference: {ref!r}")
    name, tag = ref, "latest"
    if "@" in ref:
        raise MkImageError(f"give a tag, not a digest: {ref!r}")
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = ref.rsplit(":", 1)
        if not tag:
            raise MkImageError(f"empty tag in {ref!r}")
    parts = name.split("/")
    if len(parts) == 1 or not ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        parts = ["docker.io", *(["library"] if len(parts) == 1 else []), *parts]
    if any(p == "" or p != p.lower() for p in parts[1:]):
        raise MkImageError(f"repository names are lower case, without empty parts: {ref!r}")
    return "/".join(parts) + ":" + tag


def _walk(root: Path) -> list[Path]:
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted(dirnames + filenames):
            out.append(base / name)
    out.sort(key=lambda p: p.relative_to(root).as_posix().encode())
    return out


class _HashingWriter(io.RawIOBase):
    """Passes bytes on to a file while hashing and counting them."""

    def __init__(self, sink: IO[bytes]) -> None:
        self.sink, self.sha, self.size = sink, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self.sha.update(data)
        self.size += len(data)
        self.sink.write(data)
        return len(data)


def write_layer(rootfs: Path, sink: IO[bytes]) -> tuple[str, str, int]:
    """Write rootfs as a gzipped tar to sink; return (diff_id, digest, size)."""
    compressed = _HashingWriter(sink)
    with gzip.GzipFile(fileobj=compressed, mode="wb", mtime=0, compresslevel=6) as gz:
        plain = _HashingWriter(gz)  # type: ignore[arg-type]
        with tarfile.open(fileobj=plain, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            seen: dict[tuple[int, int], str] = {}
            for path in _walk(rootfs):
                arcname = path.relative_to(rootfs).as_posix()
                st = path.lstat()
                info = tarfile.TarInfo(arcname)
                info.mode = stat.S_IMODE(st.st_mode)
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                info.mtime = 0
                key = (st.st_dev, st.st_ino)
                if stat.S_ISREG(st.st_mode) and st.st_nlink > 1 and key in seen:
                    info.type, info.linkname = tarfile.LNKTYPE, seen[key]
                    tar.addfile(info)
                elif stat.S_ISREG(st.st_mode):
                    seen[key] = arcname
                    info.size = st.st_size
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
                elif stat.S_ISDIR(st.st_mode):
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                elif stat.S_ISLNK(st.st_mode):
                    info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
                    tar.addfile(info)
                elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                    info.type = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
                    info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
                    tar.addfile(info)
                elif stat.S_ISFIFO(st.st_mode):
                    info.type = tarfile.FIFOTYPE
                    tar.addfile(info)
                # sockets cannot live in a layer; they are skipped like docker does
    return (
        "sha256:" + plain.sha.hexdigest(),
        "sha256:" + compressed.sha.hexdigest(),
        compressed.size,
    )


def _blob(data: bytes) -> tuple[str, int]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), len(data)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


def _pairs(items: Sequence[str], what: str) -> list[tuple[str, str]]:
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise MkImageError(f"{what} must be KEY=VALUE, got {item!r}")
        out.append((key, value))
    return out


def _json_list(text: str | None, what: str) -> list[str] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise MkImageError(f"{what} must be a JSON list of strings: {e}") from e
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MkImageError(f"{what} must be a JSON list of strings, got {text!r}")
    return value


def build(
    rootfs: Path,
    name: str,
    out: Path,
    *,
    entrypoint: list[str] | None = None,
    cmd: list[str] | None = None,
    env: Sequence[tuple[str, str]] = (),
    workdir: str | None = None,
    labels: Sequence[tuple[str, str]] = (),
    user: str | None = None,
    arch: str | None = None,
) -> str:
    """Write the archive; return the manifest digest."""
    if not rootfs.is_dir():
        raise MkImageError(f"--rootfs {rootfs} is not a directory")
    full = normalize_reference(name)
    tag = full.rsplit(":", 1)[1]
    goarch = arch or GOARCH.get(platform.machine(), platform.machine())
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=out.name + ".", dir=out.parent)
    tmp = Path(tmp_name)
    try:
        with tempfile.TemporaryFile(dir=out.parent) as layer:
            diff_id, layer_digest, layer_size = write_layer(rootfs, layer)
            env_list = [f"{k}={v}" for k, v in env]
            if not any(e.startswith("PATH=") for e in env_list):
                env_list.insert(
                    0, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
                )
            config: dict[str, Any] = {"Env": env_list}
            if entrypoint is not None:
                config["Entrypoint"] = entrypoint
            if cmd is not None:
                config["Cmd"] = cmd
            if workdir:
                config["WorkingDir"] = workdir
            if labels:
                config["Labels"] = dict(labels)
            if user:
                config["User"] = user
            image_config = {
                "created": "1970-01-01T00:00:00Z",
                "architecture": goarch,
                "os": "linux",
                "config": config,
                "rootfs": {"type": "layers", "diff_ids": [diff_id]},
                "history": [
                    {"created": "1970-01-01T00:00:00Z", "created_by": "hack/oci/mkimage.py"}
                ],
            }
            config_bytes = json.dumps(image_config, sort_keys=True, separators=(",", ":")).encode()
            config_digest, config_size = _blob(config_bytes)
            manifest = {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size},
                "layers": [
                    {"mediaType": OCI_LAYER_GZIP, "digest": layer_digest, "size": layer_size}
                ],
            }
            manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
            manifest_digest, manifest_size = _blob(manifest_bytes)
            index = {
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [
                    {
                        "mediaType": OCI_MANIFEST,
                        "digest": manifest_digest,
                        "size": manifest_size,
                        "platform": {"architecture": goarch, "os": "linux"},
                        "annotations": {
                            "io.containerd.image.name": full,
                            "org.opencontainers.image.ref.name": tag,
                        },
                    }
                ],
            }
            with (
                os.fdopen(fd, "wb") as f,
                tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar,
            ):
                _add_bytes(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
                _add_bytes(tar, "index.json", json.dumps(index, sort_keys=True).encode())
                for d in ("blobs", "blobs/sha256"):
                    info = tarfile.TarInfo(d)
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
                    tar.addfile(info)
                _add_bytes(tar, "blobs/sha256/" + config_digest[7:], config_bytes)
                _add_bytes(tar, "blobs/sha256/" + manifest_digest[7:], manifest_bytes)
                layer.seek(0)
                info = tarfile.TarInfo("blobs/sha256/" + layer_digest[7:])
                info.size, info.mode, info.mtime = layer_size, 0o644, 0
                tar.addfile(info, layer)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return manifest_digest


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rootfs", required=True, type=Path, help="directory that becomes /")
    p.add_argument("--name", required=True, help="image reference, e.g. registry.k8s.io/pause:3.10")
    p.add_argument("--out", required=True, type=Path, help="archive to write")
    p.add_argument("--entrypoint", help='JSON list, e.g. ["/bin/sh","-c"]')
    p.add_argument("--cmd", help='JSON list, e.g. ["sleep","infinity"]')
    p.add_argument("--env", action="append", default=[], metavar="K=V")
    p.add_argument("--label", action="append", default=[], metavar="K=V")
    p.add_argument("--workdir")
    p.add_argument("--user")
    p.add_argument("--arch", help="GOARCH of the image (default: this machine's)")
    a = p.parse_args(argv)
    try:
        digest = build(
            a.rootfs,
            a.name,
            a.out,
            entrypoint=_json_list(a.entrypoint, "--entrypoint"),
            cmd=_json_list(a.cmd, "--cmd"),
            env=_pairs(a.env, "--env"),
            workdir=a.workdir,
            labels=_pairs(a.label, "--label"),
            user=a.user,
            arch=a.arch,
        )
    except MkImageError as e:
        print(f"mkimage: {e}", file=sys.stderr)
        return 2
    print(f"{normalize_reference(a.name)} {digest} {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
