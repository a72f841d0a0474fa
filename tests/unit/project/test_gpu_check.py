"""hack/gpu-check: the prepared real-GPU run refuses clearly what it cannot do.

The run itself needs the wheels `pack` downloads (network) and a GPU; it was
proven by hand against the fake library standing in for libnvidia-ml.so.1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "hack" / "gpu-check"


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60, cwd=cwd
    )


def test_usage_and_a_missing_pack_are_one_line_errors(tmp_path: Path) -> None:
    res = _run()
    assert res.returncode == 2 and "usage: hack/gpu-check pack | run OUT" in res.stderr
    repo = tmp_path / "repo"
    (repo / "hack").mkdir(parents=True)
    shutil.copy(SCRIPT, repo / "hack" / "gpu-check")
    res = subprocess.run(
        ["bash", str(repo / "hack" / "gpu-check"), "run", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2, res.stderr
    assert "run hack/gpu-check pack first" in res.stderr
    assert (tmp_path / "out" / "summary.txt").exists()


def test_the_checks_are_read_only_commands() -> None:
    """Nothing in the run may change GPU state: no nvidia-smi setter, no reset."""
    text = SCRIPT.read_text()
    for forbidden in ("-mig 1", "-mig 0", "--gpu-reset", "-r ", "-pm ", "-c ", "-ac ", "-lgc"):
        runs = [ln for ln in text.splitlines() if "nvidia-smi" in ln and forbidden in ln]
        assert not runs, runs
    assert os.access(SCRIPT, os.X_OK)
