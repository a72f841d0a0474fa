"""Publishes this node's ResourceSlices and keeps them converged with the API server.

One asyncio task reconciles the desired pool (inventory + health taints)
against a watch-fed cache of the slices stored for this driver on this node;
a second task keeps that cache fresh. Every API call blocks in a worker
thread, so the gRPC servers on the same loop never wait on the API server.

Guarantees the rest of the driver relies on:
* no writes when nothing changed, including right after a restart (specs are
  compared by meaning, server-populated fields ignored);
* slices deleted behind our back (the kubelet wipes a node's slices when it
  starts) are recreated within a debounce window of the watch event;
* bursts of set_desired() (a health flap) cost at most one write pass per window;
* the API server being down, overloaded or conflicting never blocks or spins:
  capped exponential backoff with jitter, 409 -> re-read and retry;
* a field the server drops (its feature gate off) is remembered as converged
  instead of being rewritten forever; a slice it rejects as invalid is not
  retried until the desired state changes.
Slices are left in place on shutdown: the next start adopts them without writes.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from ..health.board import DeviceHealth
from ..inventory import Inventory
from . import validation
from .api import ApiError, ApiUnreachable, SliceApi, WatchStream, slice_field_selector
from .builder import DesiredPool, build_pool
from .cache import SliceCache, name_of, rv_of, uid_of
from .options import PublisherConfig
from .plan import Plan, fingerprint, normalize_spec, plan_pool
from .taints import apply_taint_policy, effect_none_supported, health_taints

log = logging.getLogger(__name__)

MAX_PASSES = 5  # re-plans after conflicts before backing off


@dataclass
class PublisherStats:
    """Counters for tests and metrics."""

    reconciles: int = 0  # reconcile passes that computed a plan
    writes: int = 0  # successful creates + updates + deletes
    creates: int = 0
    updates: int = 0
    deletes: int = 0
    conflicts: int = 0  # 409s and vanished objects that forced a re-read
    rejected: int = 0  # 422s (each one is a validation bug)
    errors: int = 0  # failed API calls that were retried with backoff
    relists: int = 0
    resyncs: int = 0  # periodic relist-and-compare passes
    watch_restarts: int = 0


class Backoff:
    """Capped exponential backoff with full jitter (half to full of the current step)."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = maximum
        self._attempt = 0

    def next(self) -> float:
        step = min(self.maximum, self.initial * (2**self._attempt))
        self._attempt = min(self._attempt + 1, 32)
        return random.uniform(step / 2, step)

    def reset(self) -> None:
        self._attempt = 0


