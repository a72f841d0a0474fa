"""Locks: per-GPU in-process locks, and liveness of plugin instances through flock.

During a rolling update two plugin processes share the checkpoint. A claim
left `prepare-started` may belong to a live peer still working on it (leave
it) or to a process that died (roll it back). Each instance holds an
exclusive flock on `instances/<id>.lock` for its lifetime; the kernel drops
it when the process dies, even on kill -9, so "can I take that lock?" is an
exact liveness test that needs no shared pid namespace.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import threading
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path


class InstanceRegistry:
    """This process's identity and the liveness of the others."""

    def __init__(self, directory: Path, instance_id: str | None = None) -> None:
        self.dir = directory
        self.id = instance_id or secrets.token_hex(6)
        self._fd: int | None = None

    def _path(self, instance_id: str) -> Path:
        if not instance_id.isalnum():
            raise ValueError(f"bad instance id {instance_id!r}")
        return self.dir / f"{instance_id}.lock"

    def acquire(self) -> None:
        """Take this instance's lock (held until release or process exit)."""
        if self._fd is not None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self._path(self.id), flags, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            self._path(self.id).unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None

    def is_alive(self, instance_id: str) -> bool:
        """True if that instance still holds its lock (this one always is)."""
        if instance_id == self.id:
            return self._fd is not None
        if not instance_id or not instance_id.isalnum():
            return False
        try:
            fd = os.open(self._path(instance_id), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:  # gone, or not a lock file of ours (ELOOP: a symlink)
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def reap(self) -> list[str]:
        """Remove lock files of dead instances; return their ids."""
        dead = []
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        for name in names:
            stem = name.removesuffix(".lock")
            if name.endswith(".lock") and stem != self.id and not self.is_alive(stem):
                (self.dir / name).unlink(missing_ok=True)
                dead.append(stem)
        return dead


class KeyedLocks:
    """One threading.Lock per key (GPU UUID), taken in sorted order to avoid deadlock."""

    def __init__(self) -> None:
        self._meta = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def _get(self, key: str) -> threading.Lock:
        with self._meta:
            lock = self._locks.get(key)
            if lock is None:
                lock = self._locks[key] = threading.Lock()
            return lock

    @contextmanager
    def hold(self, keys: Iterable[str]) -> Iterator[None]:
        with ExitStack() as stack:
            for key in sorted(set(keys)):
                lock = self._get(key)
                lock.acquire()
                stack.callback(lock.release)
            yield
