"""The C baseline of tests/bench/bench_nvml.py makes exactly the fast path's NVML calls.

Otherwise the bench's "x limit" column would compare different work.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from dra_driver.nvml import open_backend
from dra_driver.nvml._common import GI_PROFILE_INDEX_COUNT
from dra_driver.nvml.cffi_backend import CffiBackend
from dra_driver.testing import fakenvml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from nvml_baseline import Baseline, InProcessBaseline, build

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("gcc") is None and shutil.which("cc") is None:
        pytest.skip("no C compiler")
    return build(tmp_path_factory.mktemp("baseline"))


@pytest.mark.parametrize("topology", fakenvml.topology_names())
def test_baseline_makes_the_fast_paths_calls(
    topology: str, built: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = fakenvml.FakeNode(topology, fault_log=tmp_path / "faults.jsonl")
    node.reset_faults()
    for key, value in node.env().items():
        monkeypatch.setenv(key, value)
    library = fakenvml.library_path()
    fast = open_backend(library, "cffi")
    assert isinstance(fast, CffiBackend)
    inside = InProcessBaseline(built[1], library, GI_PROFILE_INDEX_COUNT)
    own = Baseline(built[0], library, GI_PROFILE_INDEX_COUNT)
    try:
        fast.inventory()
        before = fast.nvml_calls
        fast.health_sample()
        health_calls = fast.nvml_calls - before
        for baseline in (inside, own):
            calls, times = baseline.run("inventory", 3)
            assert calls == fast.last_inventory_nvml_calls
            assert len(times) == 3 and all(t > 0 for t in times)
            calls, _ = baseline.run("health", 2)
            assert calls == health_calls
    finally:
        own.close()
        inside.close()
        fast.close()


def test_baseline_reports_a_bad_library(built: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="dlopen"):
        InProcessBaseline(built[1], str(tmp_path / "missing.so"), GI_PROFILE_INDEX_COUNT)
    own = Baseline(built[0], str(tmp_path / "missing.so"), GI_PROFILE_INDEX_COUNT)
    try:
        with pytest.raises(RuntimeError, match="dlopen"):
            own.run("inventory", 1)
    finally:
        own.close()
