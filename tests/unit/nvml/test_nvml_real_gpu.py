"""Read-only checks against the node's real NVML (skipped where none loads).

Runs in a child process: once the fake (soname libnvidia-ml.so.1) is loaded
into a process, dlopen("libnvidia-ml.so.1") there would return the fake.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

NO_NVML = 77

PROBE = f"""
import json, sys
from dra_driver.nvml import NvmlLibraryNotFoundError, open_backend
from dra_driver.inventory import build_inventory
try:
    fast = open_backend(None, "cffi")
except NvmlLibraryNotFoundError:
    sys.exit({NO_NVML})
reference = open_backend(None, "nvidia-ml-py")
try:
    snap = fast.inventory()
    same_inventory = snap == reference.inventory()
    samples = fast.health_sample()
    inv = build_inventory(snap, backend=fast.name)
    print(json.dumps({{
        "gpus": len(snap.gpus),
        "errors": [str(e) for e in snap.errors],
        "same_inventory": same_inventory,
        "samples": [[s.gpu_index, s.rc, s.temperature_c.value] for s in samples],
        "devices": [d.name for d in inv.devices],
        "missing": fast.info.missing_symbols,
    }}))
finally:
    fast.close()
    reference.close()
"""


@pytest.mark.gpu
def test_real_nvml_inventory_and_health_sample_read_only() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAKE_NVML")}
    # The dra_driver this test imports (a checkout or an installed package), not
    # necessarily the sources beside it: those lack the built extensions elsewhere.
    import dra_driver

    env["PYTHONPATH"] = str(Path(dra_driver.__file__).resolve().parents[1])
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120
    )
    if out.returncode == NO_NVML:
        pytest.skip("no real NVML on this machine")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["gpus"] >= 1
    assert result["same_inventory"], "cffi and nvidia-ml-py disagree on the real library"
    assert len(result["samples"]) == result["gpus"]
    assert all(rc == 0 for _, rc, _ in result["samples"]), result["samples"]
    assert result["devices"], result
