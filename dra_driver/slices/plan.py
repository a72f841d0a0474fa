"""Desired pool + the slices the API server has -> the writes that converge them. Pure.

Follows the Go helper's resourceslice controller (protocol reference §7) so
the scheduler's view of the pool stays consistent, with one refinement: a
pool's generation is bumped only when more than one existing slice must
change. The scheduler uses the slices of the highest generation once
resourceSliceCount of them exist, so a single slice changing, or missing
slices being recreated next to unchanged ones, can never show it a mixed
state; that makes "the kubelet deleted one slice" a single create rather than
a rewrite of the whole pool.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .builder import render_slice, slice_spec
from .quantity import quantity_key

# Fields of a device whose value is a flag: false and absent mean the same.
_FLAG_FIELDS = frozenset(
    {"allNodes", "perDeviceNodeSelection", "bindsToNode", "allowMultipleAllocations"}
)


def _clean(value: Any) -> Any:
    """Drop what the API server omits on output: nulls, empty lists and maps, false flags."""
    # Concrete types, not the ABCs: this runs over every field of every slice.
    if type(value) is dict:
        out = {}
        for k, v in value.items():
            c = _clean(v)
            if c is None or c == [] or c == {} or (k in _FLAG_FIELDS and c is False):
                continue
            out[k] = c
        return out
    if type(value) is list or type(value) is tuple:
        return [_clean(v) for v in value]
    return value


def _quantities(counters: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for name, c in counters.items():
        entry = dict(c) if isinstance(c, Mapping) else {"value": c}
        entry["value"] = quantity_key(entry.get("value", "0"))
        out[name] = entry
    return out


def _normalize_device(device: Mapping[str, Any]) -> dict[str, Any]:
    dev = dict(device)
    if "attributes" in dev:
        dev["attributes"] = {
            k: {t: v for t, v in a.items() if v is not None}
            for k, a in (dev["attributes"] or {}).items()
        }
    if "capacity" in dev:
        dev["capacity"] = _quantities(dev["capacity"] or {})
    if "consumesCounters" in dev:
        dev["consumesCounters"] = [
            {**c, "counters": _quantities(c.get("counters") or {})}
            for c in dev["consumesCounters"] or ()
        ]
    if "taints" in dev:
        dev["taints"] = [
            {"key": t.get("key"), "value": t.get("value") or "", "effect": t.get("effect")}
            for t in dev["taints"] or ()
        ]
    return dev


def normalize_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A canonical form for comparing slice specs by meaning.

    Quantities by value ("1k" == "1000"), taints without timeAdded (the
    server stamps it), absent == empty == null, attribute maps unordered.
    Device and counter-set order is kept: the scheduler's first fit depends on it.
    """
    out = dict(spec)
    if "devices" in out:
        out["devices"] = [_normalize_device(d) for d in out["devices"] or ()]
    if "sharedCounters" in out:
        out["sharedCounters"] = [
            {**cs, "counters": _quantities(cs.get("counters") or {})}
            for cs in out["sharedCounters"] or ()
        ]
    cleaned: dict[str, Any] = _clean(out)
    return cleaned


def fingerprint(spec: Mapping[str, Any]) -> str:
    """A stable text key of a spec's meaning."""
    return json.dumps(normalize_spec(spec), sort_keys=True, separators=(",", ":"))


def slice_index(name: str) -> int | None:
    """The index in a "<hex index>-..." slice name, as the helper writes them."""
    prefix, sep, _ = name.partition("-")
    if not sep or len(prefix) < 5:
        return None
    try:
        return int(prefix, 16)
    except ValueError:
        return None


def copy_taint_times(spec: dict[str, Any], stored: Mapping[str, Any] | None) -> dict[str, Any]:
    """Re-send the stored timeAdded of unchanged taints (it drives tolerationSeconds)."""
    if not stored:
        return spec
    times: dict[tuple[str, str, str, str], str] = {}
    for dev in stored.get("devices") or ():
        for t in dev.get("taints") or ():
            if t.get("timeAdded"):
                ident = (dev["name"], t.get("key"), t.get("value") or "", t.get("effect"))
                times[ident] = t["timeAdded"]
    if not times:
        return spec
    for dev in spec.get("devices") or ():
        for t in dev.get("taints") or ():
            ident = (dev["name"], t.get("key"), t.get("value") or "", t.get("effect"))
            if ident in times and not t.get("timeAdded"):
                t["timeAdded"] = times[ident]
    return spec


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta: Mapping[str, Any] = obj.get("metadata") or {}
    return meta


