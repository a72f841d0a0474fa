"""Fixtures for every test directory.

fake_nvml: the built fake libnvidia-ml. Where it is missing the test is
skipped with the reason, except under CI (`CI` set, as `.ci/run` does), which
installs the package and so must have it: there a missing library fails.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dra_driver.testing import fakenvml


def unavailable(reason: str) -> None:
    """Skip for want of reason's tool or library; fail instead under CI."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: everything the tests need must be installed)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def fake_nvml() -> str:
    """The path of the built fake libnvidia-ml."""
    try:
        return fakenvml.library_path()
    except fakenvml.FakeNvmlError as e:
        unavailable(f"fake NVML not available: {e}")
        raise


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A fresh directory under /tmp: unix socket paths must stay under 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="dra-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
