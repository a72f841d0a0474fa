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
import collections
import functools
import json
import logging
import random
import re
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ..health.board import DeviceHealth, Health
from ..inventory import Inventory
from ..settings import Settings
from . import validation
from .api import SliceApi, WatchStream, slice_field_selector
from .builder import DesiredPool, build_pool
from .plan import Plan, fingerprint, normalize_spec, plan_pool

log = logging.getLogger(__name__)

UNHEALTHY_TAINT = "unhealthy"  # key is "<driver>/unhealthy"
XID_TAINT = "xid"  # NVIDIA's key for XID errors: "<driver>/xid=<n>"
GPU_LOST_TAINT = "gpu-lost"  # NVIDIA's key for a GPU off the bus
UNKNOWN_TAINT = "unknown"  # "<driver>/unknown=<reason>": no check vouches for the device
RECOVERY_TAINT = "recovery"  # "<driver>/recovery=<what it needs>", beside the health taint
MAX_PASSES = 5  # re-plans after conflicts before backing off


def taint_value(reason: str) -> str:
    """A health reason as a label value ("XID 79" -> "XID-79"), at most 63 characters."""
    text = re.sub(r"[^A-Za-z0-9_.-]+", "-", reason.strip())[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", text) or "unknown"


def health_taint(reason: str, driver: str) -> dict[str, str]:
    """The NoSchedule taint for one Unhealthy verdict, keyed as NVIDIA's driver keys it.

    XIDs are `<driver>/xid=<n>` and a lost GPU `<driver>/gpu-lost`, exactly
    NVIDIA's keys, so tolerations written for that driver keep working; every
    other reason is `<driver>/unhealthy=<reason>`.
    """
    if reason.startswith("xid-") and reason[4:].isdigit():
        return {"key": f"{driver}/{XID_TAINT}", "value": reason[4:], "effect": "NoSchedule"}
    if reason == "gpu-lost":
        return {"key": f"{driver}/{GPU_LOST_TAINT}", "effect": "NoSchedule"}
    return {
        "key": f"{driver}/{UNHEALTHY_TAINT}",
        "value": taint_value(reason or "unknown"),
        "effect": "NoSchedule",
    }


def recovery_taint(recovery: str, driver: str) -> dict[str, str]:
    """What an Unhealthy device needs (gpu-reset, node-reboot, drain-p2p, drain-and-reset, ...).

    A key of its own keeps NVIDIA's xid / gpu-lost keys and values as they are
    (tolerations written for them keep working) while letting a toleration or
    a DeviceTaintRule select on the action a fault needs.
    """
    return {
        "key": f"{driver}/{RECOVERY_TAINT}",
        "value": taint_value(recovery),
        "effect": "NoSchedule",
    }


def health_taints(health: Sequence[DeviceHealth], driver: str) -> dict[str, list[dict[str, str]]]:
    """Which health verdicts taint which device, and how.

    Unhealthy -> one NoSchedule taint for its reason (see health_taint), plus
    one saying what it needs when that is more than nothing (recovery_taint):
    new claims avoid the device, running pods are left alone (eviction is the
    admin's decision, via a DeviceTaintRule). Unknown -> `<driver>/unknown`
    NoSchedule: nothing vouches for the device (NVML hung, checks stalled), so
    new claims avoid it until a check answers. Degraded devices stay
    schedulable and get no taint: the informational effect None is valid only
    from Kubernetes 1.35, and the health stream's message already says what is
    degraded.
    """
    out: dict[str, list[dict[str, str]]] = {}
    for h in health:
        if h.health is Health.UNHEALTHY:
            taints = [health_taint(h.reason, driver)]
            if h.recovery and h.recovery != "none":
                taints.append(recovery_taint(h.recovery, driver))
            out[h.device] = taints
        elif h.health is Health.UNKNOWN:
            out[h.device] = [
                {
                    "key": f"{driver}/{UNKNOWN_TAINT}",
                    "value": taint_value(h.reason or "not-checked"),
                    "effect": "NoSchedule",
                }
            ]
    return out


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


def _name(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def _uid(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("uid", ""))


def _rv(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion", ""))


def _rv_int(rv: str) -> int | None:
    """resourceVersions are opaque; etcd's are integers and then comparable."""
    try:
        return int(rv)
    except ValueError:
        return None


def _api_message(e: ApiException) -> str:
    try:
        return str(json.loads(e.body or "{}").get("message") or e.reason)
    except (ValueError, AttributeError):
        return str(e.reason)


def _retry_after(e: ApiException) -> float | None:
    value = (e.headers or {}).get("Retry-After") if e.headers else None
    try:
        return float(value) if value else None
    except ValueError:
        return None


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

    def __init__(
        self,
        settings: Settings,
        api: client.ApiClient,
        *,
        debounce: float = 0.2,
        backoff_initial: float = 0.5,
        backoff_max: float = 10.0,
        request_timeout: float = 10.0,
        watch_timeout: int = 300,
    ) -> None:
        problem = validation.driver_name_problem(settings.driver_name) or (
            validation.pool_name_problem(settings.node_name)
        )
        if problem:
            raise ValueError(f"cannot publish ResourceSlices: {problem}")
        self._settings = settings
        self._driver = settings.driver_name
        self._node = settings.node_name
        self._selector = slice_field_selector(self._driver, self._node)
        self._slices = SliceApi(api, timeout=request_timeout)
        self._debounce = debounce
        self._backoff = Backoff(backoff_initial, backoff_max)
        self._watch_backoff = Backoff(backoff_initial, backoff_max)
        self._watch_timeout = watch_timeout
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
        # The watch-fed cache of stored slices, by name.
        self._actual: dict[str, dict[str, Any]] = {}
        self._floor_rv: int | None = None  # events at or below the last full list are stale
        self._tombstones: collections.deque[str] = collections.deque(maxlen=1024)
        self._need_relist = False
        # name -> (fingerprint sent, fingerprint stored) where the server altered what we sent.
        self._accepted: dict[str, tuple[str, str]] = {}
        self._reported_drops: set[frozenset[str]] = set()
        self._reported_problems: set[str] = set()
        self._rejected: str | None = None  # fingerprint of a desired pool the server refused
        self._fingerprints: dict[tuple[str, str], str] = {}  # plan_pool's cache
        self._generation = 0
        self._node_uid: str | None = None
        self._node_checked = False
        self._watch_executor = ThreadPoolExecutor(1, thread_name_prefix="slice-watch")

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
        try:
            await self._reconcile_loop()
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
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
        return build_pool(
            inventory,
            health_taints(health, self._driver),
            partitionable=self._settings.partitionable_devices,
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

    async def _reconcile(self) -> None:
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
            actual = list(self._actual.values())
            plan = await asyncio.to_thread(
                functools.partial(
                    plan_pool,
                    pool.slices,
                    actual,
                    driver=self._driver,
                    node_name=self._node,
                    node_uid=self._node_uid,
                    converged=dict(self._accepted),
                    min_generation=self._generation,
                    fingerprints=self._fingerprints,
                )
            )
            live = {(_uid(o), _rv(o)) for o in self._actual.values()}
            for key in set(self._fingerprints) - live:
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
        """One blocking API call in a worker thread; transport errors become _Transient."""
        try:
            return await asyncio.to_thread(fn, *args)
        except ApiException as e:
            if e.status in (404, 409, 410, 422):
                raise
            self.stats.errors += 1
            if e.status in (401, 403):
                log.error(
                    "the API server refused %s (%s): check the RBAC rules for resourceslices",
                    getattr(fn, "__name__", "a call"),
                    _api_message(e),
                )
            raise _Transient(
                f"HTTP {e.status}: {_api_message(e)}", _retry_after(e), e.status
            ) from e
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as e:
            self.stats.errors += 1
            raise _Transient(f"{type(e).__name__}: {e}") from e

    async def _apply(self, plan: Plan) -> str:
        """Run a plan's writes in order: "done", "conflict" (re-read) or "rejected"."""
        for obj in plan.deletes:
            try:
                await self._call(self._slices.delete_slice, _name(obj), _uid(obj), _rv(obj))
            except ApiException as e:
                if e.status != 409:
                    raise _Transient(f"HTTP {e.status}: {_api_message(e)}") from e
                self.stats.conflicts += 1
                return "conflict"
            self._forget(obj)
            self.stats.deletes += 1
            self.stats.writes += 1
        rejected = False
        for update in plan.updates:
            try:
                stored = await self._call(self._slices.replace_slice, update.body)
            except ApiException as e:
                if e.status == 422:
                    self._report_rejected(_name(update.body), e)
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
            except ApiException as e:
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

    def _report_rejected(self, name: str, e: ApiException) -> None:
        self.stats.rejected += 1
        log.error(
            "BUG: the API server rejected ResourceSlice %s as invalid: %s. "
            "dra_driver/slices/validation.py should have caught this; this state will not "
            "be retried until the inventory or device health changes. Please report it.",
            name,
            _api_message(e),
        )

    def _record(self, sent: dict[str, Any], stored: dict[str, Any]) -> None:
        """Cache what the server stored; remember it if it is not what we sent."""
        self._observe(stored)
        name = _name(stored)
        sent_fp, stored_fp = fingerprint(sent["spec"]), fingerprint(stored.get("spec") or {})
        if sent_fp == stored_fp:
            self._accepted.pop(name, None)
            return
        self._accepted[name] = (sent_fp, stored_fp)
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
        self._node_uid = _uid(node) or None

    # -- the cache of stored slices ------------------------------------------------------

    async def _relist(self) -> None:
        items, rv = await self._call(self._slices.list_slices, self._selector)
        self.stats.relists += 1
        self._replace_actual(items, rv)
        self._need_relist = False

    def _replace_actual(self, items: list[dict[str, Any]], rv: str) -> None:
        self._actual = {_name(o): o for o in items}
        self._floor_rv = _rv_int(rv)
        for name in set(self._accepted) - set(self._actual):
            del self._accepted[name]

    def _forget(self, obj: Mapping[str, Any]) -> None:
        self._tombstones.append(_uid(obj))
        cur = self._actual.get(_name(obj))
        if cur is not None and _uid(cur) == _uid(obj):
            del self._actual[_name(obj)]
        self._accepted.pop(_name(obj), None)

    def _observe(self, obj: dict[str, Any], deleted: bool = False) -> bool:
        """Apply one stored state to the cache; True if it changed what we knew."""
        name, uid, rv = _name(obj), _uid(obj), _rv_int(_rv(obj))
        if rv is not None and self._floor_rv is not None and rv <= self._floor_rv:
            return False  # older than a full list we already have
        if uid in self._tombstones:
            return False
        cur = self._actual.get(name)
        if deleted:
            self._tombstones.append(uid)
            if cur is not None and _uid(cur) == uid:
                del self._actual[name]
                self._accepted.pop(name, None)
                return True
            return False
        if cur is not None and _uid(cur) == uid:
            cur_rv = _rv_int(_rv(cur))
            if rv is not None and cur_rv is not None and rv <= cur_rv:
                return False
            if rv is None and _rv(cur) == _rv(obj):
                return False
        self._actual[name] = obj
        return True

    async def _watch_loop(self) -> None:
        """List, then watch from the list's resourceVersion; re-list on 410 Gone."""
        loop = asyncio.get_running_loop()
        rv = ""
        while True:
            try:
                if not rv:
                    items, rv = await self._call(self._slices.list_slices, self._selector)
                    self.stats.relists += 1
                    self._replace_actual(items, rv)
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
            except ApiException as e:
                if e.status == 410:
                    rv = ""
                    continue
                await self._watch_failed(f"HTTP {e.status}: {_api_message(e)}")
            except _Transient as e:
                await self._watch_failed(str(e))
            except (urllib3.exceptions.HTTPError, OSError, ValueError) as e:
                await self._watch_failed(f"{type(e).__name__}: {e}")
            except Exception as e:
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
                if obj.get("code") == 410:
                    return ""
                raise _Transient(f"watch error: {obj.get('message')}")
            rv = _rv(obj) or rv
            if kind == "BOOKMARK":
                continue
            if self._observe(obj, deleted=kind == "DELETED"):
                log.debug("ResourceSlice %s %s by someone else", _name(obj), str(kind).lower())
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
