"""The prepared-claims checkpoint: one versioned, checksummed JSON document.

```
{"kind": "DraDriverCheckpoint", "schemaVersion": "1.0",
 "checksum": "sha256:<hex of canonical JSON of body>",
 "body": {"bootId": "...",
          "claims": {"<uid>": {"state": "prepare-started" | "prepared",
                               "namespace": ..., "name": ..., "instance": ...,
                               "devices": [...], "actions": [...], ...}}}}
```

The checksum is SHA-256 over the body serialised with sorted keys and no
spaces, so it does not depend on struct layout (NVIDIA's FNV-over-Go-dump
checksum broke upgrades, issues #1080/#1326). Readers accept any 1.x schema
and keep fields they do not know, so a newer writer's data survives an older
one's rewrite. Writes are temp file + fsync + rename + directory fsync, under
an in-process lock and an flock on `checkpoint.lock`, so two plugin instances
(rolling update) never interleave read-modify-writes. A checkpoint that is
unreadable, fails its checksum or has an unknown major schema is moved aside
as `<name>.corrupt-<timestamp>` and rebuilt by a caller-supplied function
(from the CDI specs on disk) instead of crash-looping the plugin. A changed
boot id empties the claims: after a reboot every device must be prepared anew.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar, cast

from .files import Recycler, fsync_dir

log = logging.getLogger(__name__)

KIND = "DraDriverCheckpoint"
SCHEMA_MAJOR = 1
SCHEMA_VERSION = f"{SCHEMA_MAJOR}.0"
FILE_NAME = "checkpoint.json"
LOCK_NAME = "checkpoint.lock"

T = TypeVar("T")


class ClaimState(StrEnum):
    STARTED = "prepare-started"
    PREPARED = "prepared"


class CorruptCheckpoint(ValueError):
    """The checkpoint cannot be trusted; the message says why."""


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def checksum(body: Any) -> str:
    return "sha256:" + hashlib.sha256(canonical(body)).hexdigest()


def read_boot_id(proc_root: Path) -> str:
    """The kernel's boot id; "" when unreadable (then reboots cannot be detected)."""
    try:
        return (proc_root / "sys/kernel/random/boot_id").read_text().strip()
    except OSError as e:
        log.warning("cannot read boot id under %s: %s", proc_root, e)
        return ""


def _known(obj: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in keys}


@dataclass(frozen=True)
class DeviceRecord:
    """One prepared device: what the kubelet was told, plus what undo needs."""

    request_names: tuple[str, ...]
    pool_name: str
    device_name: str
    cdi_device_ids: tuple[str, ...]
    uuid: str = ""
    gpu_uuid: str = ""  # the physical GPU (the parent, for MIG)
    admin_access: bool = False
    share_id: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    _KEYS = (
        "requestNames",
        "poolName",
        "deviceName",
        "cdiDeviceIds",
        "uuid",
        "gpuUuid",
        "adminAccess",
        "shareId",
    )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        out.update(
            requestNames=list(self.request_names),
            poolName=self.pool_name,
            deviceName=self.device_name,
            cdiDeviceIds=list(self.cdi_device_ids),
            uuid=self.uuid,
            gpuUuid=self.gpu_uuid,
            adminAccess=self.admin_access,
        )
        if self.share_id is not None:
            out["shareId"] = self.share_id
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> DeviceRecord:
        share = obj.get("shareId")
        return cls(
            request_names=tuple(str(r) for r in obj.get("requestNames") or ()),
            pool_name=str(obj["poolName"]),
            device_name=str(obj["deviceName"]),
            cdi_device_ids=tuple(str(i) for i in obj.get("cdiDeviceIds") or ()),
            uuid=str(obj.get("uuid", "")),
            gpu_uuid=str(obj.get("gpuUuid", "")),
            admin_access=bool(obj.get("adminAccess", False)),
            share_id=str(share) if share is not None else None,
            extra=_known(obj, cls._KEYS),
        )


