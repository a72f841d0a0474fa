"""The native half of the inventory conversion (_records): change detection and builder.

The builder must give exactly the records the Python converter gives, and the
change detection must never hand back a record of bytes that changed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dra_driver.nvml import _records, open_backend
from dra_driver.nvml.cffi_backend import _GPU_SIZE, _GPUS_OFF, _HEAD_CHANGED, CffiBackend, ffi
from dra_driver.testing import fakenvml

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def open_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    opened: list[CffiBackend] = []

    def make(topology: str) -> tuple[CffiBackend, fakenvml.FakeNode]:
        node = fakenvml.FakeNode(topology, fault_log=tmp_path / f"{topology}.faults.jsonl")
        node.reset_faults()
        for key, value in node.env().items():
            monkeypatch.setenv(key, value)
        backend = open_backend(fakenvml.library_path(), "cffi")
        assert isinstance(backend, CffiBackend)
        opened.append(backend)
        return backend, node

    yield make
    for backend in opened:
        backend.close()


@pytest.mark.parametrize("topology", fakenvml.topology_names())
def test_native_records_equal_the_python_converters(topology: str, open_fast) -> None:  # type: ignore[no-untyped-def]
    fast, _ = open_fast(topology)
    snap = fast.inventory()
    built: list[object] = []
    for i in range(len(snap.gpus)):
        native = _records.gpu(fast._inv_buf, i, built)
        record, errors, _ = fast._convert_gpu(fast._gpu_key(i), [])
        assert native is not None, f"gpu {i} read cleanly, the builder should take it"
        assert errors == ()
        assert native == record
        assert type(native) is type(record)
        assert hash(native) == hash(record)
        assert [type(m) for m in native.migs] == [type(m) for m in record.migs]
        assert [type(p) for p in native.mig_profiles] == [type(p) for p in record.mig_profiles]
        built.append(native)
    # GPUs of one model share one tuple of profiles
    by_bytes: dict[bytes, object] = {}
    for i, gpu in enumerate(snap.gpus):
        raw = fast._gpu_key(i)[1]
        if raw:
            assert by_bytes.setdefault(raw, gpu.mig_profiles) is gpu.mig_profiles


def test_unchanged_inventory_is_the_same_snapshot_and_a_change_is_seen(open_fast) -> None:  # type: ignore[no-untyped-def]
    fast, node = open_fast("dgx-h100-mig7")
    first = fast.inventory()
    assert fast.inventory() is first
    assert _records.diff(fast._inv_buf, fast._previous) == 0
    node.faults.lost(3)
    lost = fast.inventory()
    assert lost is not first
    assert [g.index for g in lost.gpus] == [0, 1, 2, 4, 5, 6, 7]
    assert [e.gpu_index for e in lost.errors] == [3]
    for a, b in zip(lost.gpus, [g for g in first.gpus if g.index != 3], strict=True):
        assert a is b  # unchanged GPUs keep their records
    node.faults.recover()
    back = fast.inventory()
    assert back == first and back.errors == ()


def test_cold_path_rebuilds_equal_records(open_fast) -> None:  # type: ignore[no-untyped-def]
    fast, _ = open_fast("dgx-h100")
    first = fast.inventory()
    fast.clear_record_cache()
    again = fast.inventory()
    assert again == first
    assert again is not first
    assert all(a is not b for a, b in zip(again.gpus, first.gpus, strict=True))


def test_diff_marks_the_changed_gpu_and_the_head(open_fast) -> None:  # type: ignore[no-untyped-def]
    fast, _ = open_fast("small")
    fast.inventory()
    prev = bytearray(fast._previous)
    cur = bytearray(fast._inv_buf)
    assert _records.diff(cur, bytearray(prev)) == 0
    # flip one byte of GPU 1's uuid: only GPU 1 changed
    uuid_off = ffi.offsetof("fp_gpu_t", "uuid") + 1
    cur[_GPUS_OFF + _GPU_SIZE + uuid_off] ^= 1
    work = bytearray(prev)
    assert _records.diff(cur, work) == 1 << 1
    assert _records.diff(cur, work) == 0  # the copy was brought up to date
    cur[ffi.offsetof("fp_inventory_t", "cuda_version")] ^= 1
    assert _records.diff(cur, work) == _HEAD_CHANGED


def test_a_gpu_with_errors_is_left_to_the_python_converter(open_fast) -> None:  # type: ignore[no-untyped-def]
    fast, node = open_fast("small")
    node.faults.lost(0)
    snap = fast.inventory()
    assert _records.gpu(fast._inv_buf, 0, []) is None
    assert [e.gpu_index for e in snap.errors] == [0]


def test_bad_arguments_are_clear_errors(open_fast) -> None:  # type: ignore[no-untyped-def]
    fast, _ = open_fast("small")
    fast.inventory()
    with pytest.raises(ValueError, match="fp_inventory_t"):
        _records.diff(b"short", bytearray(8))
    with pytest.raises(IndexError):
        _records.gpu(fast._inv_buf, 5, [])
    with pytest.raises(TypeError):
        _records.gpu(fast._inv_buf, 0, ())
    with pytest.raises(BufferError):
        _records.diff(fast._inv_buf, bytes(_records.INVENTORY_SIZE))  # not writable


def test_unchanged_health_sample_reuses_every_record_and_a_change_is_seen(open_fast) -> None:  # type: ignore[no-untyped-def]
    fast, node = open_fast("dgx-h100")
    first = fast.health_sample()
    again = fast.health_sample()
    assert again == first and all(a is b for a, b in zip(again, first, strict=True))
    assert again is not first  # a fresh list: callers may keep or change it
    node.faults.ecc(2, uncorrected=3)
    changed = fast.health_sample()
    assert changed[2].ecc_uncorrected_volatile.value == 3
    assert [s is f for s, f in zip(changed, first, strict=True)] == [True] * 2 + [False] + [
        True
    ] * 5


def test_same_compares_and_updates() -> None:
    prev = bytearray(8)
    assert _records.same(b"\0" * 8, prev, 8)
    assert not _records.same(b"abcdefgh", prev, 4)
    assert prev == bytearray(b"abcd\0\0\0\0")
    assert _records.same(b"abcdxxxx", prev, 4)
    with pytest.raises(ValueError):
        _records.same(b"ab", prev, 4)
