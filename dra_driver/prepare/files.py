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
import stat
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


# Opening a name in a shared directory: never through a symlink, never blocking on a FIFO.
_OPEN_FLAGS = os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class Recycler:
    """Writes files atomically through a pool of reusable spare files in one directory.

    The directory may be shared (/var/run/cdi is), so only inodes this object
    created itself are ever recycled, and each is checked again (lstat before
    it becomes a spare, O_NOFOLLOW + fstat before it is written): a symlink or
    hard link planted at a final path is replaced or removed, never written
    through. A spare is zero-filled when it is kept (scrub), so it holds no
    old claim's data in a world-readable directory. Hidden names are plain
    strings, not Paths: pathlib interns every part, and each hidden name is new.
    """

    def __init__(
        self,
        directory: Path,
        prefix: str,
        mode: int = 0o644,
        max_spares: int = 16,
        owner: str = "",
        scrub: bool = True,
    ):
        self.dir = directory
        self._dir = os.fspath(directory)
        self.prefix = prefix  # hidden names start with "." + prefix
        # Hidden names carry the owner (the plugin instance id) so sweep() can tell
        # a dead writer's leftovers from a live peer's files; no pid namespaces involved.
        self.owner = owner or f"pid{os.getpid()}"
        self.mode = mode
        self.max_spares = max_spares
        self.scrub = scrub  # zero-fill spares (off where the directory is private anyway)
        self._lock = threading.Lock()
        self._spares: list[str] = []
        self._created: set[tuple[int, int]] = set()  # (st_dev, st_ino) of inodes we made
        self._seq = itertools.count()
        self._trash: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._reaper: threading.Thread | None = None

    def _hidden(self, mark: str) -> str:
        return os.path.join(self._dir, f".{self.prefix}{mark}{self.owner}-{next(self._seq)}")

    def _ours(self, st: os.stat_result) -> bool:
        """A regular file with one name that this object created."""
        with self._lock:
            known = (st.st_dev, st.st_ino) in self._created
        return known and stat.S_ISREG(st.st_mode) and st.st_nlink == 1

    def _forget(self, st: os.stat_result) -> None:
        with self._lock:
            self._created.discard((st.st_dev, st.st_ino))

    def _drop_name(self, name: str) -> None:
        """Unlink a hidden name that must not be used (never what it points to)."""
        try:
            os.unlink(name)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("cannot remove %s: %s", name, e)

    def _open_ours(self, name: str) -> tuple[int, os.stat_result] | None:
        """name opened for writing if it is a file of ours; else None (and the name dropped)."""
        try:
            fd = os.open(name, _OPEN_FLAGS)
        except FileNotFoundError:
            return None
        except OSError as e:  # ELOOP: a symlink; ENXIO: a FIFO or socket
            log.warning("%s is not a file this plugin wrote (%s); not reusing it", name, e)
            self._drop_name(name)
            return None
        st = os.fstat(fd)
        if self._ours(st):
            return fd, st
        os.close(fd)
        log.warning("%s is not a file this plugin wrote; not reusing it", name)
        self._drop_name(name)
        return None

    def _keep(self, spare: str) -> None:
        """Pool a spare (zero-filled, so it keeps no data) or queue it for removal."""
        opened = self._open_ours(spare)
        if opened is None:
            return
        fd, st = opened
        try:
            if self.scrub and st.st_size:
                os.pwrite(fd, bytes(st.st_size), 0)
        except OSError as e:
            log.warning("cannot clear spare %s: %s", spare, e)
        finally:
            os.close(fd)
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
            name = self._trash.get()
            try:
                st = os.lstat(name)
                os.unlink(name)
                self._forget(st)
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warning("cannot remove %s: %s", name, e)

    def write_temp(self, data: bytes, durable: bool = True) -> str:
        """data in a hidden file (a recycled spare when one exists), fsynced if durable.

        Returns the file's path as a string (see the class docstring).
        """
        with self._lock:
            spare = self._spares.pop() if self._spares else None
        opened = self._open_ours(spare) if spare is not None else None
        if opened is not None and spare is not None:
            name, fd = spare, opened[0]
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            name = self._hidden(TEMP_MARK)
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, self.mode)
            os.fchmod(fd, self.mode)  # exactly self.mode, whatever the umask
            st = os.fstat(fd)
            with self._lock:
                self._created.add((st.st_dev, st.st_ino))
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.ftruncate(fd, len(data))
            if durable:
                os.fsync(fd)
        except BaseException:
            st = os.fstat(fd)
            os.close(fd)
            self._drop_name(name)
            self._forget(st)
            raise
        os.close(fd)
        return name

    def commit(self, temp: str | Path, final: Path) -> None:
        """Rename temp over final; final's old inode becomes a spare if it is ours."""
        spare: str | None = None
        try:
            st = os.lstat(final)
        except FileNotFoundError:
            st = None
        if st is not None and self._ours(st):
            spare = self._hidden(SPARE_MARK)
            try:
                os.link(final, spare, follow_symlinks=False)
            except FileNotFoundError:
                spare = None
        elif st is not None:
            log.warning("%s is not a file this plugin wrote; replacing it", final)
        try:
            os.replace(temp, final)
        except BaseException:
            if spare is not None:
                self._drop_name(spare)
            self.discard(temp)
            raise
        if spare is not None:
            self._keep(spare)  # checks again: final may have changed since the lstat
        elif st is not None:
            self._forget(st)

    def discard(self, temp: str | Path) -> None:
        """Give back a temp file that will not be committed."""
        name = os.fspath(temp)
        if os.path.lexists(name):
            self._keep(name)

    def remove(self, path: Path) -> bool:
        """Make path disappear (a rename); its inode becomes a spare if ours. False if absent."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return False
        if not self._ours(st):
            try:
                os.unlink(path)
            except FileNotFoundError:
                return False
            self._forget(st)
            return True
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
            names = os.listdir(self._dir)
        except FileNotFoundError:
            return 0
        for name in names:
            if not name.startswith(f".{self.prefix}"):
                continue
            rest = name[len(self.prefix) + 1 :]
            for mark in (SPARE_MARK, TEMP_MARK):
                if rest.startswith(mark):
                    owner = rest[len(mark) :].rsplit("-", 1)[0]
                    p = os.path.join(self._dir, name)
                    if p not in mine and (owner == self.owner or not is_alive(owner)):
                        self._drop_name(p)
                        n += 1
        return n
