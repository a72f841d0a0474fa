"""Issue 9, item 2: nothing planted in the CDI root or the state dir is written through.

/var/run/cdi is shared with other drivers and the container toolkit. The
plugin recycles only files it created itself, never follows a symlink or
writes a hard-linked inode, and its spares keep no old claim's data.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hardening_node import Node, make_node

from dra_driver.prepare.checkpoint import CheckpointStore, ClaimRecord, ClaimState
from dra_driver.prepare.files import Recycler


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return make_node(tmp_path)


async def test_symlink_at_a_spec_path_is_never_written_through(node: Node, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    first = node.put(1, {"request": "gpu", "device": "gpu-0"})
    root = node.settings.cdi_root
    root.mkdir(parents=True, exist_ok=True)
    node.spec_path(first.uid).symlink_to(victim)
    prep = node.preparer()
    await prep.start()
    try:
        refs = [first] + [node.put(n, {"request": "gpu", "device": f"gpu-{n}"}) for n in (1, 2)]
        for ref in refs:
            r = (await prep.prepare([ref]))[ref.uid]
            assert r.error == "", r
            await prep.unprepare([ref])
        for ref in refs:  # every spare the pool holds gets reused
            assert (await prep.prepare([ref]))[ref.uid].error == ""
    finally:
        await prep.close()
    assert victim.read_text() == "precious\n"
    assert not any(p.is_symlink() for p in root.iterdir()), list(root.iterdir())


def test_hard_link_at_the_final_path_is_not_recycled(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    d = tmp_path / "dir"
    d.mkdir()
    os.link(victim, d / "f.json")
    files = Recycler(d, "f.json")
    for _ in range(4):
        files.commit(files.write_temp(b"new contents"), d / "f.json")
    assert victim.read_text() == "precious\n"


def test_a_planted_spare_is_not_trusted(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    d = tmp_path / "dir"
    d.mkdir()
    files = Recycler(d, "f.json", owner="me")
    final = d / "f.json"
    files.commit(files.write_temp(b"one"), final)
    files.commit(files.write_temp(b"two"), final)  # the first inode is now a spare
    (spare,) = [p for p in d.iterdir() if ".spare-" in p.name]
    spare.unlink()
    spare.symlink_to(victim)  # swapped under us
    files.commit(files.write_temp(b"three"), final)
    assert victim.read_text() == "precious\n" and final.read_bytes() == b"three"


def test_symlinked_checkpoint_is_replaced_not_written_through(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    outside = tmp_path / "outside.json"
    seed = CheckpointStore(tmp_path / "seed", "boot")
    seed.load()
    outside.write_bytes((tmp_path / "seed" / "checkpoint.json").read_bytes())
    before = outside.read_bytes()
    (state / "checkpoint.json").symlink_to(outside)
    store = CheckpointStore(state, "boot")
    store.load()
    for n in range(4):
        rec = ClaimRecord(f"uid-{n}", "ns", f"c{n}", ClaimState.PREPARED)

        def add(claims: dict[str, ClaimRecord], rec: ClaimRecord = rec) -> tuple[None, bool]:
            claims[rec.uid] = rec
            return None, True

        store.update(add)
    assert outside.read_bytes() == before
    assert not (state / "checkpoint.json").is_symlink()
    assert set(store.snapshot()) == {f"uid-{n}" for n in range(4)}


async def test_spares_keep_no_old_claim_data(node: Node) -> None:
    prep = node.preparer()
    await prep.start()
    try:
        refs = [node.put(n, {"request": "gpu", "device": f"gpu-{n}"}) for n in range(3)]
        for ref in refs:
            assert (await prep.prepare([ref]))[ref.uid].error == ""
        for ref in refs:
            await prep.unprepare([ref])
    finally:
        await prep.close()
    gpu_uuids = [d.uuid for d in node.inv.devices]
    for root in (node.settings.cdi_root,):  # the world-readable one
        for p in root.iterdir():
            if p.name.startswith(".") and p.is_file():
                data = p.read_bytes()
                for ref in refs:
                    assert ref.uid.encode() not in data, p
                for u in gpu_uuids:
                    assert u.encode() not in data, p