def _generation(obj: Mapping[str, Any]) -> int:
    try:
        return int(((obj.get("spec") or {}).get("pool") or {}).get("generation") or 0)
    except (TypeError, ValueError):
        return 0


@dataclass
class Update:
    current: dict[str, Any]  # the stored object being replaced
    body: dict[str, Any]  # the object to PUT (carries current's resourceVersion)


@dataclass
class Plan:
    """Writes in the order they must happen: deletes, then updates, then creates."""

    generation: int
    count: int
    deletes: list[dict[str, Any]] = field(default_factory=list)
    updates: list[Update] = field(default_factory=list)
    creates: list[dict[str, Any]] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)  # names of slices already right
    reasons: list[str] = field(default_factory=list)  # why each write happens, for the log

    @property
    def writes(self) -> int:
        return len(self.deletes) + len(self.updates) + len(self.creates)


def _in_pool(obj: Mapping[str, Any], driver: str, node_name: str) -> bool:
    spec = obj.get("spec") or {}
    return bool(
        spec.get("driver") == driver
        and spec.get("nodeName") == node_name
        and (spec.get("pool") or {}).get("name") == node_name
    )


class _Comparer:
    """Is a stored slice already the desired slice of its index? Fingerprints memoized."""

    def __init__(
        self,
        fragments: Sequence[Mapping[str, Any]],
        *,
        driver: str,
        node_name: str,
        generation: int,
        converged: Mapping[str, tuple[str, str]],
        fingerprints: dict[tuple[str, str], str] | None,
    ) -> None:
        self._fragments = fragments
        self._driver = driver
        self._node = node_name
        self._generation = generation
        self._converged = converged
        self._cache = fingerprints
        self._wanted: dict[int, str] = {}
        self._have: dict[int, str] = {}

    def _want(self, index: int) -> str:
        if index not in self._wanted:
            self._wanted[index] = fingerprint(
                slice_spec(
                    self._fragments[index],
                    driver=self._driver,
                    node_name=self._node,
                    generation=self._generation,
                    count=len(self._fragments),
                )
            )
        return self._wanted[index]

    def _stored(self, obj: Mapping[str, Any]) -> str:
        if id(obj) not in self._have:
            key = (str(_meta(obj).get("uid", "")), str(_meta(obj).get("resourceVersion", "")))
            cache = self._cache if all(key) else None
            cached = cache.get(key) if cache is not None else None
            if cached is None:
                cached = fingerprint(obj.get("spec") or {})
                if cache is not None:
                    cache[key] = cached
            self._have[id(obj)] = cached
        return self._have[id(obj)]

    def current(self, index: int, obj: Mapping[str, Any]) -> bool:
        want_fp, have_fp = self._want(index), self._stored(obj)
        name = str(_meta(obj).get("name", ""))
        return want_fp == have_fp or self._converged.get(name) == (want_fp, have_fp)


def _sort_stored(
    plan: Plan, actual: Iterable[Mapping[str, Any]], driver: str, node_name: str, count: int
) -> tuple[int, dict[int, list[dict[str, Any]]]]:
    """Phase 1: the pool's current generation, and its stored slices by index.

    Slices of another pool, an older generation or an index past the desired
    count go to plan.deletes.
    """
    ours: list[dict[str, Any]] = []
    for obj in sorted(actual, key=lambda o: str(_meta(o).get("name", ""))):
        if _in_pool(obj, driver, node_name):
            ours.append(dict(obj))
        else:
            plan.deletes.append(dict(obj))
            plan.reasons.append(f"delete {_meta(obj).get('name')}: not in pool {node_name}")
    generation = max([_generation(o) for o in ours], default=0)
    candidates: dict[int, list[dict[str, Any]]] = {}
    for obj in ours:
        name = str(_meta(obj).get("name", ""))
        index = slice_index(name)
        if _generation(obj) < generation:
            plan.deletes.append(obj)
            plan.reasons.append(f"delete {name}: generation {_generation(obj)} < {generation}")
        elif index is None or index >= count:
            plan.deletes.append(obj)
            plan.reasons.append(f"delete {name}: index {index} not in 0..{count - 1}")
        else:
            candidates.setdefault(index, []).append(obj)
    return generation, candidates


