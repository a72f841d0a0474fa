"""A test hook: exit the process at a chosen step of a prepare, as a kill -9 would.

With DRA_DRIVER_TEST_CRASH_AT=after-started|after-cdi|before-prepared
(and, for dynamic MIG, after-mig-create: an instance made but not recorded;
after-mig-record: recorded, no CDI spec yet; after-mig-destroy: destroyed at
unprepare, the record not yet dropped) the process exits with
os._exit(137) at that step, so end-to-end tests can check recovery from a
crash at each point. Never set it in production.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping

log = logging.getLogger(__name__)

CRASH_ENV = "DRA_DRIVER_TEST_CRASH_AT"
CRASH_POINTS = frozenset(
    {
        "after-started",
        "after-cdi",
        "before-prepared",
        "after-mig-create",
        "after-mig-record",
        "after-mig-destroy",
    }
)


class CrashPoints:
    """Reads the hook once; crash(point) exits there when it is the chosen one."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        value = (os.environ if environ is None else environ).get(CRASH_ENV, "")
        self.armed = value if value in CRASH_POINTS else ""
        if value and not self.armed:
            log.warning("%s=%r is not one of %s; ignored", CRASH_ENV, value, CRASH_POINTS)

    def warn(self) -> None:
        if self.armed:
            log.warning("TEST HOOK %s=%s is set: this process exits there", CRASH_ENV, self.armed)

    def crash(self, point: str) -> None:
        if self.armed == point:
            log.critical("TEST HOOK: exiting at %s (%s=%s)", point, CRASH_ENV, point)
            for h in logging.getLogger().handlers:
                h.flush()
            sys.stderr.flush()
            os._exit(137)