@dataclass(frozen=True)
class ClaimRecord:
    """One claim in the checkpoint."""

    uid: str
    namespace: str
    name: str
    state: ClaimState
    devices: tuple[DeviceRecord, ...] = ()
    instance: str = ""  # the plugin instance that recorded it
    actions: tuple[Mapping[str, Any], ...] = ()  # NVML settings applied, e.g. compute mode
    rebuilt: bool = False  # reconstructed from a CDI spec: request names unknown
    updated: float = 0.0
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    _KEYS = (
        "namespace",
        "name",
        "state",
        "devices",
        "instance",
        "actions",
        "rebuilt",
        "updated",
    )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        out.update(
            namespace=self.namespace,
            name=self.name,
            state=self.state.value,
            devices=[d.to_json() for d in self.devices],
            instance=self.instance,
            actions=[dict(a) for a in self.actions],
            updated=self.updated,
        )
        if self.rebuilt:
            out["rebuilt"] = True
        return out

    @classmethod
    def from_json(cls, uid: str, obj: Mapping[str, Any]) -> ClaimRecord:
        return cls(
            uid=uid,
            namespace=str(obj.get("namespace", "")),
            name=str(obj.get("name", "")),
            state=ClaimState(obj["state"]),
            devices=tuple(DeviceRecord.from_json(d) for d in obj.get("devices") or ()),
            instance=str(obj.get("instance", "")),
            actions=tuple(dict(a) for a in obj.get("actions") or ()),
            rebuilt=bool(obj.get("rebuilt", False)),
            updated=float(obj.get("updated", 0.0)),
            extra=_known(obj, cls._KEYS),
        )

    def with_state(self, state: ClaimState, **changes: Any) -> ClaimRecord:
        return replace(self, state=state, updated=time.time(), **changes)


@dataclass
class Checkpoint:
    """The decoded document. `extra` keeps unknown body fields for the next write."""

    boot_id: str
    claims: dict[str, ClaimRecord] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        out = dict(self.extra)
        out["bootId"] = self.boot_id
        out["claims"] = {uid: c.to_json() for uid, c in sorted(self.claims.items())}
        return out

    def document(self) -> dict[str, Any]:
        body = self.body()
        return {
            "kind": KIND,
            "schemaVersion": SCHEMA_VERSION,
            "checksum": checksum(body),
            "body": body,
        }


def decode(data: bytes) -> Checkpoint:
    """Parse and verify a checkpoint document; raises CorruptCheckpoint."""
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise CorruptCheckpoint(f"not JSON: {e}") from e
    if not isinstance(doc, dict) or doc.get("kind") != KIND:
        raise CorruptCheckpoint(f"not a {KIND} document")
    version = str(doc.get("schemaVersion", ""))
    major = version.split(".", 1)[0]
    if not major.isdigit():
        raise CorruptCheckpoint(f"bad schemaVersion {version!r}")
    if int(major) != SCHEMA_MAJOR:
        raise CorruptCheckpoint(
            f"schemaVersion {version} is not readable by this driver (major {SCHEMA_MAJOR})"
        )
    body = doc.get("body")
    if not isinstance(body, dict):
        raise CorruptCheckpoint("missing body")
    want = doc.get("checksum")
    got = checksum(body)
    if want != got:
        raise CorruptCheckpoint(f"checksum mismatch: file says {want}, content is {got}")
    try:
        claims = {
            str(uid): ClaimRecord.from_json(str(uid), rec)
            for uid, rec in (body.get("claims") or {}).items()
        }
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        raise CorruptCheckpoint(f"bad claim record: {type(e).__name__}: {e}") from e
    return Checkpoint(
        boot_id=str(body.get("bootId", "")),
        claims=claims,
        extra=_known(body, ("bootId", "claims")),
    )


