"""Checkpoint: atomic checksummed writes, corruption handling, reboots, tolerant reading."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from dra_driver.prepare.checkpoint import (
    CheckpointStore,
    ClaimRecord,
    ClaimState,
    CorruptCheckpoint,
    DeviceRecord,
    canonical,
    checksum,
    decode,
)

BOOT = "boot-a"


def record(uid: str = "u1", state: ClaimState = ClaimState.PREPARED) -> ClaimRecord:
    return ClaimRecord(
        uid=uid,
        namespace="ns",
        name="claim",
        state=state,
        devices=(
            DeviceRecord(
                request_names=("gpu",),
                pool_name="node-1",
                device_name="gpu-0",
                cdi_device_ids=(f"k8s.gpu.nvidia.com/claim={uid}-gpu-0",),
                uuid="GPU-1",
                gpu_uuid="GPU-1",
            ),
        ),
        instance="abc",
        updated=1.5,
    )


def add(store: CheckpointStore, rec: ClaimRecord, durable: bool = True) -> None:
    def fn(claims: dict[str, ClaimRecord]) -> tuple[None, bool]:
        claims[rec.uid] = rec
        return None, True

    store.update(fn, durable=durable)


def hidden_files(d: Path) -> list[str]:
    return sorted(n for n in os.listdir(d) if n.startswith(".checkpoint.json"))


def test_round_trip_and_checksum_over_canonical_body(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, BOOT)
    store.load()
    add(store, record())
    doc = json.loads((tmp_path / "checkpoint.json").read_bytes())
    assert doc["kind"] == "DraDriverCheckpoint" and doc["schemaVersion"] == "1.0"
    assert doc["checksum"] == checksum(doc["body"])
    assert doc["checksum"].startswith("sha256:")
    assert doc["body"]["bootId"] == BOOT
    assert doc["body"]["claims"]["u1"]["state"] == "prepared"
    # A fresh store (another process) reads the same claims.
    assert CheckpointStore(tmp_path, BOOT).snapshot() == {"u1": record()}
    # The checksum does not depend on key order or whitespace.
    body = doc["body"]
    assert checksum(json.loads(json.dumps(body, indent=3))) == checksum(body)
    assert canonical({"b": 1, "a": [1, 2]}) == b'{"a":[1,2],"b":1}'


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path: Path, monkeypatch: Any) -> None:
    store = CheckpointStore(tmp_path, BOOT)
    store.load()
    add(store, record("u1"))
    before = (tmp_path / "checkpoint.json").read_bytes()

    def fail(*_a: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        add(store, record("u2"))
    monkeypatch.undo()
    assert (tmp_path / "checkpoint.json").read_bytes() == before  # old version intact
    assert set(CheckpointStore(tmp_path, BOOT).snapshot()) == {"u1"}
    add(store, record("u3"))
    assert set(store.snapshot()) == {"u1", "u3"}
    # Only recycled spares of earlier versions remain (a bounded pool), no stray temps.
    assert len(hidden_files(tmp_path)) <= 2


def test_fsyncs_file_and_directory_when_durable(tmp_path: Path, monkeypatch: Any) -> None:
    store = CheckpointStore(tmp_path, BOOT)
    store.load()
    synced: list[bool] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.path.isdir(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    add(store, record("u1"))
    assert synced == [False, True]  # the temp file, then the directory after the rename
    synced.clear()
    add(store, record("u2"), durable=False)
    assert synced == []


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda raw: raw[: len(raw) // 2], "not JSON"),
        (lambda raw: raw.replace(b'"gpu-0"', b'"gpu-9"'), "checksum mismatch"),
        (lambda raw: raw.replace(b'"schemaVersion":"1.0"', b'"schemaVersion":"2.0"'), "2.0"),
        (lambda raw: b"[]", "not a DraDriverCheckpoint"),
    ],
)
def test_corruption_is_moved_aside_and_rebuilt(
    tmp_path: Path, mutate: Any, reason: str, caplog: Any
) -> None:
    store = CheckpointStore(tmp_path, BOOT)
    store.load()
    add(store, record("u1"))
    path = tmp_path / "checkpoint.json"
    bad = mutate(path.read_bytes())
    path.write_bytes(bad)

    rebuilt = record("from-cdi")
    fresh = CheckpointStore(tmp_path, BOOT, rebuild=lambda: {rebuilt.uid: rebuilt})
    report = fresh.load()
    assert reason in report.corruption
    assert report.moved_aside is not None and report.moved_aside.read_bytes() == bad
    assert report.moved_aside.name.startswith("checkpoint.json.corrupt-")
    assert report.rebuilt_claims == 1
    assert fresh.snapshot() == {"from-cdi": rebuilt}
    assert "CHECKPOINT CORRUPTED" in caplog.text
    # The rebuilt file is valid for the next reader.
    assert decode(path.read_bytes()).claims.keys() == {"from-cdi"}


def test_corruption_found_while_running_is_repaired_on_next_access(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, BOOT, rebuild=dict)
    store.load()
    add(store, record("u1"))
    (tmp_path / "checkpoint.json").write_text("{garbage")
    assert store.snapshot() == {}
    assert list(tmp_path.glob("checkpoint.json.corrupt-*"))


def test_boot_id_change_forgets_claims(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, BOOT)
    store.load()
    add(store, record("u1"))
    rebooted = CheckpointStore(tmp_path, "boot-b")
    report = rebooted.load()
    assert report.boot_changed and report.dropped_claims == 1
    assert rebooted.snapshot() == {}
    assert decode((tmp_path / "checkpoint.json").read_bytes()).boot_id == "boot-b"


def test_unknown_fields_are_tolerated_and_kept(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, BOOT)
    store.load()
    add(store, record("u1"))
    path = tmp_path / "checkpoint.json"
    doc = json.loads(path.read_bytes())
    doc["futureHeader"] = True
    doc["schemaVersion"] = "1.7"
    doc["body"]["futureBody"] = {"x": 1}
    doc["body"]["claims"]["u1"]["futureClaim"] = "keep me"
    doc["body"]["claims"]["u1"]["devices"][0]["futureDevice"] = 42
    doc["checksum"] = checksum(doc["body"])
    path.write_text(json.dumps(doc))

    newer = CheckpointStore(tmp_path, BOOT)
    assert newer.load().corruption == ""
    assert newer.snapshot()["u1"].devices[0].device_name == "gpu-0"
    add(newer, record("u2"))
    body = json.loads(path.read_bytes())["body"]
    assert body["futureBody"] == {"x": 1}
    assert body["claims"]["u1"]["futureClaim"] == "keep me"
    assert body["claims"]["u1"]["devices"][0]["futureDevice"] == 42


def test_update_exception_leaves_file_untouched(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, BOOT)
    store.load()
    add(store, record("u1"))
    writes = store.writes

    def boom(claims: dict[str, ClaimRecord]) -> tuple[None, bool]:
        claims.clear()
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        store.update(boom)
    assert store.writes == writes and set(store.snapshot()) == {"u1"}


def test_decode_rejects_bad_claim_records() -> None:
    body: dict[str, Any] = {"bootId": "b", "claims": {"u": {"state": "weird"}}}
    doc = {"kind": "DraDriverCheckpoint", "schemaVersion": "1.0", "body": body}
    doc["checksum"] = checksum(body)
    with pytest.raises(CorruptCheckpoint, match="bad claim record"):
        decode(json.dumps(doc).encode())
