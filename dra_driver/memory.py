"""Keep the C heap of a long-running, many-threaded process from creeping up.

The plugin does its blocking work on a few dozen threads (claim preparation,
API reads, file I/O, gRPC's own). glibc gives each thread that allocates its
own arena, and freed memory in thread arenas is rarely returned to the
system, so under steady load RSS rises for hours although live memory is
flat (tracemalloc sees no growth). Two remedies, both no-ops off glibc:
few arenas (set before the threads start), and a periodic malloc_trim(0),
which hands free pages of every arena back to the kernel.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc's mallopt parameter number
DEFAULT_ARENAS = (
    1  # measured: 30 clients, 3.5 min: +0.42 MiB/min with 1, +1.34 with glibc's default
)
TRIM_INTERVAL = 60.0  # seconds between malloc_trim calls


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not hasattr(libc, "mallopt") or not hasattr(libc, "malloc_trim"):
        return None  # not glibc (musl has neither)
    return libc


_LIBC = _libc()


def limit_arenas(arenas: int = DEFAULT_ARENAS) -> bool:
    """Cap malloc arenas; call before starting threads. False when not on glibc."""
    if _LIBC is None:
        return False
    return bool(_LIBC.mallopt(M_ARENA_MAX, arenas))


def trim() -> bool:
    """Return free heap pages to the kernel; True if any were. Takes milliseconds."""
    if _LIBC is None:
        return False
    return bool(_LIBC.malloc_trim(0))


async def trim_periodically(interval: float = TRIM_INTERVAL) -> None:
    """trim() every interval seconds, off the event loop, until cancelled."""
    if _LIBC is None:
        return
    while True:
        await asyncio.sleep(interval)
        await asyncio.to_thread(trim)
