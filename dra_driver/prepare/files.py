"""Atomic file replacement that does not free data blocks on the request path.

Replacing or deleting a file frees its data blocks, and on filesystems with
online discard (common on cloud VMs, this machine included) the journal
commit that frees them costs about a millisecond, and every later fsync
waits for it. So replaced and removed files are not deleted: they are kept
under hidden names as spares, and the next write overwrites a spare in place
(same blocks, no allocation, no free) and renames it into place. Spares
beyond a small pool are unlinked on a background thread. Hidden names
(`.<name>.spare-*`, `.<name>.tmp-*`) end in neither .json nor .yaml, so CDI
runtimes never read them; sweep() removes leftovers of a crashed process.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

SPARE_MARK = ".spare-"
TEMP_MARK = ".tmp-"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Recycler:
    """Writes files atomically through a pool of reusable spare files in one directory."""

    def __init__(
        self,
        directory: Path,
        prefix: str,
        mode: int = 0o644,
        max_spares: int = 16,
        owner: str = "",
    ):
        self.dir = directory
        self.prefix = prefix  # hidden names start with "." + prefix
        # Hidden names carry the owner (the plugin instance id) so sweep() can tell
        # a dead writer's leftovers from a live peer's files; no pid namespaces involved.
        self.owner = owner or f"pid{os.getpid()}"
        self.mode = mode
        self.max_spares = max_spares
        self._lock = threading.Lock()
        self._spares: list[Path] = []
        self._seq = itertools.count()
        self._trash: queue.SimpleQueue[Path] = queue.SimpleQueue()
        self._reaper: threading.Thread | None = None

    def _hidden(self, mark: str) -> Path:
        return self.dir / f".{self.prefix}{mark}{self.owner}-{next(self._seq)}"

    def _keep(self, spare: Path) -> None:
        with self._lock:
            if len(self._spares) < self.max_spares:
                self._spares.append(spare)
                return
            if self._reaper is None:
                self._reaper = threading.Thread(target=self._reap, name="file-reaper", daemon=True)
                self._reaper.start()
        self._trash.put(spare)

    def _reap(self) -> None:
        while True:
            path = self._trash.get()
            try:
                path.unlink(missing_ok=True)
            except OSError as e:
                log.warning("cannot remove %s: %s", path, e)

    def write_temp(self, data: bytes, durable: bool = True) -> Path:
        """data in a hidden file (a recycled spare when one exists), fsynced if durable."""
        with self._lock:
            spare = self._spares.pop() if self._spares else None
        if spare is not None:
            try:
                fd = os.open(spare, os.O_WRONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                spare = None
        if spare is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            spare = self._hidden(TEMP_MARK)
            fd = os.open(spare, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, self.mode)
            os.fchmod(fd, self.mode)  # exactly self.mode, whatever the umask
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.ftruncate(fd, len(data))
            if durable:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            spare.unlink(missing_ok=True)
            raise
        os.close(fd)
        return spare

    def commit(self, temp: Path, final: Path) -> None:
        """Rename temp over final; final's old inode becomes a spare."""
        link = self._hidden(SPARE_MARK)
        spare: Path | None = link
        try:
            os.link(final, link)
        except FileNotFoundError:
            spare = None
        try:
            os.replace(temp, final)
        except BaseException:
            if spare is not None:
                spare.unlink(missing_ok=True)
            self.discard(temp)
            raise
        if spare is not None:
            self._keep(spare)

    def discard(self, temp: Path) -> None:
        """Give back a temp file that will not be committed."""
        if temp.exists():
            self._keep(temp)

    def remove(self, path: Path) -> bool:
        """Make path disappear (a rename); its inode becomes a spare. False if absent."""
        spare = self._hidden(SPARE_MARK)
        try:
            os.rename(path, spare)
        except FileNotFoundError:
            return False
        self._keep(spare)
        return True

    def sweep(self, is_alive: Callable[[str], bool]) -> int:
        """Delete hidden files of ours whose owner is dead; return how many.

        Our own spare pool is kept; a live peer's files are left alone.
        """
        with self._lock:
            mine = set(self._spares)
        n = 0
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return 0
        for name in names:
            if not name.startswith(f".{self.prefix}"):
                continue
            rest = name[len(self.prefix) + 1 :]
            for mark in (SPARE_MARK, TEMP_MARK):
                if rest.startswith(mark):
                    owner = rest[len(mark) :].rsplit("-", 1)[0]
                    p = self.dir / name
                    if p not in mine and (owner == self.owner or not is_alive(owner)):
                        p.unlink(missing_ok=True)
                        n += 1
        return n
