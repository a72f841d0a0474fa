"""Socket-file rules: what may be deleted, what must be refused, what is ours."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from dra_driver.kubelet.sockets import (
    PathState,
    SocketId,
    SocketInUseError,
    SocketPathError,
    bind_path_for,
    claim_path,
    is_live_socket,
    path_state,
    remove_if_ours,
    socket_path_problems,
)


def bound(path: Path, listen: bool) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    if listen:
        s.listen()
    return s


@pytest.fixture
def sock_dir(tmp_path: Path) -> Iterator[Path]:
    # tmp_path can be long; sockets need short paths.
    d = Path("/tmp") / f"ks-{os.getpid()}-{tmp_path.name[-12:]}"
    d.mkdir()
    yield d
    for p in d.iterdir():
        p.unlink()
    d.rmdir()


def test_claim_path_missing_is_fine(sock_dir: Path) -> None:
    path = sock_dir / "a.sock"
    claim_path(path)  # nothing there: nothing to refuse, nothing created
    assert list(sock_dir.iterdir()) == []
    bound(path, listen=True).close()  # and the path is free to bind
    assert path.is_socket()


def test_claim_path_removes_stale_socket(sock_dir: Path) -> None:
    path = sock_dir / "a.sock"
    bound(path, listen=False).close()
    assert not is_live_socket(path)
    claim_path(path)
    assert not path.exists()


def test_claim_path_refuses_live_socket(sock_dir: Path) -> None:
    path = sock_dir / "a.sock"
    s = bound(path, listen=True)
    try:
        with pytest.raises(SocketInUseError, match="another instance"):
            claim_path(path)
        assert path.exists()
    finally:
        s.close()


def test_claim_path_refuses_files_and_dirs(sock_dir: Path) -> None:
    f = sock_dir / "file.sock"
    f.write_text("x")
    d = sock_dir / "dir.sock"
    d.mkdir()
    with pytest.raises(SocketPathError, match="non-socket file"):
        claim_path(f)
    with pytest.raises(SocketPathError, match="directory"):
        claim_path(d)
    assert f.read_text() == "x" and d.is_dir()
    d.rmdir()


def test_remove_if_ours_checks_identity(sock_dir: Path) -> None:
    path = sock_dir / "a.sock"
    bound(path, listen=False).close()
    ours = SocketId.of(os.lstat(path))
    assert path_state(path, ours) is PathState.OURS
    os.unlink(path)
    bound(path, listen=False).close()  # a successor, possibly with the same inode number
    assert path_state(path, ours) is PathState.FOREIGN_SOCKET
    assert not remove_if_ours(path, ours)
    assert path.exists()
    assert remove_if_ours(path, SocketId.of(os.lstat(path)))
    assert not path.exists()
    assert path_state(path, ours) is PathState.MISSING


def test_bind_path_is_hidden_and_not_longer(sock_dir: Path) -> None:
    for name in ("dra.sock", "gpu.nvidia.com-reg.sock"):
        final = sock_dir / name
        tmp = bind_path_for(final)
        assert tmp.parent == final.parent
        assert tmp.name.startswith(".")
        assert len(tmp.name) <= len(final.name)


def test_socket_path_limit() -> None:
    assert socket_path_problems(Path("/a/b.sock")) == []
    (msg,) = socket_path_problems(Path("/" + "x" * 120))
    assert "121 bytes" in msg
