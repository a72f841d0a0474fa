"""The plugin's heartbeat file: when NVML last answered, and whether the kubelet registered us.

`dra-driver probe` (the pod's liveness and readiness check) runs as another
process in the same container. It can reach the plugin's sockets itself, but
not ask whether NVML still answers without going through NVML a second time;
so the running plugin records it here, and the probe reads it. Written every
few seconds by the plugin's event loop (a stale file also means a stuck loop),
atomically and mode 0600, never fsynced: it describes this boot's process only.

NVML "answered" means a health sample of every GPU succeeded: the health
monitor's polls when it runs, else a sample taken here for the purpose, never
more than one at a time (a hung NVML call must not pile up threads).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FILE_NAME = "heartbeat.json"
WRITE_INTERVAL = 2.0  # seconds between writes (a registration shows within this)
OWN_SAMPLE_INTERVAL = 15.0  # seconds between our own samples when no monitor polls


class HeartbeatError(RuntimeError):
    """The heartbeat file is missing or unreadable; the message says which."""


@dataclass(frozen=True)
class Beat:
    pid: int
    written_at: float  # unix time
    nvml_answered_at: float  # unix time of the last successful NVML sample (0: never)
    registered: bool  # the kubelet confirmed our registration

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "pid": self.pid,
                "writtenAt": self.written_at,
                "nvmlAnsweredAt": self.nvml_answered_at,
                "registered": self.registered,
            }
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Beat:
        obj = json.loads(data)
        if not isinstance(obj, dict):
            raise ValueError("not a JSON object")
        return cls(
            pid=int(obj["pid"]),
            written_at=float(obj["writtenAt"]),
            nvml_answered_at=float(obj["nvmlAnsweredAt"]),
            registered=bool(obj["registered"]),
        )


def write(path: Path, beat: Beat) -> None:
    """Replace path with beat: a 0600 temp file renamed into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, beat.to_json())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read(path: Path) -> Beat:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise HeartbeatError(f"{path} does not exist (the plugin has not started?)") from None
    except OSError as e:
        raise HeartbeatError(f"cannot read {path}: {e.strerror}") from e
    try:
        return Beat.from_json(data)
    except (ValueError, KeyError, TypeError) as e:
        raise HeartbeatError(f"{path} is not a heartbeat file: {e}") from e


class Heartbeat:
    """Tracks NVML's last answer and writes the heartbeat file until cancelled."""

    def __init__(
        self,
        path: Path,
        sample: Callable[[], Any],
        polls: Callable[[], int] | None,
        registered: Callable[[], bool],
        *,
        write_interval: float = WRITE_INTERVAL,
        own_sample_interval: float = OWN_SAMPLE_INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """sample() is one blocking NVML sample; polls() the monitor's count of good ones."""
        self.path = path
        self._sample = sample
        self._polls = polls
        self._registered = registered
        self._write_interval = write_interval
        self._own_interval = own_sample_interval
        self._clock = clock
        self.nvml_answered_at = clock()  # the inventory was just read
        self._polls_seen = polls() if polls is not None else 0
        self._sampling: asyncio.Task[None] | None = None
        self._last_own_sample = self.nvml_answered_at

    def beat(self) -> Beat:
        return Beat(os.getpid(), self._clock(), self.nvml_answered_at, self._registered())

    def observe(self) -> None:
        """Advance nvml_answered_at from the monitor's polls, or start an own sample."""
        now = self._clock()
        if self._polls is not None:
            polls = self._polls()
            if polls != self._polls_seen:
                self._polls_seen = polls
                self.nvml_answered_at = now
            return
        if self._sampling is None and now - self._last_own_sample >= self._own_interval:
            self._last_own_sample = now
            self._sampling = asyncio.create_task(self._own_sample(), name="heartbeat-sample")

    async def _own_sample(self) -> None:
        try:
            await asyncio.to_thread(self._sample)
        except Exception as e:  # NVML errors and the like: the age keeps growing
            log.warning("heartbeat: NVML health sample failed: %s", e)
        else:
            self.nvml_answered_at = self._clock()
        finally:
            self._sampling = None

    async def run(self) -> None:
        try:
            while True:
                self.observe()
                try:
                    await asyncio.to_thread(write, self.path, self.beat())
                except OSError as e:
                    log.warning("cannot write the heartbeat file %s: %s", self.path, e)
                await asyncio.sleep(self._write_interval)
        finally:
            if self._sampling is not None:
                self._sampling.cancel()
            with contextlib.suppress(OSError):
                self.path.unlink(missing_ok=True)
