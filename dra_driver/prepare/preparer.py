"""ClaimPreparer: NodePrepareResources / NodeUnprepareResources for GPUs and MIG devices.

Per claim, prepare reads the ResourceClaim (off the event loop), checks its
UID, plans the claim (prepare/allocation.py: this driver's results on this
node's pool, resolved to inventory devices, with their configuration), writes
the claim's CDI spec and records the claim in the checkpoint. The checkpoint
is the source of truth and the arbiter between claims and between plugin
instances:

* a claim is recorded `prepare-started` (with its devices, which reserves
  them) before any side effect, and `prepared` after all of them;
* a prepared claim is answered again from the checkpoint alone, identically;
* unprepare uses only the checkpoint (the claim may be gone from the API);
* at start, unfinished claims of dead instances are rolled back and orphaned
  CDI specs swept (prepare/recovery.py);
* with dynamic MIG (prepare/dynamic.py), a MIG device that does not exist yet
  is created after the started record (which holds the intent) and recorded
  as created before its CDI spec is built; unprepare destroys what this driver
  made before it drops the record; a failed or rolled-back claim destroys what
  it made. A full GPU and MIG devices of it are never prepared together.

Concurrency: calls for different pods, and claims within one call, run in
parallel on a small thread pool. A claim UID is handled by one task at a time;
NVML settings take per-GPU locks; the checkpoint lock is held only for one
short read-modify-write. No lock is held across the API read.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import replace
from functools import partial
from typing import Any

from ..health.board import HealthBoard
from ..inventory import Inventory
from ..logsafe import clip
from ..nvml.errors import NvmlError
from ..nvml.migops import MigManager
from ..nvml.types import NvmlBackend
from .allocation import Action, Planned, check_claim, merged_admin, nvml_actions, plan_claim
from .allocation import spec_devices as merged_spec_devices
from .cdi import (
    CLAIM_UID_RE,
    CdiError,
    CdiSpecs,
    HostLayout,
    InvalidClaimUid,
    StagedSpec,
    check_claim_uid,
)
from .checkpoint import (
    CheckpointStore,
    ClaimRecord,
    ClaimState,
    CorruptCheckpoint,
    DeviceRecord,
    LoadReport,
    read_boot_id,
)
from .config import base_request
from .crashpoints import CrashPoints
from .dynamic import (
    MigLayout,
    MigObserver,
    MigStats,
    create_hint,
    needs_create,
    with_created,
    with_intent,
)
from .files import fsync_dir
from .locks import InstanceRegistry, KeyedLocks
from .options import PreparerConfig
from .recovery import ensure_spec, rebuild_from_cdi, recover, sweep
from .sources import ClaimNotFound, ClaimSource, ClaimSourceError
from .types import (
    CALL_DEADLINE,
    ClaimError,
    ClaimRef,
    ErrorKind,
    PreparedDevice,
    PrepareResult,
    UnprepareResult,
)

log = logging.getLogger(__name__)

MAX_RETRY_INTERVAL = 300.0  # background repairs retry at least this often


def _ref_text(ref: ClaimRef) -> str:
    """A claim for the log: its names come from users, so escaped and capped."""
    return clip(f"{ref.namespace}/{ref.name}:{ref.uid}", 1024)


def _distinct(claims: Sequence[ClaimRef]) -> list[ClaimRef]:
    seen: dict[str, ClaimRef] = {}
    for c in claims:
        seen.setdefault(c.uid, c)
    return list(seen.values())


def _answer(rec: ClaimRecord) -> tuple[PreparedDevice, ...]:
    return tuple(
        PreparedDevice(
            request_names=d.request_names,
            pool_name=d.pool_name,
            device_name=d.device_name,
            cdi_device_ids=d.cdi_device_ids,
            share_id=d.share_id,
        )
        for d in rec.devices
    )


class ClaimPreparer:
    """The Preparer the kubelet servicers call (see dra_driver/prepare/types.py)."""

    def __init__(
        self,
        config: PreparerConfig,
        inventory: Callable[[], Inventory],
        claims: ClaimSource,
        health: HealthBoard | None,
        nvml: NvmlBackend | None,
        migs: MigManager | None = None,
        mig_observer: MigObserver | None = None,
    ) -> None:
        self._config = config
        self._inventory = inventory
        self._claims = claims
        self._health = health
        self._nvml = nvml
        self._instances = InstanceRegistry(config.state_dir / "instances")
        self._host = HostLayout(
            config.dev_root,
            config.proc_root,
            config.driver_root,
            self._driver_version,
            host_driver_root=config.host_driver_root,
            nvidia_proc_dir=config.nvidia_proc_dir,
        )
        self._cdi = CdiSpecs(
            config.cdi_root, config.driver_name, self._host, owner=self._instances.id
        )
        self._store = CheckpointStore(
            config.state_dir,
            read_boot_id(config.proc_root),
            rebuild=lambda: rebuild_from_cdi(
                self._cdi, self._inventory, config.pool_name, self._instances.id
            ),
            owner=self._instances.id,
        )
        self._gpu_locks = KeyedLocks()
        self._migs: MigLayout | None = None
        if config.dynamic_mig and migs is not None:
            self._migs = MigLayout(inventory(), migs, self._gpu_locks, mig_observer)
        self._claim_locks: dict[str, tuple[asyncio.Lock, int]] = {}
        # Local work (checkpoint, CDI, NVML) and API reads on separate threads, so that
        # a hung API server never holds the threads checkpoint hits and unprepares need.
        self._pool = ThreadPoolExecutor(
            max_workers=config.workers, thread_name_prefix="claim-prepare"
        )
        self._api = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="claim-api")
        # File work that overlaps a claim's own checkpoint write (see _prepare_sync).
        self._io = ThreadPoolExecutor(max_workers=4, thread_name_prefix="claim-io")
        self._crash = CrashPoints()
        self.load_report: LoadReport | None = None
        # Background repair of what failed on the request path or at start: a sweep
        # of orphaned specs (read-only CDI root) and started records a roll-back
        # could not drop. Retried with doubling intervals up to MAX_RETRY_INTERVAL.
        self.sweep_retry_interval = 30.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._repair_task: asyncio.Task[None] | None = None
        self._need_sweep = False
        self._pending_drops: set[str] = set()

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Load or repair the checkpoint, roll back unfinished claims, sweep orphaned specs."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        await self._loop.run_in_executor(self._pool, self._start_sync)
        if self.load_report is not None and self.load_report.sweep_failed:
            self._schedule_repair(sweep=True)

    async def close(self) -> None:
        """Release this instance's lock and stop the worker threads."""
        if self._repair_task is not None:
            self._repair_task.cancel()
            await asyncio.gather(self._repair_task, return_exceptions=True)
        self._api.shutdown(wait=False, cancel_futures=True)  # a hung read must not block exit
        self._pool.shutdown(wait=True)
        self._io.shutdown(wait=True)
        self._instances.release()
        self._store.close()

    def _driver_version(self) -> str:
        try:
            return self._inventory().driver_version
        except Exception as e:  # the inventory is someone else's; never fail a spec on it
            log.warning("driver version unknown: %s", e)
            return ""

    def _start_sync(self) -> None:
        self._instances.acquire()
        self._crash.warn()
        self.load_report = recover(
            self._store,
            self._cdi,
            self._instances,
            self._migs.destroy_claim if self._migs is not None else None,
        )

    # --- background repair ---------------------------------------------------------------

    def _schedule_repair(self, sweep: bool = False, drop: str | None = None) -> None:
        """Note work for the repair task and start it (from any thread)."""
        loop = self._loop
        if loop is None:
            return
        if threading.get_ident() != self._loop_thread:
            loop.call_soon_threadsafe(self._schedule_repair, sweep, drop)
            return
        self._need_sweep = self._need_sweep or sweep
        if drop is not None:
            self._pending_drops.add(drop)
        if self._repair_task is None or self._repair_task.done():
            self._repair_task = loop.create_task(self._repair(), name="claim-repair")

    async def _repair(self) -> None:
        interval = self.sweep_retry_interval
        while self._need_sweep or self._pending_drops:
            await asyncio.sleep(interval)
            sweep_now, drops = self._need_sweep, set(self._pending_drops)
            try:
                await asyncio.get_running_loop().run_in_executor(
                    self._pool, self._repair_sync, sweep_now, drops
                )
            except Exception as e:
                interval = min(interval * 2, MAX_RETRY_INTERVAL)
                log.warning("repair still failing: %s; next try in %.0fs", e, interval)
                continue
            self._need_sweep = self._need_sweep and not sweep_now
            self._pending_drops -= drops

    def _repair_sync(self, sweep_now: bool, drops: set[str]) -> None:
        if drops:
            self._store.update(lambda claims: self._drop_started(claims, drops))
            log.info("dropped the started record(s) of rolled-back claim(s) %s", sorted(drops))
        if sweep_now:
            swept = sweep(self._store, self._cdi, self._instances)
            log.info("swept %d orphaned CDI spec(s) on retry", len(swept))

    def _drop_started(self, claims: dict[str, ClaimRecord], uids: set[str]) -> tuple[None, bool]:
        changed = False
        for uid in uids:
            cur = claims.get(uid)
            if (
                cur is not None
                and cur.state is ClaimState.STARTED
                and cur.instance == self._instances.id
            ):
                del claims[uid]
                changed = True
        return None, changed

    # --- per-claim serialisation ---------------------------------------------------------

    @asynccontextmanager
    async def _claim_lock(self, uid: str) -> AsyncIterator[None]:
        lock, users = self._claim_locks.get(uid, (asyncio.Lock(), 0))
        self._claim_locks[uid] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._claim_locks[uid]
            if users <= 1:
                del self._claim_locks[uid]
            else:
                self._claim_locks[uid] = (lock, users - 1)

    # --- prepare -------------------------------------------------------------------------

    async def prepare(self, claims: Sequence[ClaimRef]) -> dict[str, PrepareResult]:
        refs = _distinct(claims)
        results = await asyncio.gather(*(self._prepare_one(r) for r in refs))
        return {r.uid: res for r, res in zip(refs, results, strict=True)}

    async def prepared(self, claims: Sequence[ClaimRef]) -> dict[str, PrepareResult]:
        """Answers for claims already prepared, from the checkpoint alone (AnswersFromCheckpoint).

        Claims another task is working on are left out (the caller queues them),
        so nothing here waits on a lock, the API server or a busy thread pool.
        """
        refs = [
            r
            for r in _distinct(claims)
            if CLAIM_UID_RE.fullmatch(r.uid) and r.uid not in self._claim_locks
        ]
        if not refs:
            return {}
        found = await asyncio.gather(*map(self._cached_one, refs))
        return {
            ref.uid: PrepareResult(devices=devices)
            for ref, devices in zip(refs, found, strict=True)
            if devices is not None
        }

    async def _cached_one(self, ref: ClaimRef) -> tuple[PreparedDevice, ...] | None:
        if ref.uid in self._claim_locks:
            return None
        async with self._claim_lock(ref.uid):
            try:
                return await asyncio.get_running_loop().run_in_executor(
                    self._pool, self._cached, ref
                )
            except Exception:
                return None  # the ordinary path reports it

    async def _prepare_one(self, ref: ClaimRef) -> PrepareResult:
        try:
            check_claim_uid(ref.uid)
        except InvalidClaimUid as e:
            return PrepareResult(error=str(e), error_kind=ErrorKind.INVALID_CLAIM)
        start = time.perf_counter()
        async with self._claim_lock(ref.uid):
            try:
                devices = await self._prepare_steps(ref)
            except ClaimError as e:
                log.warning("prepare %s failed: %s", _ref_text(ref), clip(str(e)))
                return PrepareResult(error=str(e), error_kind=e.kind)
            except Exception as e:
                log.exception("prepare %s: internal error", _ref_text(ref))
                return PrepareResult(
                    error=f"internal error: {type(e).__name__}: {e}", error_kind=ErrorKind.INTERNAL
                )
        log.info(
            "prepared %s: %s in %.1f ms",
            _ref_text(ref),
            ", ".join(d.device_name for d in devices) or "no devices of this driver",
            (time.perf_counter() - start) * 1e3,
        )
        return PrepareResult(devices=devices)

    async def _prepare_steps(self, ref: ClaimRef) -> tuple[PreparedDevice, ...]:
        """Checkpoint, API read, then the local work, each on its own threads.

        The API read has threads of its own and is bounded by the caller's
        deadline (CALL_DEADLINE), so a hung API server neither holds the
        threads checkpoint hits and unprepares need nor outlives the kubelet's
        patience: the kubelet gets a per-claim error instead.
        """
        loop = asyncio.get_running_loop()
        cached = await loop.run_in_executor(self._pool, self._cached, ref)
        if cached is not None:
            return cached
        deadline = CALL_DEADLINE.get()
        fetch = loop.run_in_executor(self._api, self._fetch, ref)
        if deadline is None:
            claim = await fetch
        else:
            budget = deadline - time.monotonic()
            try:
                claim = await asyncio.wait_for(fetch, max(0.0, budget))
            except TimeoutError:
                raise ClaimError(
                    f"reading ResourceClaim {ref.namespace}/{ref.name} from the API server did "
                    f"not finish within the caller's deadline ({max(0.0, budget):.1f}s left); "
                    "the API server is slow or unreachable, retry",
                    ErrorKind.API_SERVER,
                ) from None
        return await loop.run_in_executor(self._pool, self._prepare_sync, ref, claim)

    def _cached(self, ref: ClaimRef) -> tuple[PreparedDevice, ...] | None:
        """The answer for a claim already prepared (its spec rewritten if missing), or None."""
        rec = self._store.get(ref.uid)
        if rec is not None and rec.state is ClaimState.PREPARED and not rec.rebuilt:
            ensure_spec(self._cdi, rec, self._inventory)
            return _answer(rec)
        return None

    def _prepare_sync(self, ref: ClaimRef, claim: dict[str, Any]) -> tuple[PreparedDevice, ...]:
        plans = plan_claim(
            ref,
            claim,
            driver=self._config.driver_name,
            pool=self._config.pool_name,
            inventory=self._inventory(),
            health=self._health,
            resolve=self._migs.resolve if self._migs is not None else None,
        )
        if not plans:
            return ()
        actions = nvml_actions(plans, have_nvml=self._nvml is not None)
        record = self._record(ref, plans)
        if any(needs_create(p.device) for p in plans):
            return self._prepare_creating(ref, plans, record, actions)
        devices = merged_spec_devices((p.device, p.admin) for p in plans)
        try:
            spec = self._cdi.build(ref.uid, devices)
        except CdiError as e:
            raise ClaimError(str(e), ErrorKind.CDI_OR_CHECKPOINT) from e
        # The spec is staged (written and fsynced under a temp name no runtime reads)
        # while the started record is written. That record is atomic but not fsynced:
        # it only has to outlive a process crash (the page cache does), because after
        # a power loss the boot id changes and every record is discarded anyway.
        staging = self._io.submit(self._cdi.stage, ref.uid, spec)
        try:
            existing = self._store.update(
                lambda claims: self._reserve(claims, record), durable=False
            )
        except BaseException:
            self._discard(staging)
            raise
        if existing is not None:
            self._discard(staging)
            return _answer(existing)
        self._crash.crash("after-started")
        try:
            if actions:
                self._apply(actions)
            self._cdi.commit(staging.result(), sync_dir=False)
            self._crash.crash("after-cdi")
            dir_synced = self._io.submit(fsync_dir, self._cdi.root)
            done = record.with_state(
                ClaimState.PREPARED, actions=tuple(a.to_json() for a in actions)
            )
            self._crash.crash("before-prepared")
            try:
                self._store.update(lambda claims: self._finish(claims, done))
            finally:
                dir_synced.result()
        except BaseException as e:
            self._discard(staging)
            self._roll_back(ref.uid)
            if isinstance(e, CdiError | OSError):
                raise ClaimError(
                    f"writing the claim's CDI spec or checkpoint: {e}", ErrorKind.CDI_OR_CHECKPOINT
                ) from e
            raise
        return _answer(done)

    def _prepare_creating(
        self,
        ref: ClaimRef,
        plans: Sequence[Planned],
        record: ClaimRecord,
        actions: Sequence[Action],
    ) -> tuple[PreparedDevice, ...]:
        """Prepare a claim with MIG devices to create: intent, create, record, spec, done."""
        assert self._migs is not None
        migs = self._migs
        record = replace(
            record,
            devices=tuple(
                with_intent(d, p.device) if needs_create(p.device) else d
                for d, p in zip(record.devices, plans, strict=True)
            ),
        )
        earlier: list[ClaimRecord] = []

        def reserve(claims: dict[str, ClaimRecord]) -> tuple[ClaimRecord | None, bool]:
            prior = claims.get(record.uid)
            if (
                prior is not None
                and prior.state is ClaimState.STARTED
                and (
                    prior.instance == self._instances.id
                    or not self._instances.is_alive(prior.instance)
                )
            ):
                earlier.append(prior)  # an attempt that failed and could not clean up
            return self._reserve(claims, record)

        existing = self._store.update(reserve, durable=False)
        if existing is not None:
            return _answer(existing)
        self._crash.crash("after-started")
        made: dict[str, Planned] = {}
        try:
            for prior in earlier:
                self._clear_earlier_attempt(prior, migs)
            ready = []
            for p in plans:
                if needs_create(p.device) and p.device.name not in made:
                    try:
                        real = migs.create(p.device)
                    except NvmlError as e:
                        hint = create_hint(e)
                        raise ClaimError(
                            f"request {p.request!r}: creating MIG device {p.device.name}: {e}"
                            + (f"; {hint}" if hint else ""),
                            ErrorKind.NVML,
                        ) from e
                    made[p.device.name] = replace(p, device=real)
                    self._crash.crash("after-mig-create")
                    record = replace(
                        record,
                        devices=tuple(
                            with_created(d, real) if d.device_name == real.name else d
                            for d in record.devices
                        ),
                    )
                    self._store.update(partial(self._finish, done=record), durable=False)
                ready.append(made.get(p.device.name, p))
            self._crash.crash("after-mig-record")
            if actions:
                self._apply(actions)
            devices = merged_spec_devices((p.device, p.admin) for p in ready)
            try:
                spec = self._cdi.build(ref.uid, devices)
            except CdiError as e:
                raise ClaimError(str(e), ErrorKind.CDI_OR_CHECKPOINT) from e
            self._cdi.write(ref.uid, spec)
            self._crash.crash("after-cdi")
            done = record.with_state(
                ClaimState.PREPARED, actions=tuple(a.to_json() for a in actions)
            )
            self._crash.crash("before-prepared")
            self._store.update(lambda claims: self._finish(claims, done))
        except BaseException as e:
            self._roll_back(ref.uid, record)
            if isinstance(e, CdiError | OSError):
                raise ClaimError(
                    f"writing the claim's CDI spec or checkpoint: {e}", ErrorKind.CDI_OR_CHECKPOINT
                ) from e
            raise
        return _answer(done)

    def _clear_earlier_attempt(self, prior: ClaimRecord, migs: MigLayout) -> None:
        """Destroy what an earlier, failed attempt of this claim made (a create it gave up
        on may have finished since): else its instance holds the placement this attempt
        needs and the kubelet's retry fails once more for nothing."""
        failed = migs.destroy_devices(prior.devices)
        if failed:
            raise ClaimError(
                "an earlier attempt of this claim left MIG devices that cannot be destroyed "
                f"yet: {'; '.join(failed)}",
                ErrorKind.NVML,
            )

    def _discard(self, staging: Future[StagedSpec]) -> None:
        """Remove a staged spec that will not be committed (no-op once committed)."""
        try:
            self._cdi.abort(staging.result())
        except Exception as e:
            log.warning("discarding a staged CDI spec: %s", e)

    def _fetch(self, ref: ClaimRef) -> dict[str, Any]:
        try:
            claim = self._claims.get_claim(ref.namespace, ref.name)
        except ClaimNotFound as e:
            raise ClaimError(
                f"ResourceClaim {ref.namespace}/{ref.name} not found", ErrorKind.CLAIM_NOT_FOUND
            ) from e
        except ClaimSourceError as e:
            raise ClaimError(str(e), ErrorKind.API_SERVER) from e
        check_claim(ref, claim)
        return claim

    def _apply(self, actions: Sequence[Action]) -> None:
        assert self._nvml is not None
        with self._gpu_locks.hold(a.gpu_uuid for a in actions):
            for a in actions:
                try:
                    self._nvml.set_compute_mode(a.gpu_uuid, a.compute_mode)
                except NvmlError as e:
                    raise ClaimError(
                        f"set compute mode {a.compute_mode} on GPU {a.gpu_uuid}: {e}",
                        ErrorKind.NVML,
                    ) from e

    def _record(self, ref: ClaimRef, plans: Sequence[Planned]) -> ClaimRecord:
        node = self._config.pool_name
        devices = tuple(
            DeviceRecord(
                request_names=(base_request(p.request),),
                pool_name=node,
                device_name=p.device.name,
                cdi_device_ids=(self._cdi.device_id(ref.uid, p.device.name),),
                uuid=p.device.uuid,
                gpu_uuid=p.gpu_uuid,
                admin_access=p.admin,
                share_id=p.share_id,
            )
            for p in plans
        )
        return ClaimRecord(
            uid=ref.uid,
            namespace=ref.namespace,
            name=ref.name,
            state=ClaimState.STARTED,
            devices=devices,
            instance=self._instances.id,
            updated=time.time(),
        )

    def _reserve(
        self, claims: dict[str, ClaimRecord], record: ClaimRecord
    ) -> tuple[ClaimRecord | None, bool]:
        """Record the claim as started unless a device is taken (checkpoint lock held)."""
        current = claims.get(record.uid)
        if current is not None and current.state is ClaimState.PREPARED and not current.rebuilt:
            return current, False  # another instance finished it meanwhile
        admin = merged_admin((d.device_name, d.admin_access) for d in record.devices)
        whole = {d.gpu_uuid for d in record.devices if d.uuid and d.uuid == d.gpu_uuid}
        parts = {d.gpu_uuid for d in record.devices if d.gpu_uuid and d.uuid != d.gpu_uuid}
        if whole & parts:
            raise ClaimError(
                "the claim asks for a full GPU and MIG devices of it at once",
                ErrorKind.DEVICE_UNAVAILABLE,
            )
        for other in claims.values():
            if other.uid == record.uid:
                continue
            if other.state is ClaimState.STARTED and not self._instances.is_alive(other.instance):
                continue  # left by a dead instance; rolled back at the next start
            for d in other.devices:
                other_whole = bool(d.uuid) and d.uuid == d.gpu_uuid
                if (other_whole and d.gpu_uuid in parts) or (
                    not other_whole and d.gpu_uuid in whole
                ):
                    raise ClaimError(
                        f"GPU {d.gpu_uuid} is prepared for claim {other.namespace}/{other.name} "
                        f"({other.uid}) as "
                        f"{'a full GPU' if other_whole else 'MIG device ' + d.device_name}; a "
                        "full GPU and its MIG devices are never prepared at the same time",
                        ErrorKind.DEVICE_UNAVAILABLE,
                    )
                # Kubernetes' semantics: a claim with admin access ignores ordinary
                # claims on the device, whichever came first (a monitoring pod beside
                # a workload); only two ordinary claims conflict.
                if d.device_name in admin and not (admin[d.device_name] or d.admin_access):
                    raise ClaimError(
                        f"device {d.device_name} is already prepared for claim "
                        f"{other.namespace}/{other.name} ({other.uid}); a device is shared "
                        "between claims only when one of them has admin access",
                        ErrorKind.DEVICE_UNAVAILABLE,
                    )
        claims[record.uid] = record
        return None, True

    def _finish(self, claims: dict[str, ClaimRecord], done: ClaimRecord) -> tuple[None, bool]:
        current = claims.get(done.uid)
        if current is None or current.instance != done.instance:
            raise ClaimError(
                "the claim was unprepared while it was being prepared; retry",
                ErrorKind.CDI_OR_CHECKPOINT,
            )
        claims[done.uid] = done
        return None, True

    def _roll_back(self, uid: str, record: ClaimRecord | None = None) -> None:
        """Undo a failed prepare: delete its spec, destroy the MIG devices it made (dynamic
        MIG), drop our started entry. Never raises.

        The record is dropped even when the spec cannot be removed (a read-only
        CDI root): a spec nobody was told about is an orphan, swept later, while
        a live started record would refuse the device to every other claim. A
        MIG device that cannot be destroyed keeps the record, for the next start.
        """
        try:
            self._cdi.remove(uid)
        except Exception as e:
            log.warning(
                "rolling back claim %s: cannot remove its CDI spec (%s); dropping its record "
                "anyway, the spec is swept in the background",
                uid,
                e,
            )
            self._schedule_repair(sweep=True)
        if record is not None and self._migs is not None:
            failed = self._migs.destroy_claim(record)
            if failed:
                log.error("claim %s: MIG devices left for the next start: %s", uid, failed)
                return
        try:
            self._store.update(lambda claims: self._drop_started(claims, {uid}))
        except Exception:
            log.exception(
                "rolling back claim %s: cannot drop its started record; retrying in the background",
                uid,
            )
            self._schedule_repair(drop=uid)

    # --- unprepare -----------------------------------------------------------------------

    async def unprepare(self, claims: Sequence[ClaimRef]) -> dict[str, UnprepareResult]:
        refs = _distinct(claims)
        results = await asyncio.gather(*(self._unprepare_one(r) for r in refs))
        return {r.uid: res for r, res in zip(refs, results, strict=True)}

    async def _unprepare_one(self, ref: ClaimRef) -> UnprepareResult:
        if not CLAIM_UID_RE.fullmatch(ref.uid):
            return UnprepareResult()  # never prepared here: we refuse such UIDs
        async with self._claim_lock(ref.uid):
            try:
                found = await asyncio.get_running_loop().run_in_executor(
                    self._pool, self._unprepare_sync, ref
                )
            except Exception as e:
                log.exception("unprepare %s failed", _ref_text(ref))
                return UnprepareResult(
                    error=f"unprepare failed: {type(e).__name__}: {e}",
                    error_kind=(
                        ErrorKind.CDI_OR_CHECKPOINT
                        if isinstance(e, CdiError | OSError | CorruptCheckpoint)
                        else ErrorKind.INTERNAL
                    ),
                )
        log.info("unprepared %s%s", _ref_text(ref), "" if found else " (was not prepared)")
        return UnprepareResult()

    def _unprepare_sync(self, ref: ClaimRef) -> bool:
        # The spec goes first (a crash then leaves a record whose unprepare is
        # repeated), and its directory fsync overlaps the checkpoint write.
        removed = self._cdi.remove(ref.uid, sync_dir=False)
        dir_synced = self._io.submit(fsync_dir, self._cdi.root) if removed else None
        if self._migs is not None:
            rec = self._store.get(ref.uid)
            failed = self._migs.destroy_claim(rec) if rec is not None else []
            if failed:
                if dir_synced is not None:
                    dir_synced.result()
                raise ClaimError(
                    f"destroying the claim's MIG devices: {'; '.join(failed)}", ErrorKind.NVML
                )
            self._crash.crash("after-mig-destroy")

        def drop(claims: dict[str, ClaimRecord]) -> tuple[bool, bool]:
            gone = claims.pop(ref.uid, None) is not None
            return gone, gone

        try:
            return self._store.update(drop) or removed
        finally:
            if dir_synced is not None:
                dir_synced.result()

    # --- introspection (tests, demo) -----------------------------------------------------

    def checkpointed(self) -> dict[str, ClaimRecord]:
        return self._store.snapshot()

    def prepared_devices(self) -> Counter[str]:
        """Devices of prepared claims by type, from the checkpoint (the metrics gauge).

        Types are "gpu" and "mig", or "unknown" for a device the inventory no
        longer has. Safe from any thread: the checkpoint file is replaced atomically.
        """
        inventory = self._inventory()
        counts: Counter[str] = Counter()
        for rec in self._store.snapshot().values():
            if rec.state is ClaimState.PREPARED:
                for d in rec.devices:
                    device = inventory.device(d.device_name)
                    counts[device.type.value if device is not None else "unknown"] += 1
        return counts

    def mig_stats(self) -> MigStats | None:
        """Dynamic MIG counts (None without dynamic MIG), for the metrics collector."""
        return self._migs.stats() if self._migs is not None else None

    @property
    def mig_layout(self) -> MigLayout | None:
        return self._migs

    @property
    def store(self) -> CheckpointStore:
        return self._store

    @property
    def cdi(self) -> CdiSpecs:
        return self._cdi
