"""Issue 9, items 3, 4, 7 and 10: recovery never frees a device a running claim holds.

3: no checkpoint but specs of ours on disk is rebuilt like corruption, at start
   and when the file vanishes at runtime.
4: a roll-back whose spec removal fails drops its started record anyway.
7: a claim with admin access ignores ordinary claims on the device, both orders.
10: a sweep that fails (read-only CDI root) is a warning, retried later.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from hardening_node import Node, make_node

from dra_driver.prepare.preparer import ClaimPreparer
from dra_driver.prepare.types import ErrorKind


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return make_node(tmp_path)


def erofs(*_: Any, **__: Any) -> Any:
    raise OSError(errno.EROFS, "Read-only file system")


def ro_remove(path: Path) -> bool:
    """Recycler.remove on a read-only filesystem: absent is fine, present cannot go."""
    if os.path.lexists(path):
        erofs()
    return False


async def started(node: Node) -> ClaimPreparer:
    prep = node.preparer()
    await prep.start()
    return prep


async def test_missing_checkpoint_with_our_specs_is_rebuilt_at_start(node: Node) -> None:
    prep = await started(node)
    held = node.put(1, {"request": "gpu", "device": "gpu-0"})
    assert (await prep.prepare([held]))[held.uid].error == ""
    await prep.close()
    (node.settings.state_dir / "checkpoint.json").unlink()
    prep = await started(node)
    try:
        assert node.cdi_files() == [f"k8s.gpu.nvidia.com-claim_{held.uid}.json"]
        assert held.uid in prep.checkpointed()
        other = node.put(2, {"request": "gpu", "device": "gpu-0"})
        r = (await prep.prepare([other]))[other.uid]
        assert r.error_kind is ErrorKind.DEVICE_UNAVAILABLE, r
    finally:
        await prep.close()


async def test_checkpoint_vanishing_at_runtime_is_rebuilt(node: Node) -> None:
    prep = await started(node)
    try:
        held = node.put(1, {"request": "gpu", "device": "gpu-0"})
        assert (await prep.prepare([held]))[held.uid].error == ""
        shutil.rmtree(node.settings.state_dir)  # the kubelet's plugin dir wiped
        other = node.put(2, {"request": "gpu", "device": "gpu-0"})
        r = (await prep.prepare([other]))[other.uid]
        assert r.error_kind is ErrorKind.DEVICE_UNAVAILABLE, r
        assert node.cdi_files() == [f"k8s.gpu.nvidia.com-claim_{held.uid}.json"]
        assert (await prep.unprepare([held]))[held.uid].error == ""
        assert (await prep.prepare([other]))[other.uid].error == ""
    finally:
        await prep.close()


async def test_failed_roll_back_does_not_block_the_device(node: Node) -> None:
    prep = await started(node)
    try:
        commit = prep.cdi.commit
        prep.cdi.commit = erofs  # type: ignore[method-assign]
        prep.cdi.files.remove = erofs  # type: ignore[method-assign]
        first = node.put(1, {"request": "gpu", "device": "gpu-0"})
        r = (await prep.prepare([first]))[first.uid]
        assert r.error_kind is ErrorKind.CDI_OR_CHECKPOINT, r
        prep.cdi.commit = commit  # type: ignore[method-assign]
        second = node.put(2, {"request": "gpu", "device": "gpu-0"})
        r = (await prep.prepare([second]))[second.uid]
        assert r.error == "", r
        assert first.uid not in prep.checkpointed()
    finally:
        await prep.close()


@pytest.mark.parametrize("admin_first", [False, True])
async def test_admin_claim_ignores_ordinary_claims(node: Node, admin_first: bool) -> None:
    prep = await started(node)
    try:
        ordinary = node.put(1, {"request": "gpu", "device": "gpu-0"})
        monitor = node.put(2, {"request": "mon", "device": "gpu-0", "adminAccess": True})
        order = [monitor, ordinary] if admin_first else [ordinary, monitor]
        for ref in order:
            r = (await prep.prepare([ref]))[ref.uid]
            assert r.error == "", r
        spec = node.spec(monitor.uid)
        assert "NVIDIA_DRA_DEVICE_GPU_0_ADMIN_ACCESS=true" in json.dumps(spec)
        third = node.put(3, {"request": "gpu", "device": "gpu-0"})
        r = (await prep.prepare([third]))[third.uid]
        assert r.error_kind is ErrorKind.DEVICE_UNAVAILABLE, r  # two ordinary: still refused
        assert ordinary.uid in r.error
    finally:
        await prep.close()


async def test_read_only_cdi_root_with_an_orphan_does_not_fail_start(node: Node) -> None:
    root = node.settings.cdi_root
    root.mkdir(parents=True)
    orphan = root / "k8s.gpu.nvidia.com-claim_0000c1a1-0000-0000-0000-00000000beef.json"
    orphan.write_text('{"cdiVersion": "0.5.0", "kind": "k8s.gpu.nvidia.com/claim", "devices": []}')
    prep = node.preparer()
    remove = prep.cdi.files.remove
    prep.cdi.files.remove = ro_remove  # type: ignore[method-assign]
    prep.sweep_retry_interval = 0.05
    await prep.start()
    try:
        assert orphan.exists()
        held = node.put(1, {"request": "gpu", "device": "gpu-1"})
        assert (await prep.unprepare([held]))[held.uid].error == ""
        prep.cdi.files.remove = remove  # type: ignore[method-assign]  # remounted read-write
        for _ in range(100):
            if not orphan.exists():
                break
            await asyncio.sleep(0.05)
        assert not orphan.exists()
    finally:
        await prep.close()