def _match(
    plan: Plan, candidates: Mapping[int, list[dict[str, Any]]], compare: _Comparer
) -> dict[int, dict[str, Any]]:
    """Phase 2: one stored slice per index (an up-to-date one if any); duplicates deleted."""
    matched: dict[int, dict[str, Any]] = {}
    for index, objs in sorted(candidates.items()):
        keep = next((o for o in objs if compare.current(index, o)), objs[0])
        matched[index] = keep
        for o in objs:
            if o is not keep:
                plan.deletes.append(o)
                plan.reasons.append(f"delete {_meta(o).get('name')}: duplicate index {index}")
    return matched


def _choose_generation(
    plan: Plan, matched: Mapping[int, Any], changed: list[int], generation: int, floor: int
) -> tuple[int, list[int]]:
    """Phase 3: bump the generation when the pool is new or several slices change together."""
    if not matched:
        return max(generation, floor) + 1, changed
    if len(changed) > 1:
        plan.reasons.append(f"generation {generation + 1}: {len(matched)} slices change together")
        return generation + 1, list(matched)
    return generation, changed


def _update_body(
    fragment: Mapping[str, Any],
    stored: Mapping[str, Any],
    *,
    driver: str,
    node_name: str,
    generation: int,
    count: int,
) -> dict[str, Any]:
    """The object to PUT over stored: the desired spec, stored's metadata and taint times."""
    spec = copy.deepcopy(
        slice_spec(fragment, driver=driver, node_name=node_name, generation=generation, count=count)
    )
    copy_taint_times(spec, stored.get("spec"))
    meta = {k: v for k, v in _meta(stored).items() if k != "managedFields"}
    return {
        "apiVersion": stored.get("apiVersion", "resource.k8s.io/v1"),
        "kind": stored.get("kind", "ResourceSlice"),
        "metadata": meta,
        "spec": spec,
    }


def plan_pool(
    fragments: Sequence[Mapping[str, Any]],
    actual: Iterable[Mapping[str, Any]],
    *,
    driver: str,
    node_name: str,
    node_uid: str | None = None,
    converged: Mapping[str, tuple[str, str]] | None = None,
    min_generation: int = 0,
    fingerprints: dict[tuple[str, str], str] | None = None,
) -> Plan:
    """The writes that turn the stored slices of this node into the desired ones.

    fragments: the desired slice specs without pool metadata (DesiredPool.slices).
    actual: every stored slice of this driver on this node (any pool).
    converged: slice name -> (fingerprint sent, fingerprint stored) for slices
        whose stored form legitimately differs from what was sent (a feature
        gate off dropped a field); such a pair counts as up to date.
    min_generation: the highest generation this process published, so a pool
        wiped from the API server comes back with a higher generation.
    fingerprints: a cache of stored slices' fingerprints by (uid, resourceVersion),
        kept by the caller across calls; a stored object never changes in place.
    """
    count = len(fragments)
    plan = Plan(generation=0, count=count)
    generation, candidates = _sort_stored(plan, actual, driver, node_name, count)
    compare = _Comparer(
        fragments,
        driver=driver,
        node_name=node_name,
        generation=generation,
        converged=converged or {},
        fingerprints=fingerprints,
    )
    matched = _match(plan, candidates, compare)
    changed = [i for i, o in matched.items() if not compare.current(i, o)]
    generation, changed = _choose_generation(plan, matched, changed, generation, min_generation)
    plan.generation = generation
    # Phase 4: the writes, slice by slice.
    for index in range(count):
        stored = matched.get(index)
        if stored is None:
            plan.creates.append(
                render_slice(
                    fragments[index],
                    index,
                    driver=driver,
                    node_name=node_name,
                    generation=generation,
                    count=count,
                    node_uid=node_uid,
                )
            )
            plan.reasons.append(f"create slice {index}")
        elif index in changed:
            body = _update_body(
                fragments[index],
                stored,
                driver=driver,
                node_name=node_name,
                generation=generation,
                count=count,
            )
            plan.updates.append(Update(current=stored, body=body))
            plan.reasons.append(f"update {body['metadata'].get('name')} (slice {index})")
        else:
            plan.unchanged.append(str(_meta(stored).get("name", "")))
    return plan