class _Transient(Exception):
    """The API server could not be reached or asked us to slow down; retry later."""

    def __init__(
        self, message: str, retry_after: float | None = None, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status


def _dropped_fields(sent: Any, stored: Any, path: str = "") -> set[str]:
    """Paths present in what we sent but not in what the server stored."""
    out: set[str] = set()
    if isinstance(sent, dict) and isinstance(stored, dict):
        for k, v in sent.items():
            sub = f"{path}.{k}" if path else k
            if k not in stored:
                out.add(sub)
            else:
                out |= _dropped_fields(v, stored[k], sub)
    elif isinstance(sent, list) and isinstance(stored, list):
        for a, b in zip(sent, stored, strict=False):
            out |= _dropped_fields(a, b, f"{path}[]")
    return out


class SlicePublisher:
    """Reconciles this node's desired slices against the API server.

    Interface used by `dra-driver run`: construct, call set_desired() whenever
    the inventory or device health changes, and run() as a task. The keyword
    arguments exist for tests and tuning; the defaults suit production.
    """

    def __init__(self, config: PublisherConfig, api: client.ApiClient) -> None:
        problem = validation.driver_name_problem(config.driver_name) or (
            validation.pool_name_problem(config.node_name)
        )
        if problem:
            raise ValueError(f"cannot publish ResourceSlices: {problem}")
        self._config = config
        self._driver = config.driver_name
        self._node = config.node_name
        self._selector = slice_field_selector(self._driver, self._node)
        self._slices = SliceApi(api, timeout=config.request_timeout)
        self._debounce = config.debounce
        self._backoff = Backoff(config.backoff_initial, config.backoff_max)
        self._watch_backoff = Backoff(config.backoff_initial, config.backoff_max)
        self._watch_timeout = config.watch_timeout
        self.stats = PublisherStats()
        self._desired: tuple[Inventory, tuple[DeviceHealth, ...]] | None = None
        self._wake = asyncio.Event()
        self._synced = asyncio.Event()
        self._converged = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._retry_at = 0.0
        self._failures = 0
        self._watch_failures = 0
        self._cache = SliceCache()
        self._need_relist = False
        self._reported_drops: set[frozenset[str]] = set()
        self._reported_problems: set[str] = set()
        self._rejected: str | None = None  # fingerprint of a desired pool the server refused
        self._fingerprints: dict[tuple[str, str], str] = {}  # plan_pool's cache
        self._generation = 0
        self._node_uid: str | None = None
        self._node_checked = False
        self._watch_executor = ThreadPoolExecutor(1, thread_name_prefix="slice-watch")
        # Asked once (the first answer counts): which taint effects the server knows.
        self.server_version: tuple[int, int] | None = None
        self._version_asked = False

    # -- interface -----------------------------------------------------------------------

    def set_desired(self, inventory: Inventory, health: Sequence[DeviceHealth] = ()) -> None:
        """Record what this node should publish and wake the reconciler.

        Cheap and non-blocking; safe from the event loop thread (and from
        other threads once run() has started). Bursts are coalesced.
        """
        self._desired = (inventory, tuple(health))
        self._poke()

    async def run(self) -> None:
        """Publish and keep publishing until cancelled. Slices stay when it stops."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        watcher = asyncio.create_task(self._watch_loop(), name="slice-watch")
        resync = asyncio.create_task(self._resync_loop(), name="slice-resync")
        try:
            await self._reconcile_loop()
        finally:
            watcher.cancel()
            resync.cancel()
            await asyncio.gather(watcher, resync, return_exceptions=True)
            self._watch_executor.shutdown(wait=False, cancel_futures=True)

    @property
    def converged(self) -> bool:
        """True when the last pass found the stored slices equal to the desired ones."""
        return self._converged.is_set()

    async def wait_converged(self, timeout: float | None = None) -> bool:
        """Wait until converged (tests and readiness); False on timeout."""
        try:
            await asyncio.wait_for(self._converged.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def desired_pool(self) -> DesiredPool | None:
        """The pool the current desired state maps to (for `dra-driver` diagnostics)."""
        if self._desired is None:
            return None
        inventory, health = self._desired
        taints = apply_taint_policy(
            health_taints(health, self._driver),
            health,
            self._driver,
            self._config.taint_policy,
            self.server_version,
        )
        return build_pool(
            inventory,
            taints,
            partitionable=self._config.partitionable_devices,
            dynamic_mig=self._config.dynamic_mig,
        )

    # -- reconcile -----------------------------------------------------------------------

    def _poke(self) -> None:
        loop = self._loop
        if loop is not None and threading.get_ident() != self._loop_thread:
            loop.call_soon_threadsafe(self._poke)
            return
        self._converged.clear()
        self._wake.set()

    async def _reconcile_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            await asyncio.sleep(max(self._debounce, self._retry_at - loop.time()))
            self._wake.clear()
            await self._synced.wait()
            try:
                await self._reconcile()
            except Exception as e:
                if not isinstance(e, _Transient):
                    # A bug must not silently end publishing for the life of the process.
                    log.exception("BUG: reconciling ResourceSlices failed unexpectedly")
                retry_after = e.retry_after if isinstance(e, _Transient) else None
                delay = retry_after if retry_after is not None else self._backoff.next()
                delay = min(delay, self._backoff.maximum)
                self._failures += 1
                log.log(
                    logging.WARNING if self._failures == 1 else logging.DEBUG,
                    "publishing ResourceSlices failed (attempt %d): %s; retrying in %.1fs "
                    "with capped backoff (further failures are logged at debug level)",
                    self._failures,
                    e,
                    delay,
                )
                self._retry_at = loop.time() + delay
                self._wake.set()
            else:
                if self._failures:
                    log.info("ResourceSlices published after %d failed attempts", self._failures)
                self._failures = 0
                self._backoff.reset()
                self._retry_at = 0.0

    async def _ask_version(self) -> None:
        """Once, before the first write: /version decides whether effect None is valid.

        Unreachable: asked again next pass. An error answer, or a version
        before 1.35: today's taints, without the informational ones.
        """
        if self._version_asked:
            return
        try:
            self.server_version = await asyncio.to_thread(self._slices.server_version)
        except ApiUnreachable:
            return
        except ApiError as e:
            log.warning("GET /version failed (%s); Degraded devices get no taint", e)
        self._version_asked = True
        log.info(
            "API server version %s: %s",
            ".".join(map(str, self.server_version)) if self.server_version else "unknown",
            "Degraded devices carry an effect-None taint"
            if effect_none_supported(self.server_version)
            else "no effect-None taints (needs 1.35+)",
        )

    async def _reconcile(self) -> None:
        await self._ask_version()
        # Building and diffing a big node takes milliseconds of CPU: keep it off the loop.
        pool = await asyncio.to_thread(self.desired_pool)
        if pool is None:
            return  # nothing known yet: never delete what is there before we know better
        for problem in pool.problems:
            if problem not in self._reported_problems:
                self._reported_problems.add(problem)
                log.error("%s", problem)
        if self._rejected is not None:
            if json.dumps(pool.slices, sort_keys=True) == self._rejected:
                return
            self._rejected = None
        await self._ensure_node()
        for _ in range(MAX_PASSES):
            if self._need_relist:
                await self._relist()
            self.stats.reconciles += 1
            actual = self._cache.objects()
            plan = await asyncio.to_thread(
                functools.partial(
                    plan_pool,
                    pool.slices,
                    actual,
                    driver=self._driver,
                    node_name=self._node,
                    node_uid=self._node_uid,
                    converged=dict(self._cache.accepted),
                    min_generation=self._generation,
                    fingerprints=self._fingerprints,
                )
            )
            for key in set(self._fingerprints) - self._cache.live_keys():
                del self._fingerprints[key]
            if plan.writes == 0:
                self._generation = max(self._generation, plan.generation)
                if not self._wake.is_set():
                    self._converged.set()
                return
            log.info(
                "ResourceSlices of pool %s: %d to delete, %d to update, %d to create "
                "(generation %d): %s",
                self._node,
                len(plan.deletes),
                len(plan.updates),
                len(plan.creates),
                plan.generation,
                "; ".join(plan.reasons),
            )
            outcome = await self._apply(plan)
            if outcome == "rejected":
                self._rejected = json.dumps(pool.slices, sort_keys=True)
                return
            if outcome == "conflict":
                self._need_relist = True
        raise _Transient(f"not converged after {MAX_PASSES} passes of conflicts")

    async def _call(self, fn: Any, *args: Any) -> Any:
        """One blocking API call in a worker thread; transport errors become _Transient.

        404, 409, 410 and 422 stay ApiError: the caller decides what they mean.
        """
        try:
            return await asyncio.to_thread(fn, *args)
        except ApiError as e:
            if e.status in (404, 409, 410, 422):
                raise
            self.stats.errors += 1
            if e.status in (401, 403):
                log.error(
                    "the API server refused %s (%s): check the RBAC rules for resourceslices",
                    getattr(fn, "__name__", "a call"),
                    e.message,
                )
            raise _Transient(str(e), e.retry_after, e.status) from e
        except ApiUnreachable as e:
            self.stats.errors += 1
            raise _Transient(str(e)) from e

    async def _apply(self, plan: Plan) -> str:
        """Run a plan's writes in order: "done", "conflict" (re-read) or "rejected"."""
        for obj in plan.deletes:
            try:
                await self._call(self._slices.delete_slice, name_of(obj), uid_of(obj), rv_of(obj))
            except ApiError as e:
                if e.status != 409:
                    raise _Transient(str(e)) from e
                self.stats.conflicts += 1
                return "conflict"
            self._cache.forget(obj)
            self.stats.deletes += 1
            self.stats.writes += 1
        rejected = False
        for update in plan.updates:
            try:
                stored = await self._call(self._slices.replace_slice, update.body)
            except ApiError as e:
                if e.status == 422:
                    self._report_rejected(name_of(update.body), e)
                    rejected = True
                    continue
                self.stats.conflicts += 1
                return "conflict"  # 409: changed meanwhile; 404: deleted meanwhile
            self._record(update.body, stored)
            self.stats.updates += 1
            self.stats.writes += 1
        for obj in plan.creates:
            try:
                stored = await self._call(self._slices.create_slice, obj)
            except ApiError as e:
                if e.status == 422:
                    self._report_rejected(obj["metadata"].get("generateName", ""), e)
                    rejected = True
                    continue
                self.stats.conflicts += 1
                return "conflict"
            self._record(obj, stored)
            self.stats.creates += 1
            self.stats.writes += 1
        self._generation = max(self._generation, plan.generation)
        return "rejected" if rejected else "done"

    def _report_rejected(self, name: str, e: ApiError) -> None:
        self.stats.rejected += 1
        log.error(
            "BUG: the API server rejected ResourceSlice %s as invalid: %s. "
            "dra_driver/slices/validation.py should have caught this; this state will not "
            "be retried until the inventory or device health changes. Please report it.",
            name,
            e.message,
        )

    def _record(self, sent: dict[str, Any], stored: dict[str, Any]) -> None:
        """Cache what the server stored; remember it if it is not what we sent."""
        self._cache.observe(stored)
        name = name_of(stored)
        sent_fp, stored_fp = fingerprint(sent["spec"]), fingerprint(stored.get("spec") or {})
        if sent_fp == stored_fp:
            self._cache.accepted.pop(name, None)
            return
        self._cache.accepted[name] = (sent_fp, stored_fp)
        dropped = frozenset(
            _dropped_fields(
                normalize_spec(sent["spec"]), normalize_spec(stored.get("spec") or {}), "spec"
            )
        )
        if dropped not in self._reported_drops:
            self._reported_drops.add(dropped)
            log.warning(
                "the API server stored ResourceSlice %s without %s: is the matching feature "
                "gate (DRADeviceTaints, DRAPartitionableDevices) off? Keeping what it stored "
                "instead of rewriting it; this is logged once.",
                name,
                ", ".join(sorted(dropped)) or "some of the fields sent",
            )

    async def _ensure_node(self) -> None:
        """Fetch the Node's UID once, for the slices' ownerReference."""
        if self._node_checked:
            return
        try:
            node = await self._call(self._slices.get_node, self._node)
        except _Transient as e:
            if e.status != 403:
                raise
            node = None
            log.error("cannot read Node %s (RBAC: nodes get); no ownerReference", self._node)
        self._node_checked = True
        if node is None:
            log.warning(
                "Node %s does not exist; publishing ResourceSlices without an ownerReference, "
                "so they will not be garbage-collected with the Node",
                self._node,
            )
            return
        self._node_uid = uid_of(node) or None

    # -- the cache of stored slices ------------------------------------------------------

    async def _relist(self) -> None:
        items, rv = await self._call(self._slices.list_slices, self._selector)
        self.stats.relists += 1
        self._cache.replace(items, rv)
        self._need_relist = False

    async def _resync_loop(self) -> None:
        """Every resync_interval (jittered), relist and compare: repairs lost state."""
        interval = self._config.resync_interval
        if interval <= 0:
            return
        while True:
            await asyncio.sleep(random.uniform(0.8, 1.2) * interval)
            self.stats.resyncs += 1
            self._need_relist = True
            self._poke()

    async def _watch_loop(self) -> None:
        """List, then watch from the list's resourceVersion.

        A plain disconnect (connection refused or reset, a timeout) resumes the
        watch where it was; anything else (410 Gone, another HTTP error, an
        ERROR event, a bug) lists again first, since the server may no longer
        have what the cache holds.
        """
        loop = asyncio.get_running_loop()
        rv = ""
        while True:
            try:
                if not rv:
                    items, rv = await self._call(self._slices.list_slices, self._selector)
                    self.stats.relists += 1
                    self._cache.replace(items, rv)
                    self._need_relist = False
                    self._synced.set()
                    self._poke()
                stream: WatchStream = await loop.run_in_executor(
                    self._watch_executor,
                    self._slices.watch_slices,
                    self._selector,
                    rv,
                    self._watch_timeout,
                )
                if self._watch_failures:
                    log.info("watching ResourceSlices again")
                self._watch_failures = 0
                self._watch_backoff.reset()
                try:
                    rv = await self._consume(stream, rv)
                finally:
                    stream.close()
            except ApiError as e:
                rv = ""
                if e.status == 410:
                    continue
                await self._watch_failed(str(e))
            except (_Transient, ApiUnreachable) as e:
                await self._watch_failed(str(e))
            except Exception as e:
                rv = ""
                log.exception("BUG: watching ResourceSlices failed unexpectedly")
                await self._watch_failed(f"unexpected {type(e).__name__}: {e}")

    async def _consume(self, stream: WatchStream, rv: str) -> str:
        """Feed watch events into the cache until the server ends the watch."""
        loop = asyncio.get_running_loop()
        while True:
            event = await loop.run_in_executor(self._watch_executor, stream.next_event)
            if event is None:
                return rv
            kind = event.get("type")
            obj = event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") != 410:
                    log.warning(
                        "the ResourceSlice watch ended with an error (%s %s); listing again",
                        obj.get("code"),
                        obj.get("message"),
                    )
                return ""  # list again: the server may have lost what the cache holds
            rv = rv_of(obj) or rv
            if kind == "BOOKMARK":
                continue
            if self._cache.observe(obj, deleted=kind == "DELETED"):
                log.debug("ResourceSlice %s %s by someone else", name_of(obj), str(kind).lower())
                self._poke()

    async def _watch_failed(self, reason: str) -> None:
        self.stats.watch_restarts += 1
        self._watch_failures += 1
        delay = self._watch_backoff.next()
        log.log(
            logging.WARNING if self._watch_failures == 1 else logging.DEBUG,
            "watching ResourceSlices failed (attempt %d): %s; retrying in %.1fs",
            self._watch_failures,
            reason,
            delay,
        )
        await asyncio.sleep(delay)