@dataclass
class LoadReport:
    """What start-up found, for the log and for tests."""

    existed: bool = False
    moved_aside: Path | None = None
    corruption: str = ""
    rebuilt_claims: int = 0
    boot_changed: bool = False
    dropped_claims: int = 0
    sweep_failed: str = ""  # why the start-up sweep of CDI specs failed (retried later)


Rebuild = Callable[[], dict[str, ClaimRecord]]


class CheckpointStore:
    """Read-modify-write access to the checkpoint, safe across threads and processes."""

    def __init__(
        self,
        state_dir: Path,
        boot_id: str,
        rebuild: Rebuild | None = None,
        file_name: str = FILE_NAME,
        owner: str = "",
    ) -> None:
        self.dir = state_dir
        self.path = state_dir / file_name
        self.boot_id = boot_id
        self._rebuild = rebuild
        # Private files (0600): an old version in a spare reveals nothing new, so no scrub.
        self._files = Recycler(
            state_dir, file_name, mode=0o600, max_spares=2, owner=owner, scrub=False
        )
        self._lock = threading.Lock()
        self._lock_fd: int | None = None
        self._cache: tuple[tuple[int, int, int], Checkpoint] | None = None
        self._queue_lock = threading.Lock()
        self._queue: list[_Op] = []
        self.writes = 0
        self._loaded = False  # load() ran: from then on a missing file means it vanished

    # --- locking ---
    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the in-process lock and the cross-process flock."""
        with self._lock:
            if self._lock_fd is None:
                self.dir.mkdir(parents=True, exist_ok=True)
                self._lock_fd = os.open(
                    self.dir / LOCK_NAME,
                    os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o600,
                )
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def close(self) -> None:
        with self._lock:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    # --- reading ---
    def _stat_key(self) -> tuple[int, int, int] | None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode):
            raise CorruptCheckpoint(f"{self.path} is not a regular file (a symlink?)")
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _read(self) -> Checkpoint | None:
        """The checkpoint on disk (cached by inode/mtime/size); None if absent."""
        key = self._stat_key()
        if key is None:
            return None
        cache = self._cache
        if cache is not None and cache[0] == key:
            return cache[1]
        fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            data = f.read()
        cp = decode(data)
        self._cache = (key, cp)
        return cp

    def snapshot(self) -> dict[str, ClaimRecord]:
        """The current claims without taking the lock (files are replaced atomically)."""
        try:
            cp = self._read()
        except CorruptCheckpoint:
            cp = None
        if cp is None and (self._loaded or self._rebuild is None):
            # Corrupted, or vanished since it was loaded (a wiped state dir): the
            # locked load repairs it from the CDI specs before anyone trusts "empty".
            with self.locked():
                return dict(self._load_locked(LoadReport()).claims)
        return dict(cp.claims) if cp is not None else {}

    def get(self, uid: str) -> ClaimRecord | None:
        return self.snapshot().get(uid)

    def _move_aside(self, reason: str, report: LoadReport) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{secrets.token_hex(2)}")
        os.replace(self.path, target)
        report.moved_aside = target
        report.corruption = reason
        log.error(
            "CHECKPOINT CORRUPTED: %s: %s; moved aside to %s and rebuilding from CDI specs",
            self.path,
            reason,
            target,
        )

    def _load_locked(self, report: LoadReport) -> Checkpoint:
        try:
            cp = self._read()
            report.existed = cp is not None
        except CorruptCheckpoint as e:
            report.existed = True
            self._move_aside(str(e), report)
            claims = self._rebuild() if self._rebuild is not None else {}
            report.rebuilt_claims = len(claims)
            cp = Checkpoint(self.boot_id, claims)
            self._write_locked(cp)
            return cp
        except OSError as e:
            raise OSError(e.errno or errno.EIO, f"cannot read checkpoint {self.path}: {e}") from e
        if cp is None:
            # No checkpoint is not "nothing prepared" when specs of ours are on disk
            # (a wiped or lost state dir): rebuild from them, as after corruption.
            claims = self._rebuild() if self._rebuild is not None else {}
            if claims:
                report.rebuilt_claims = len(claims)
                report.corruption = "missing"
                log.error(
                    "CHECKPOINT MISSING: %s does not exist but %d CDI spec(s) of ours do; "
                    "rebuilt their claims from the specs",
                    self.path,
                    len(claims),
                )
            cp = Checkpoint(self.boot_id, claims)
            self._write_locked(cp)
            return cp
        if self.boot_id and cp.boot_id != self.boot_id:
            report.boot_changed = True
            report.dropped_claims = len(cp.claims)
            log.warning(
                "boot id changed (%s -> %s): forgetting %d prepared claim(s); "
                "the kubelet prepares them again",
                cp.boot_id or "none",
                self.boot_id,
                len(cp.claims),
            )
            cp = Checkpoint(self.boot_id, {}, dict(cp.extra))
            self._write_locked(cp)
        return cp

    def load(self) -> LoadReport:
        """Open (create, repair, or reset after reboot) the checkpoint. Call at start.

        Temp and spare files of earlier writers are removed too: writers hold
        the lock while they use one, so none is in use now.
        """
        report = LoadReport()
        with self.locked():
            self._files.sweep(lambda _owner: False)
            self._load_locked(report)
            self._loaded = True
        return report

    # --- writing ---
    def _write_locked(self, cp: Checkpoint, durable: bool = True) -> None:
        body = canonical(cp.body())
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        # The document with sorted keys, built around the already-canonical body.
        data = b'{"body":%s,"checksum":"%s","kind":"%s","schemaVersion":"%s"}' % (
            body,
            digest.encode(),
            KIND.encode(),
            SCHEMA_VERSION.encode(),
        )
        temp = self._files.write_temp(data, durable)
        self._files.commit(temp, self.path)
        if durable:
            fsync_dir(self.dir)
        self.writes += 1
        key = self._stat_key()
        self._cache = (key, cp) if key is not None else None

    def update(
        self, fn: Callable[[dict[str, ClaimRecord]], tuple[T, bool]], durable: bool = True
    ) -> T:
        """Run fn on the claims under the lock; write if it reports a change.

        fn returns (result, changed); if it raises, the exception is re-raised
        here and none of its changes are kept.
        Concurrent callers are group-committed: one thread takes the lock, runs
        every waiting fn in arrival order and writes once for all of them.
        durable=False skips the fsyncs (the write is still atomic): for records
        that only need to survive a process crash, since after a power loss the
        boot id changes and every record is discarded anyway.
        """
        op = _Op(fn, durable)
        with self._queue_lock:
            self._queue.append(op)
        while not op.done.is_set():
            # Whoever gets the lock first commits everything queued so far.
            with self.locked():
                if op.done.is_set():
                    break
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                self._commit(batch)
        if op.error is not None:
            raise op.error
        return cast(T, op.result)

    def _commit(self, batch: list[_Op]) -> None:
        try:
            cp = self._load_locked(LoadReport())
            claims = dict(cp.claims)
            changed = durable = False
            for op in batch:
                work = dict(claims)  # a failing fn leaves no trace for the next one
                try:
                    op.result, op_changed = op.fn(work)
                except Exception as e:
                    op.error = e
                    continue
                claims = work
                changed = changed or op_changed
                durable = durable or (op_changed and op.durable)
            if changed:
                self._write_locked(
                    Checkpoint(self.boot_id or cp.boot_id, claims, dict(cp.extra)), durable
                )
        except BaseException as e:
            for op in batch:
                if op.error is None:
                    op.error = e
        finally:
            for op in batch:
                op.done.set()


@dataclass
class _Op:
    """One queued read-modify-write of the checkpoint."""

    fn: Callable[[dict[str, ClaimRecord]], tuple[Any, bool]]
    durable: bool
    result: Any = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)
