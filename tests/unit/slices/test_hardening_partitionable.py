"""Issue 9, item 8: --partitionable-devices publishes only devices prepare can serve.

Until dynamic MIG exists, prepare knows only the full GPUs and the MIG devices
the GPU already has; a published (profile, placement) that does not exist
would be handed out by the scheduler and then fail on the node.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dra_driver import cli
from dra_driver.inventory import Inventory, build_inventory
from dra_driver.nvml import open_backend
from dra_driver.slices.builder import build_pool
from dra_driver.testing.fakenvml import library_path


def fake_inventory(topology: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Inventory:
    monkeypatch.setenv("FAKE_NVML_TOPOLOGY", topology)
    monkeypatch.setenv("FAKE_NVML_FAULTS", str(tmp_path / "faults.jsonl"))
    nvml = open_backend(library=library_path(), backend="auto")
    try:
        return build_inventory(nvml.inventory(), backend=nvml.name)
    finally:
        nvml.close()


@pytest.mark.parametrize("topology", ["dgx-h100", "a100", "mixed", "dgx-h100-mig7"])
def test_every_partitionable_device_is_preparable(
    topology: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inv = fake_inventory(topology, tmp_path, monkeypatch)
    pool = build_pool(inv, partitionable=True)
    published = [d["name"] for s in pool.slices for d in s.get("devices") or []]
    assert published
    assert [n for n in published if inv.device(n) is None] == []
    assert sorted(published) == sorted(d.name for d in inv.devices)
    # Counter sets stay, and every device that has one consumes from it.
    sets = {c["name"] for s in pool.slices for c in s.get("sharedCounters") or []}
    for s in pool.slices:
        for d in s.get("devices") or []:
            for use in d.get("consumesCounters") or []:
                assert use["counterSet"] in sets


def test_help_says_what_partitionable_devices_publishes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--partitionable-devices" in text
    assert "only the MIG devices that exist" in text
