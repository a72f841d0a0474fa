"""Under CI a missing fake NVML fails the tests that need it; elsewhere they skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
NEEDS_FAKE_NVML = [
    "tests/unit/nvml/test_nvml_backends.py::test_backend_info",
    "tests/unit/health/test_health_monitor.py::test_ignored_xid_changes_nothing",
    "tests/e2e/test_plugin_process.py::test_an_exit_before_ready_raises_with_the_log",
]
# Loaded into the inner pytest: the library "is not built".
NO_LIBRARY = """
from dra_driver.testing import fakenvml

def _missing() -> str:
    raise fakenvml.FakeNvmlError("the fake NVML library is not built (simulated)")

fakenvml.library_path = _missing
"""


def _inner_pytest(tmp_path: Path, ci: bool) -> subprocess.CompletedProcess[str]:
    (tmp_path / "no_fake_nvml.py").write_text(NO_LIBRARY)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    if ci:
        env["CI"] = "true"
    plugins = ["-p", "no_fake_nvml", "-p", "no:cacheprovider"]
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", *plugins, *NEEDS_FAKE_NVML],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("ci", [False, True])
def test_a_missing_fake_nvml_skips_or_under_ci_fails(tmp_path: Path, ci: bool) -> None:
    r = _inner_pytest(tmp_path, ci)
    summary = r.stdout.strip().splitlines()[-1]
    assert "passed" not in summary, r.stdout
    if ci:  # every test, each backend of a parametrized one too, errors at its fixture
        assert r.returncode == 1 and "errors" in summary and "skipped" not in summary, r.stdout
        assert "CI is set" in r.stdout
    else:
        assert r.returncode == 0 and "skipped" in summary and "error" not in summary, r.stdout
