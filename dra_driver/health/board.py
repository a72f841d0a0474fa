"""The per-device health state every consumer reads.

Producers (the NVML event thread, the degradation poller) write verdicts;
consumers (the kubelet health stream, the slice publisher's taints, metrics)
read one consistent snapshot and wait for the next change. Writers may call
from any thread; waiting happens on the asyncio loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import StrEnum


class Health(StrEnum):
    UNKNOWN = "Unknown"
    HEALTHY = "Healthy"
    DEGRADED = "Degraded"  # still usable; reported to the kubelet as Healthy with a message
    UNHEALTHY = "Unhealthy"


@dataclass(frozen=True)
class DeviceHealth:
    device: str  # the published device name
    health: Health
    message: str = ""
    reason: str = ""  # short machine-readable cause, e.g. "xid-79", "gpu-lost"
    since: float = 0.0  # unix time of the last change
    # Unix time of the last check of this device that succeeded (a health sample
    # that answered, an event that named it): the stream's last_updated_time.
    checked_at: float = 0.0
    # What the verdict's conditions need to go away ("gpu-reset", "node-reboot",
    # ...; "" when nothing is wrong): the taint value carries it.
    recovery: str = ""


class HealthBoard:
    """Thread-safe map of device name -> DeviceHealth with change notification."""

    def __init__(
        self,
        devices: Iterable[str] = (),
        initial: Health = Health.HEALTHY,
        initial_message: str = "",
    ) -> None:
        self._lock = threading.Lock()
        now = time.time()
        self._initial_message = initial_message
        self._state: dict[str, DeviceHealth] = {
            name: DeviceHealth(name, initial, initial_message, since=now, checked_at=now)
            for name in devices
        }
        self._version = 0
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    @property
    def version(self) -> int:
        return self._version

    def snapshot(self) -> list[DeviceHealth]:
        """Every device, sorted by name."""
        with self._lock:
            return [self._state[k] for k in sorted(self._state)]

    def get(self, device: str) -> DeviceHealth | None:
        with self._lock:
            return self._state.get(device)

    def set_devices(self, devices: Iterable[str], initial: Health = Health.HEALTHY) -> None:
        """Follow an inventory change: add new devices, drop vanished ones."""
        now = time.time()
        wanted = set(devices)
        with self._lock:
            changed = wanted != set(self._state)
            for name in wanted - set(self._state):
                self._state[name] = DeviceHealth(
                    name, initial, self._initial_message, since=now, checked_at=now
                )
            for name in set(self._state) - wanted:
                del self._state[name]
        if changed:
            self._bump()

    def add_device(self, name: str, initial: Health = Health.HEALTHY) -> None:
        """A device that came to exist (a MIG device created at prepare) starts `initial`."""
        now = time.time()
        with self._lock:
            self._state[name] = DeviceHealth(
                name, initial, self._initial_message, since=now, checked_at=now
            )
        self._bump()

    def remove_device(self, name: str) -> None:
        """A device that no longer exists (a MIG device destroyed at unprepare)."""
        with self._lock:
            gone = self._state.pop(name, None) is not None
        if gone:
            self._bump()

    def update(self, verdicts: Iterable[DeviceHealth]) -> bool:
        """Apply verdicts; returns True (and wakes waiters) if anything changed.

        A verdict's checked_at (when > 0) moves the device's last check time
        forward; it never moves it back, and alone it wakes nobody.
        """
        changed = False
        now = time.time()
        with self._lock:
            for v in verdicts:
                old = self._state.get(v.device)
                if old is None:
                    continue
                checked = max(old.checked_at, v.checked_at)
                if (old.health, old.message, old.reason, old.recovery) != (
                    v.health,
                    v.message,
                    v.reason,
                    v.recovery,
                ):
                    self._state[v.device] = DeviceHealth(
                        v.device,
                        v.health,
                        v.message,
                        v.reason,
                        v.since or now,
                        checked,
                        v.recovery,
                    )
                    changed = True
                elif checked != old.checked_at:
                    self._state[v.device] = replace(old, checked_at=checked)
        if changed:
            self._bump()
        return changed

    def mark_checked(self, devices: Iterable[str], at: float | None = None) -> None:
        """Record a successful check of devices (unix time; now by default), quietly.

        Streams pick the new time up at their next resend: a check that found
        nothing new is not a change worth a message.
        """
        at = time.time() if at is None else at
        with self._lock:
            for name in devices:
                old = self._state.get(name)
                if old is not None and at > old.checked_at:
                    self._state[name] = replace(old, checked_at=at)

    def _bump(self) -> None:
        with self._lock:
            self._version += 1
            waiters, self._waiters = self._waiters, []
        for loop, event in waiters:
            if not loop.is_closed():
                loop.call_soon_threadsafe(event.set)

    async def wait_changed(self, since_version: int, timeout: float | None = None) -> int:
        """Wait until version > since_version (or timeout); return the current version."""
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        with self._lock:
            if self._version > since_version:
                return self._version
            self._waiters.append((loop, event))
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            with self._lock:
                if (loop, event) in self._waiters:
                    self._waiters.remove((loop, event))
        return self._version
