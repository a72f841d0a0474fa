"""Keeps `status.devices` of every claim prepared here current, off the request path.

The preparer's wrapper (hook.py) calls prepared() / unprepared(): both only
record what is wanted and wake one asyncio task; no kubelet answer ever waits
on the API server. That task, after a debounce, writes what differs from what
it wrote last, one server-side apply per claim, in a small thread pool:

* prepared -> our entries (Ready + Healthy conditions, data);
* a health board change -> the claims whose Healthy condition changed;
* unprepared -> an apply without our entries, which removes them (and only
  them: other drivers' entries belong to other field managers).

Failures never reach a prepare. A claim that is gone (404) or replaced (its
UID changed) is forgotten; a 422 is logged as the bug it is and not retried
until the wanted entries change; anything else is retried with capped
exponential backoff per claim. A server that silently drops status.devices
(feature gate DRAResourceClaimDeviceStatus off, before 1.37) turns the writer
off with one warning. Claims prepared before a restart are adopted from the
checkpoint: their stored entries are read first, so an unchanged claim costs
one GET and no write.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..health.board import DeviceHealth, Health, HealthBoard
from ..inventory import Inventory
from ..prepare.checkpoint import ClaimRecord, ClaimState
from ..prepare.types import ClaimRef, PreparedDevice
from .api import API_VERSION, ClaimStatusApi, StatusApiError, StatusUnreachable
from .entries import Entries, EntryKey, apply_body, device_entry, now_text, our_entries
from .options import ClaimStatusConfig

log = logging.getLogger(__name__)


@dataclass
class ClaimStatusStats:
    """Counters for tests and metrics."""

    applies: int = 0  # successful applies that set entries
    removals: int = 0  # successful applies that removed our entries
    reads: int = 0  # GETs of adopted claims
    errors: int = 0  # failed calls, retried with backoff
    rejected: int = 0  # 422s (each one is a bug)
    gone: int = 0  # claims deleted or replaced before we were done with them


@dataclass
class _Device:
    key: EntryKey
    uuid: str = ""


@dataclass
class _Claim:
    ref: ClaimRef
    devices: tuple[_Device, ...]
    prepared: bool = True
    written: Entries | None = field(default_factory=dict)  # None: unknown, read first
    busy: bool = False
    failures: int = 0
    retry_at: float = 0.0
    rejected: str = ""  # the body the server refused, as JSON
    version: int = 0  # bumped by prepared()/unprepared(): a finished write is stale if moved


class ClaimStatusWriter:
    """The one owner of our `status.devices` entries; run() as a task."""

    def __init__(
        self,
        config: ClaimStatusConfig,
        api: ClaimStatusApi,
        board: HealthBoard | None,
        inventory: Callable[[], Inventory],
        clock: Callable[[], str] = now_text,
    ) -> None:
        self._config = config
        self._api = api
        self._board = board
        self._inventory = inventory
        self._now = clock
        self._claims: dict[str, _Claim] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._pool = ThreadPoolExecutor(config.workers, thread_name_prefix="claim-status")
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self.enabled = True
        self._forbidden_logged = False
        self.stats = ClaimStatusStats()

    # -- what the preparer tells us (event loop thread; never raises) -------------------

    def prepared(self, ref: ClaimRef, devices: Sequence[PreparedDevice]) -> None:
        """A claim was prepared (or answered again): its entries should exist."""
        inv = self._safe_inventory()
        wanted = tuple(
            _Device(
                (self._config.driver_name, d.pool_name, d.device_name, d.share_id or None),
                self._uuid(inv, d.device_name),
            )
            for d in devices
        )
        current = self._claims.get(ref.uid)
        if current is not None and current.prepared and _keys(current.devices) == _keys(wanted):
            return
        if current is None:
            self._claims[ref.uid] = _Claim(ref, wanted)
        else:
            current.ref, current.devices, current.prepared = ref, wanted, True
            current.version += 1
            current.rejected = ""
        self._poke()

    def unprepared(self, ref: ClaimRef) -> None:
        """A claim was unprepared: our entries should go."""
        current = self._claims.get(ref.uid)
        if current is None or not current.prepared:
            return
        current.prepared = False
        current.version += 1
        current.rejected = ""
        self._poke()

    def adopt(self, records: Iterable[ClaimRecord]) -> None:
        """Claims prepared before this process started (from the checkpoint)."""
        for rec in records:
            if rec.state is not ClaimState.PREPARED or rec.uid in self._claims:
                continue
            devices = tuple(
                _Device(
                    (self._config.driver_name, d.pool_name, d.device_name, d.share_id or None),
                    d.uuid,
                )
                for d in rec.devices
            )
            if devices:
                ref = ClaimRef(rec.namespace, rec.uid, rec.name)
                self._claims[rec.uid] = _Claim(ref, devices, written=None)
        self._poke()

    # -- the task --------------------------------------------------------------------------

    async def run(self) -> None:
        """Write until cancelled; entries stay when it stops (the next start adopts them)."""
        follower = asyncio.create_task(self._follow_health(), name="claim-status-health")
        try:
            while True:
                await self._wake.wait()
                await asyncio.sleep(self._config.debounce)
                self._wake.clear()
                self._pass()
        finally:
            follower.cancel()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(follower, *self._tasks, return_exceptions=True)
            if self._timer is not None:
                self._timer.cancel()
            self._pool.shutdown(wait=False, cancel_futures=True)

    async def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until nothing is left to write (tests); False on timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def claims(self) -> dict[str, ClaimRef]:
        """The claims whose entries we keep (prepared, or being removed)."""
        return {uid: c.ref for uid, c in self._claims.items()}

    # -- internals -------------------------------------------------------------------------

    async def _follow_health(self) -> None:
        if self._board is None:
            return
        version = self._board.version
        while True:
            version = await self._board.wait_changed(version)
            if any(c.prepared for c in self._claims.values()):
                self._poke()

    def _poke(self) -> None:
        self._idle.clear()
        self._wake.set()

    def _pass(self) -> None:
        if not self.enabled:
            self._claims.clear()
            self._idle.set()
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        health = {h.device: h for h in self._board.snapshot()} if self._board else None
        inventory = self._safe_inventory()
        pending = False
        next_retry: float | None = None
        for uid, claim in list(self._claims.items()):
            if claim.busy:
                pending = True
                continue
            wanted = self._wanted(claim, health, inventory)
            if claim.written is not None and wanted == claim.written:
                if not claim.prepared:
                    del self._claims[uid]
                continue
            if claim.written is not None and claim.rejected == _fingerprint(wanted):
                continue
            if claim.retry_at > now:
                next_retry = min(next_retry or claim.retry_at, claim.retry_at)
                pending = True
                continue
            pending = True
            claim.busy = True
            task = asyncio.create_task(self._write(claim), name=f"claim-status-{uid}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if next_retry is not None:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_at(next_retry, self._poke)
        if not pending:
            self._idle.set()

    def _wanted(
        self,
        claim: _Claim,
        health: dict[str, DeviceHealth] | None,
        inventory: Inventory | None,
    ) -> Entries:
        if not claim.prepared:
            return {}
        previous = claim.written or {}
        now = self._now()
        out: Entries = {}
        for d in claim.devices:
            name = d.key[2]
            device = inventory.device(name) if inventory is not None else None
            verdict = health.get(name) if health is not None else None
            if verdict is None and device is not None:  # present, but nobody watches it
                verdict = DeviceHealth(name, Health.UNKNOWN, "device health is not monitored")
            out[d.key] = device_entry(d.key, device, d.uuid, verdict, previous.get(d.key), now)
        return out

    async def _write(self, claim: _Claim) -> None:
        loop = asyncio.get_running_loop()
        ref, version = claim.ref, claim.version
        sent: Entries = {}
        try:
            if claim.written is None:
                stored = await loop.run_in_executor(
                    self._pool, self._api.get, ref.namespace, ref.name
                )
                self.stats.reads += 1
                if stored is None or (stored.get("metadata") or {}).get("uid") != ref.uid:
                    self._forget(claim, "is gone or was replaced")
                    return
                claim.written = our_entries(
                    stored, self._config.driver_name, self._config.pool_name
                )
            board = {h.device: h for h in self._board.snapshot()} if self._board else None
            wanted = self._wanted(claim, board, self._safe_inventory())
            if wanted == claim.written:
                claim.failures, claim.retry_at = 0, 0.0
                return
            sent = wanted
            body = apply_body(API_VERSION, ref.namespace, ref.name, ref.uid, wanted)
            result = await loop.run_in_executor(
                self._pool, self._api.apply, ref.namespace, ref.name, body
            )
            stored_entries = our_entries(result, self._config.driver_name, self._config.pool_name)
            if wanted and not stored_entries:
                self._disable()
                return
            claim.written = wanted
            claim.failures, claim.retry_at = 0, 0.0
            if wanted:
                self.stats.applies += 1
            else:
                self.stats.removals += 1
                if not claim.prepared and claim.version == version:
                    self._claims.pop(ref.uid, None)
            log.debug("claim %s/%s: status.devices written (%d entries)", *_names(ref), len(wanted))
        except StatusApiError as e:
            self._failed_api(claim, e, sent)
        except StatusUnreachable as e:
            self._retry(claim, str(e))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("BUG: writing status of claim %s/%s failed", *_names(ref))
            self._retry(claim, "internal error")
        finally:
            claim.busy = False
            self._poke()

    def _failed_api(self, claim: _Claim, e: StatusApiError, sent: Entries) -> None:
        if e.status == 404 or (e.status in (409, 422) and "uid" in e.message.lower()):
            self._forget(claim, f"is gone or was replaced ({e})")
        elif e.status == 422:
            self.stats.rejected += 1
            claim.rejected = _fingerprint(sent)
            log.error(
                "BUG: the API server refused status.devices of claim %s/%s: %s",
                *_names(claim.ref),
                e,
            )
        elif e.status == 403:  # configuration, not weather: retried when the entries change
            self.stats.errors += 1
            claim.rejected = _fingerprint(sent)
            log.log(
                logging.DEBUG if self._forbidden_logged else logging.ERROR,
                "not allowed to write ResourceClaim status (%s): grant patch on "
                "resourceclaims/status and associated-node:patch on resourceclaims/driver "
                "(the chart's rbac.claimDeviceStatus), or run with --no-claim-device-status",
                e,
            )
            self._forbidden_logged = True
        else:
            self._retry(claim, str(e))

    def _retry(self, claim: _Claim, why: str) -> None:
        self.stats.errors += 1
        claim.failures += 1
        cfg = self._config
        step = min(cfg.backoff_max, cfg.backoff_initial * 2 ** (claim.failures - 1))
        delay = random.uniform(step / 2, step)
        claim.retry_at = asyncio.get_running_loop().time() + delay
        log.log(
            logging.WARNING if claim.failures == 1 else logging.DEBUG,
            "writing status.devices of claim %s/%s failed (attempt %d): %s; retrying in %.1fs",
            *_names(claim.ref),
            claim.failures,
            why,
            delay,
        )

    def _forget(self, claim: _Claim, why: str) -> None:
        self.stats.gone += 1
        log.info("claim %s/%s %s; its device status is no longer kept", *_names(claim.ref), why)
        if self._claims.get(claim.ref.uid) is claim:
            del self._claims[claim.ref.uid]

    def _disable(self) -> None:
        if self.enabled:
            log.warning(
                "the API server dropped ResourceClaim status.devices (feature gate "
                "DRAResourceClaimDeviceStatus off?); claim device conditions are not written"
            )
        self.enabled = False

    def _safe_inventory(self) -> Inventory | None:
        try:
            return self._inventory()
        except Exception as e:  # someone else's state; never fail a status write on it
            log.warning("inventory unavailable for claim status: %s", e)
            return None

    @staticmethod
    def _uuid(inventory: Inventory | None, name: str) -> str:
        device = inventory.device(name) if inventory is not None else None
        return device.uuid if device is not None else ""


def _keys(devices: Iterable[_Device]) -> set[EntryKey]:
    return {d.key for d in devices}


def _names(ref: ClaimRef) -> tuple[str, str]:
    return ref.namespace, ref.name


def _fingerprint(entries: Entries) -> str:
    """Entries without their times: a refused body is refused again whatever the time."""
    plain = {
        "|".join(map(str, k)): {
            **v,
            "conditions": [
                {ck: cv for ck, cv in c.items() if ck != "lastTransitionTime"}
                for c in v.get("conditions") or ()
            ],
        }
        for k, v in entries.items()
    }
    return json.dumps(plain, sort_keys=True)
