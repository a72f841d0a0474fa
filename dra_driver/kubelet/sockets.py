"""Unix-socket file handling for the kubelet-facing servers.

Rules, because the kubelet and its operators share these directories:
- never delete anything at our path that is not a socket (a regular file or
  a directory there is an operator's mistake to report, not to erase);
- a socket at our path that accepts connections belongs to a live process
  (another instance of this driver): report it, do not steal it;
- a socket that refuses connections is stale (a crashed run): replace it;
- on exit remove only the socket inode we created, never a successor's.

gRPC core itself unlinks any socket at the bind path before binding and
unlinks the bind path again on shutdown, whoever owns it by then. To keep
those unlinks away from the published path, servers bind a hidden temporary
name in the same directory and hard-link it into place (see bind_path_for):
link() fails instead of replacing whatever is at the path, the kubelet's
plugin watcher ignores dot-files, and it sees the link as the creation of a
socket that already answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import secrets
import socket
import stat
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the NUL


class SocketPathError(RuntimeError):
    """Our socket path is unusable: something that is not a socket is there."""


class SocketInUseError(RuntimeError):
    """A live socket (another running instance) already serves our path."""


@dataclass(frozen=True)
class SocketId:
    """The identity of a socket file we created.

    Inode numbers are reused at once when a socket is deleted and another is
    bound, so the change time (set when we link it into place) is part of it.
    """

    dev: int
    ino: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> SocketId:
        return cls(st.st_dev, st.st_ino, st.st_ctime_ns)


class PathState(Enum):
    MISSING = "missing"
    OURS = "ours"
    FOREIGN_SOCKET = "foreign-socket"
    NOT_A_SOCKET = "not-a-socket"


def path_bytes(path: Path) -> int:
    return len(os.fsencode(str(path)))


def path_state(path: Path, ours: SocketId | None) -> PathState:
    """Classify what is at path relative to the socket we believe we own."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return PathState.MISSING
    if not stat.S_ISSOCK(st.st_mode):
        return PathState.NOT_A_SOCKET
    if ours is not None and SocketId.of(st) == ours:
        return PathState.OURS
    return PathState.FOREIGN_SOCKET


def is_live_socket(path: Path, timeout: float = 1.0) -> bool:
    """True if something accepts connections on the unix socket at path."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
        except OSError as e:
            if e.errno in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTSOCK):
                return False
            if isinstance(e, TimeoutError) or e.errno == errno.EAGAIN:
                # A full backlog or a hung peer is still somebody's socket.
                return True
            raise
        return True


async def is_live_socket_async(path: Path, timeout: float = 1.0) -> bool:
    return await asyncio.to_thread(is_live_socket, path, timeout)


def claim_path(path: Path) -> None:
    """Make path free for our socket, or raise with a message an operator can act on.

    Removes a stale socket; refuses a live one and anything that is not a socket.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        kind = "directory" if stat.S_ISDIR(st.st_mode) else "non-socket file"
        raise SocketPathError(
            f"{path} exists and is a {kind}; refusing to delete it. "
            "Remove it by hand or choose another directory."
        )
    if is_live_socket(path):
        raise SocketInUseError(
            f"{path} is a live socket: another instance of this plugin (or another "
            "program) is serving it. Stop that instance first; this one will not take "
            "over its socket."
        )
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def bind_path_for(path: Path) -> Path:
    """A fresh hidden name next to path, never longer than path itself.

    Binding there and linking into place keeps gRPC's own unlink-on-bind and
    unlink-on-shutdown away from the published name, and keeps within the
    sun_path limit whenever the published path fits.
    """
    length = max(4, min(10, len(path.name) - 1))
    for _ in range(100):
        candidate = path.with_name("." + secrets.token_hex(8)[:length])
        if not os.path.lexists(candidate):
            return candidate
    raise SocketPathError(f"cannot find a free temporary socket name next to {path}")


def remove_if_ours(path: Path, ours: SocketId | None) -> bool:
    """Unlink path only if it is still the socket inode we created."""
    if ours is None or path_state(path, ours) is not PathState.OURS:
        return False
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return True


def socket_path_problems(*paths: Path) -> list[str]:
    """Paths over the unix socket limit, as messages (empty when all fit)."""
    return [
        f"socket path {p} is {path_bytes(p)} bytes; unix sockets allow at most {UNIX_PATH_MAX}"
        for p in paths
        if path_bytes(p) > UNIX_PATH_MAX
    ]
