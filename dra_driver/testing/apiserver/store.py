"""The object store behind the double: etcd-like revisions, watch history, write semantics.

One global ``resourceVersion`` counter orders every write, as etcd's revision does; a
bounded history of events serves watches that resume from a revision, and a revision
older than the history is answered 410 Expired. Writes follow the generic registry:
optimistic concurrency on ``metadata.resourceVersion``, no-op updates that neither bump
the revision nor emit an event, ``generation`` bumps on spec changes, status
subresource isolation, finalizers, defaulting, feature-gated field dropping and the
per-resource validation.
"""

from __future__ import annotations

import base64
import binascii
import copy
import datetime
import json
import queue
import random
import re
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import errors
from .errors import ApiError, Cause
from .patching import Owned, apply_merge, json_patch, merge_patch
from .validation import (
    default_resource_claim,
    validate_device_class,
    validate_node,
    validate_resource_claim,
    validate_resource_slice,
)

JsonObject = dict[str, Any]
Matcher = Callable[[JsonObject], bool]
FieldLabels = Mapping[str, Callable[[JsonObject], str]]

GENERATE_NAME_MAX_BASE = 58  # maxGeneratedNameLength = 63 - 5 random characters
GENERATE_NAME_RANDOM_LENGTH = 5
GENERATE_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # utilrand's alphanumerics
DEFAULT_HISTORY_LIMIT = 1000
INITIAL_EVENTS_END_ANNOTATION = "k8s.io/initial-events-end"
_STEP = re.compile(r"[^.\[\]{}]+|\[\]|\{\}")

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
PATCH_TYPES = (MERGE_PATCH, STRATEGIC_MERGE_PATCH, JSON_PATCH, APPLY_PATCH)


def _meta(obj: JsonObject, key: str, default: str = "") -> str:
    value = obj.get("metadata", {}).get(key, default)
    return value if isinstance(value, str) else str(value)


def _spec(path: str) -> Callable[[JsonObject], str]:
    def get(obj: JsonObject) -> str:
        node: Any = obj
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return ""
        if isinstance(node, bool):
            return "true" if node else "false"
        return str(node)

    return get


@dataclass(frozen=True)
class ResourceType:
    """What the server knows about one resource: its names, scope, rules and selectors."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    field_labels: FieldLabels
    validate: Callable[[JsonObject, JsonObject | None], list[Cause]]
    default: Callable[[JsonObject], None] | None = None
    has_status: bool = False
    clear_status_on_create: bool = False
    tracks_generation: bool = True
    returns_deleted_object: bool = True
    short_names: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular(self) -> str:
        return self.kind.lower()


_NAME_LABELS: FieldLabels = {"metadata.name": lambda o: _meta(o, "name")}
_NAMESPACED_LABELS: FieldLabels = {
    "metadata.name": lambda o: _meta(o, "name"),
    "metadata.namespace": lambda o: _meta(o, "namespace"),
}

RESOURCE_GROUP = "resource.k8s.io"
RESOURCE_GROUP_VERSION = "v1"

RESOURCES: dict[str, ResourceType] = {
    "resourceslices": ResourceType(
        RESOURCE_GROUP,
        RESOURCE_GROUP_VERSION,
        "resourceslices",
        "ResourceSlice",
        namespaced=False,
        # Exactly the labels kube-apiserver registers for ResourceSlice.
        field_labels={
            **_NAME_LABELS,
            "spec.nodeName": _spec("spec.nodeName"),
            "spec.driver": _spec("spec.driver"),
        },
        validate=validate_resource_slice,
    ),
    "resourceclaims": ResourceType(
        RESOURCE_GROUP,
        RESOURCE_GROUP_VERSION,
        "resourceclaims",
        "ResourceClaim",
        namespaced=True,
        field_labels=_NAMESPACED_LABELS,
        validate=validate_resource_claim,
        default=default_resource_claim,
        has_status=True,
        clear_status_on_create=True,
    ),
    "deviceclasses": ResourceType(
        RESOURCE_GROUP,
        RESOURCE_GROUP_VERSION,
        "deviceclasses",
        "DeviceClass",
        namespaced=False,
        field_labels=_NAME_LABELS,
        validate=validate_device_class,
    ),
    "nodes": ResourceType(
        "",
        "v1",
        "nodes",
        "Node",
        namespaced=False,
        field_labels={**_NAME_LABELS, "spec.unschedulable": _spec("spec.unschedulable")},
        validate=validate_node,
        has_status=True,
        tracks_generation=False,
        returns_deleted_object=False,
        short_names=("no",),
    ),
}

# Fields kube-apiserver 1.36 drops on write when their feature gate is off. Paths are
# dotted; "[]" steps into every list element and "{}" into every map value.
FEATURE_GATED_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    "DRADeviceTaints": (("resourceslices", "spec.devices[].taints"),),
    "DRAPartitionableDevices": (
        ("resourceslices", "spec.sharedCounters"),
        ("resourceslices", "spec.perDeviceNodeSelection"),
        ("resourceslices", "spec.devices[].consumesCounters"),
        ("resourceslices", "spec.devices[].nodeName"),
        ("resourceslices", "spec.devices[].nodeSelector"),
        ("resourceslices", "spec.devices[].allNodes"),
    ),
    "DRADeviceBindingConditions": (
        ("resourceslices", "spec.devices[].bindsToNode"),
        ("resourceslices", "spec.devices[].bindingConditions"),
        ("resourceslices", "spec.devices[].bindingFailureConditions"),
    ),
    "DRAConsumableCapacity": (
        ("resourceslices", "spec.devices[].allowMultipleAllocations"),
        ("resourceslices", "spec.devices[].capacity{}.requestPolicy"),
    ),
    "DRAListTypeAttributes": tuple(
        ("resourceslices", f"spec.devices[].attributes{{}}.{kind}")
        for kind in ("ints", "bools", "strings", "versions")
    ),
    "DRANodeAllocatableResources": (
        ("resourceslices", "spec.devices[].nodeAllocatableResourceMappings"),
    ),
    "DRAResourceClaimDeviceStatus": (("resourceclaims", "status.devices"),),
}

# Defaults of kube-apiserver 1.36 (reference/kubelet-dra-protocol.md section 4.2).
DEFAULT_FEATURE_GATES: dict[str, bool] = {
    "DRADeviceTaints": True,
    "DRAPartitionableDevices": True,
    "DRADeviceBindingConditions": True,
    "DRAConsumableCapacity": True,
    "DRAListTypeAttributes": False,
    "DRANodeAllocatableResources": False,
    "DRAResourceClaimDeviceStatus": True,
}


def _steps(path: str) -> list[str]:
    """``spec.devices[].taints`` -> ["spec", "devices", "[]", "taints"]."""
    return _STEP.findall(path)


def _values_at(node: Any, steps: list[str]) -> Iterable[Any]:
    if not steps:
        yield node
        return
    step, rest = steps[0], steps[1:]
    if step == "[]":
        for item in node if isinstance(node, list) else []:
            yield from _values_at(item, rest)
    elif step == "{}":
        for item in node.values() if isinstance(node, dict) else []:
            yield from _values_at(item, rest)
    elif isinstance(node, dict) and step in node:
        yield from _values_at(node[step], rest)


def _drop_at(node: Any, steps: list[str]) -> bool:
    """Remove the field at ``steps`` everywhere it occurs; True if anything was removed."""
    step, rest = steps[0], steps[1:]
    if step in ("[]", "{}"):
        items = (
            (node if isinstance(node, list) else [])
            if step == "[]"
            else (list(node.values()) if isinstance(node, dict) else [])
        )
        dropped = False
        for item in items:
            dropped = _drop_at(item, rest) or dropped
        return dropped
    if not isinstance(node, dict) or step not in node:
        return False
    if not rest:
        del node[step]
        return True
    return _drop_at(node[step], rest)


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Event:
    """One committed change; ``old`` is the previous state for selector transitions."""

    rv: int
    resource: str
    type: str
    obj: JsonObject
    old: JsonObject | None


@dataclass(frozen=True)
class WatchClose:
    """Sentinel that ends a watch stream: "end" (clean), "reset" (abrupt) or "expire" (410)."""

    mode: str


@dataclass(eq=False)
class Watcher:
    """One open watch: a filter and a queue of (type, object) the stream handler drains."""

    resource: ResourceType
    namespace: str | None
    matcher: Matcher
    queue: queue.SimpleQueue[tuple[str, JsonObject] | WatchClose] = field(
        default_factory=queue.SimpleQueue
    )

    def deliver(self, event: Event) -> None:
        """Translate a change into what this watcher sees, as the watch cache does.

        An object that starts matching the selector arrives as ADDED, one that stops
        matching as DELETED, like kube-apiserver's cacher.
        """
        ns = _meta(event.obj, "namespace")
        if self.namespace is not None and ns != self.namespace:
            return
        new_match = self.matcher(event.obj)
        if event.type == "ADDED":
            if new_match:
                self.queue.put(("ADDED", event.obj))
        elif event.type == "DELETED":
            if new_match:
                self.queue.put(("DELETED", event.obj))
        else:
            old_match = event.old is not None and self.matcher(event.old)
            if old_match and new_match:
                self.queue.put(("MODIFIED", event.obj))
            elif new_match:
                self.queue.put(("ADDED", event.obj))
            elif old_match:
                self.queue.put(("DELETED", event.obj))

    def close(self, mode: str = "end") -> None:
        self.queue.put(WatchClose(mode))


@dataclass
class ListResult:
    items: list[JsonObject]
    resource_version: int
    continue_token: str = ""
    remaining: int | None = None


class Store:
    """Thread-safe objects of every served resource, one revision counter, watch fan-out."""

    def __init__(self, history_limit: int = DEFAULT_HISTORY_LIMIT) -> None:
        self._lock = threading.RLock()
        self._rv = 1
        self._objects: dict[str, dict[tuple[str, str], JsonObject]] = {r: {} for r in RESOURCES}
        self._history: deque[Event] = deque()
        self._history_limit = history_limit
        self._compacted_rv = 0
        self._watchers: set[Watcher] = set()
        self._owned: dict[tuple[str, str, str, str], Owned] = {}
        self._feature_gates: dict[str, bool] = dict(DEFAULT_FEATURE_GATES)
        self._dropped_fields: set[tuple[str, str]] = set()
        # The minor version this server claims (/version): effect None on device
        # taints is valid from 1.35; an older server refuses it as unsupported.
        self.server_minor = 36

    # ---- write-time field dropping ---------------------------------------------------

    @property
    def feature_gates(self) -> dict[str, bool]:
        with self._lock:
            return dict(self._feature_gates)

    @property
    def dropped_fields(self) -> list[tuple[str, str]]:
        with self._lock:
            return sorted(self._dropped_fields)

    def set_feature_gate(self, gate: str, enabled: bool) -> None:
        if gate not in FEATURE_GATED_FIELDS:
            raise ValueError(
                f"unknown feature gate {gate!r}; known: {sorted(FEATURE_GATED_FIELDS)}"
            )
        with self._lock:
            self._feature_gates[gate] = enabled

    def drop_field(self, resource: str, path: str) -> None:
        if resource not in RESOURCES:
            raise ValueError(f"unknown resource {resource!r}")
        if not _steps(path):
            raise ValueError(f"empty field path {path!r}")
        with self._lock:
            self._dropped_fields.add((resource, path))

    def reset_fields(self) -> None:
        """Default 1.36 gates and no extra dropped fields."""
        with self._lock:
            self._feature_gates = dict(DEFAULT_FEATURE_GATES)
            self._dropped_fields.clear()

    # ---- revisions, history and watches -------------------------------------------

    @property
    def resource_version(self) -> int:
        with self._lock:
            return self._rv

    def compact(self) -> int:
        """Forget the event history, like an etcd compaction; older watch RVs now get 410."""
        with self._lock:
            self._history.clear()
            self._compacted_rv = self._rv
            return self._rv

    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    def _emit(
        self, resource: ResourceType, type_: str, obj: JsonObject, old: JsonObject | None
    ) -> None:
        event = Event(int(obj["metadata"]["resourceVersion"]), resource.plural, type_, obj, old)
        self._history.append(event)
        while len(self._history) > self._history_limit:
            dropped = self._history.popleft()
            self._compacted_rv = dropped.rv
        for watcher in list(self._watchers):
            if watcher.resource is resource:
                watcher.deliver(event)

    def watch(
        self,
        resource: ResourceType,
        namespace: str | None,
        matcher: Matcher,
        resource_version: str | None,
        send_initial_events: bool | None = None,
    ) -> tuple[Watcher, int, int]:
        """Register a watcher and queue what it must replay first.

        Returns the watcher, the revision its initial state reflects and how many
        synthetic ADDED events make up that initial state (for the initial-events-end
        bookmark). Raises 410 Expired for a compacted revision.
        """
        with self._lock:
            watcher = Watcher(resource, namespace, matcher)
            rv = _parse_rv(resource_version)
            initial = 0
            if send_initial_events or rv is None or rv == 0:
                for obj in self._sorted(resource, namespace):
                    if matcher(obj):
                        watcher.queue.put(("ADDED", obj))
                        initial += 1
            else:
                if rv < self._compacted_rv:
                    raise errors.expired(f"too old resource version: {rv} ({self._compacted_rv})")
                for event in self._history:
                    if event.rv > rv and event.resource == resource.plural:
                        watcher.deliver(event)
            self._watchers.add(watcher)
            return watcher, self._rv, initial

    def unwatch(self, watcher: Watcher) -> None:
        with self._lock:
            self._watchers.discard(watcher)

    def close_watches(self, mode: str = "end") -> int:
        """End every open watch stream; returns how many were open."""
        with self._lock:
            watchers = list(self._watchers)
            self._watchers.clear()
        for watcher in watchers:
            watcher.close(mode)
        return len(watchers)

    @property
    def open_watches(self) -> int:
        with self._lock:
            return len(self._watchers)

    # ---- reads ----------------------------------------------------------------------

    def _sorted(self, resource: ResourceType, namespace: str | None) -> list[JsonObject]:
        objects = self._objects[resource.plural]
        keys = sorted(k for k in objects if namespace is None or k[0] == namespace)
        return [objects[k] for k in keys]

    def get(self, resource: ResourceType, namespace: str, name: str) -> JsonObject:
        with self._lock:
            obj = self._objects[resource.plural].get((namespace, name))
            if obj is None:
                raise errors.not_found(resource.plural, resource.group, name)
            return copy.deepcopy(obj)

    def list_objects(
        self,
        resource: ResourceType,
        namespace: str | None,
        matcher: Matcher,
        limit: int = 0,
        continue_token: str = "",
    ) -> ListResult:
        with self._lock:
            list_rv = self._rv
            start: tuple[str, str] | None = None
            if continue_token:
                token_rv, start = _decode_continue(continue_token)
                if token_rv < self._compacted_rv:
                    raise errors.expired(
                        "The provided continue parameter is too old to display a consistent list "
                        "result. You can start a new list without the continue parameter."
                    )
                list_rv = token_rv
            objects = self._objects[resource.plural]
            keys = sorted(
                k
                for k in objects
                if (namespace is None or k[0] == namespace) and (start is None or k > start)
            )
            matched = [(k, objects[k]) for k in keys if matcher(objects[k])]
            result = ListResult([], list_rv)
            if limit and len(matched) > limit:
                result.continue_token = _encode_continue(list_rv, matched[limit - 1][0])
                result.remaining = len(matched) - limit
                matched = matched[:limit]
            result.items = [copy.deepcopy(o) for _, o in matched]
            return result

    # ---- writes ---------------------------------------------------------------------

    def create(
        self,
        resource: ResourceType,
        namespace: str,
        body: Any,
        *,
        dry_run: bool = False,
        keep_status: bool = False,
    ) -> JsonObject:
        """POST semantics; ``keep_status`` lets test seeding create e.g. an allocated claim."""
        obj = self._check_body(resource, body)
        meta = obj.setdefault("metadata", {})
        body_ns = meta.get("namespace", "")
        if resource.namespaced:
            if body_ns and body_ns != namespace:
                raise errors.bad_request(
                    "the namespace of the provided object does not match the namespace sent on "
                    "the request"
                )
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        with self._lock:
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = _generate_name(str(meta["generateName"]))
            name = meta.get("name", "")
            for key in (
                "uid",
                "resourceVersion",
                "creationTimestamp",
                "deletionTimestamp",
                "generation",
                "managedFields",
            ):
                meta.pop(key, None)
            if resource.clear_status_on_create and not keep_status:
                obj.pop("status", None)
            self._prepare(resource, obj, None)
            self._validate(resource, obj, None)
            obj_key = (namespace if resource.namespaced else "", name)
            if obj_key in self._objects[resource.plural]:
                raise errors.already_exists(resource.plural, resource.group, name)
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now_rfc3339()
            if resource.tracks_generation:
                meta["generation"] = 1
            if dry_run:
                return obj
            meta["resourceVersion"] = str(self._next_rv())
            self._objects[resource.plural][obj_key] = obj
            self._emit(resource, "ADDED", obj, None)
            return copy.deepcopy(obj)

    def update(
        self,
        resource: ResourceType,
        namespace: str,
        name: str,
        body: Any,
        *,
        subresource: str = "",
        dry_run: bool = False,
    ) -> JsonObject:
        """PUT semantics: optimistic concurrency on metadata.resourceVersion; 404 if missing."""
        obj = self._check_body(resource, body)
        body_name = obj.get("metadata", {}).get("name")
        if body_name and body_name != name:
            raise errors.bad_request(
                f"the name of the object ({body_name}) does not match the name on the URL ({name})"
            )
        with self._lock:
            old = self._existing(resource, namespace, name)
            return self._commit(resource, old, obj, subresource, dry_run)

    def patch(
        self,
        resource: ResourceType,
        namespace: str,
        name: str,
        patch_type: str,
        body: Any,
        *,
        subresource: str = "",
        field_manager: str = "",
        dry_run: bool = False,
    ) -> JsonObject:
        with self._lock:
            key = (namespace if resource.namespaced else "", name)
            current = self._objects[resource.plural].get(key)
            if patch_type == APPLY_PATCH:
                return self._apply(
                    resource, namespace, name, current, body, subresource, field_manager, dry_run
                )
            if current is None:
                raise errors.not_found(resource.plural, resource.group, name)
            _check_patched_uid(resource, current, body)
            if patch_type in (MERGE_PATCH, STRATEGIC_MERGE_PATCH):
                if not isinstance(body, dict):
                    raise errors.bad_request("the body of a merge patch must be a JSON object")
                patched = merge_patch(current, body)
            elif patch_type == JSON_PATCH:
                patched = json_patch(current, body)
            else:
                raise errors.unsupported_media_type(patch_type)
            if not isinstance(patched, dict):
                raise errors.bad_request("the patch must leave an object")
            return self._commit(resource, current, patched, subresource, dry_run)

    def _apply(
        self,
        resource: ResourceType,
        namespace: str,
        name: str,
        current: JsonObject | None,
        body: Any,
        subresource: str,
        field_manager: str,
        dry_run: bool,
    ) -> JsonObject:
        if not field_manager:
            raise errors.invalid(
                "PatchOptions",
                "meta.k8s.io",
                "",
                [
                    Cause(
                        "FieldValueRequired",
                        "Required value: is required for apply patch",
                        "fieldManager",
                    )
                ],
            )
        if not isinstance(body, dict):
            raise errors.bad_request("the body of an apply patch must be an object")
        if body.get("apiVersion") != resource.api_version or body.get("kind") != resource.kind:
            raise errors.bad_request(
                f"apply patch must set apiVersion {resource.api_version!r} "
                f"and kind {resource.kind!r}"
            )
        body_name = body.get("metadata", {}).get("name")
        if body_name and body_name != name:
            raise errors.bad_request(
                f"the name of the object ({body_name}) does not match the name on the URL ({name})"
            )
        owner_key = (resource.plural, namespace if resource.namespaced else "", name, field_manager)
        owned = copy.deepcopy(self._owned.get(owner_key, {}))
        # A resourceVersion in the applied configuration is a precondition, as upstream.
        applied = copy.deepcopy(body)
        if current is None:
            if subresource:
                raise errors.not_found(resource.plural, resource.group, name)
            merged = apply_merge(None, applied, (), owned)
            merged.setdefault("metadata", {})["name"] = name
            created = self.create(resource, namespace, merged, dry_run=dry_run)
            if not dry_run:
                self._owned[owner_key] = owned
            return created
        _check_patched_uid(resource, current, applied)
        merged = apply_merge(current, applied, (), owned)
        result = self._commit(resource, current, merged, subresource, dry_run)
        if not dry_run:
            self._owned[owner_key] = owned
        return result

    def delete(
        self,
        resource: ResourceType,
        namespace: str,
        name: str,
        *,
        precondition_uid: str | None = None,
        precondition_rv: str | None = None,
        dry_run: bool = False,
    ) -> tuple[JsonObject, bool]:
        """DELETE; returns (last state, deleted now). Finalizers defer the removal."""
        with self._lock:
            current = self._existing(resource, namespace, name)
            meta = current["metadata"]
            if precondition_uid and precondition_uid != meta["uid"]:
                raise errors.conflict(
                    resource.plural,
                    resource.group,
                    name,
                    f"Precondition failed: UID in precondition: {precondition_uid}, "
                    f"UID in object meta: {meta['uid']}",
                )
            if precondition_rv and precondition_rv != meta["resourceVersion"]:
                raise errors.conflict(
                    resource.plural,
                    resource.group,
                    name,
                    "Precondition failed: ResourceVersion in precondition: "
                    f"{precondition_rv}, ResourceVersion in object meta: {meta['resourceVersion']}",
                )
            if dry_run:
                return copy.deepcopy(current), not meta.get("finalizers")
            if meta.get("finalizers"):
                if meta.get("deletionTimestamp"):
                    return copy.deepcopy(current), False
                updated = copy.deepcopy(current)
                updated["metadata"]["deletionTimestamp"] = now_rfc3339()
                updated["metadata"]["deletionGracePeriodSeconds"] = 0
                updated["metadata"]["resourceVersion"] = str(self._next_rv())
                self._store(resource, updated)
                self._emit(resource, "MODIFIED", updated, current)
                return copy.deepcopy(updated), False
            return self._remove(resource, current), True

    def delete_collection(
        self,
        resource: ResourceType,
        namespace: str | None,
        matcher: Matcher,
        *,
        dry_run: bool = False,
    ) -> list[JsonObject]:
        with self._lock:
            deleted: list[JsonObject] = []
            for obj in self._sorted(resource, namespace):
                if matcher(obj):
                    last, _ = self.delete(
                        resource, _meta(obj, "namespace"), _meta(obj, "name"), dry_run=dry_run
                    )
                    deleted.append(last)
            return deleted

    # ---- write helpers --------------------------------------------------------------

    def _existing(self, resource: ResourceType, namespace: str, name: str) -> JsonObject:
        obj = self._objects[resource.plural].get((namespace if resource.namespaced else "", name))
        if obj is None:
            raise errors.not_found(resource.plural, resource.group, name)
        return obj

    def _check_body(self, resource: ResourceType, body: Any) -> JsonObject:
        if not isinstance(body, dict):
            raise errors.bad_request("the body of the request must be a JSON object")
        obj = copy.deepcopy(body)
        for key, want in (("apiVersion", resource.api_version), ("kind", resource.kind)):
            got = obj.get(key)
            if got and got != want:
                raise errors.bad_request(
                    f"the API version or kind in the data ({obj.get('apiVersion')}, "
                    f"{obj.get('kind')}) does not match the expected {want}"
                )
            obj[key] = want
        if not isinstance(obj.get("metadata", {}), dict):
            raise errors.bad_request("metadata must be an object")
        return obj

    def _store(self, resource: ResourceType, obj: JsonObject) -> None:
        key = (_meta(obj, "namespace") if resource.namespaced else "", _meta(obj, "name"))
        self._objects[resource.plural][key] = obj

    def _remove(self, resource: ResourceType, current: JsonObject) -> JsonObject:
        ns, name = _meta(current, "namespace"), _meta(current, "name")
        del self._objects[resource.plural][(ns if resource.namespaced else "", name)]
        for owner_key in [k for k in self._owned if k[:3] == (resource.plural, ns, name)]:
            del self._owned[owner_key]
        final = copy.deepcopy(current)
        final["metadata"]["resourceVersion"] = str(self._next_rv())
        self._emit(resource, "DELETED", final, current)
        return copy.deepcopy(final)

    def _prepare(self, resource: ResourceType, obj: JsonObject, old: JsonObject | None) -> None:
        """Server-side changes before validation: gated field drops, defaults, taint times."""
        for gate, fields in FEATURE_GATED_FIELDS.items():
            if self._feature_gates.get(gate, True):
                continue
            for plural, path in fields:
                if plural == resource.plural:
                    _drop_unless_in_use(obj, old, path)
        for plural, path in self._dropped_fields:
            if plural == resource.plural:
                _drop_at(obj, _steps(path))
        if resource.default is not None:
            resource.default(obj)
        if resource.plural == "resourceslices":
            stamp = now_rfc3339()
            for taint in _values_at(obj, _steps("spec.devices[].taints[]")):
                if isinstance(taint, dict) and not taint.get("timeAdded"):
                    taint["timeAdded"] = stamp

    def _validate(self, resource: ResourceType, obj: JsonObject, old: JsonObject | None) -> None:
        causes = resource.validate(obj, old)
        if resource.plural == "resourceslices" and self.server_minor < 35:
            causes = causes + _pre_135_taint_effects(obj)
        if causes:
            raise errors.invalid(resource.kind, resource.group, _meta(obj, "name"), causes)

    def _commit(
        self,
        resource: ResourceType,
        old: JsonObject,
        new: JsonObject,
        subresource: str,
        dry_run: bool,
    ) -> JsonObject:
        """Shared tail of update, patch and apply (store lock held)."""
        name = _meta(old, "name")
        sent_rv = new.get("metadata", {}).get("resourceVersion")
        if sent_rv and str(sent_rv) != old["metadata"]["resourceVersion"]:
            raise errors.conflict(resource.plural, resource.group, name, errors.STALE_OBJECT)
        if subresource == "status":
            candidate = copy.deepcopy(old)
            if "status" in new:
                candidate["status"] = copy.deepcopy(new["status"])
            else:
                candidate.pop("status", None)
        else:
            candidate = copy.deepcopy(new)
            candidate["apiVersion"], candidate["kind"] = resource.api_version, resource.kind
            meta = candidate.setdefault("metadata", {})
            if not isinstance(meta, dict):
                raise errors.bad_request("metadata must be an object")
            for key in (
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
            ):
                if key in old["metadata"]:
                    meta[key] = old["metadata"][key]
                else:
                    meta.pop(key, None)
            if resource.has_status:
                if "status" in old:
                    candidate["status"] = copy.deepcopy(old["status"])
                else:
                    candidate.pop("status", None)
        candidate["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        self._prepare(resource, candidate, old)
        self._validate(resource, candidate, old)
        if candidate == old:
            return copy.deepcopy(old)
        if resource.tracks_generation and _spec_of(candidate) != _spec_of(old):
            candidate["metadata"]["generation"] = int(old["metadata"].get("generation", 1)) + 1
        if dry_run:
            return candidate
        meta = candidate["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._store(resource, candidate)
            return self._remove(resource, candidate)
        meta["resourceVersion"] = str(self._next_rv())
        self._store(resource, candidate)
        self._emit(resource, "MODIFIED", candidate, old)
        return copy.deepcopy(candidate)

    # ---- direct access for tests ----------------------------------------------------

    def snapshot(self, resource: ResourceType) -> list[JsonObject]:
        with self._lock:
            return [copy.deepcopy(o) for o in self._sorted(resource, None)]

    def reset(self) -> None:
        """Drop every object and the history; watches end; the revision keeps counting."""
        with self._lock:
            for objects in self._objects.values():
                objects.clear()
            self._owned.clear()
            self._history.clear()
            self._compacted_rv = self._rv
        self.close_watches()


def _spec_of(obj: JsonObject) -> JsonObject:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


def _drop_unless_in_use(obj: JsonObject, old: JsonObject | None, path: str) -> None:
    """dropDisabledFields: a gated field is dropped unless the stored object already uses it."""
    steps = _steps(path)
    if old is not None and any(v not in (None, [], {}, "") for v in _values_at(old, steps)):
        return
    _drop_at(obj, steps)


def _generate_name(base: str) -> str:
    suffix = "".join(random.choices(GENERATE_NAME_ALPHABET, k=GENERATE_NAME_RANDOM_LENGTH))
    return base[:GENERATE_NAME_MAX_BASE] + suffix


def _parse_rv(value: str | None) -> int | None:
    if value in (None, ""):
        return None
    try:
        rv = int(str(value))
    except ValueError:
        raise errors.bad_request(f"invalid resource version: {value!r}") from None
    if rv < 0:
        raise errors.bad_request(f"invalid resource version: {value!r}")
    return rv


def _encode_continue(rv: int, key: tuple[str, str]) -> str:
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": list(key)}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_continue(token: str) -> tuple[int, tuple[str, str]]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        return int(data["rv"]), (str(data["start"][0]), str(data["start"][1]))
    except (ValueError, KeyError, IndexError, TypeError, binascii.Error):
        raise errors.bad_request(f"continue key is not valid: {token!r}") from None


__all__ = [
    "APPLY_PATCH",
    "DEFAULT_FEATURE_GATES",
    "FEATURE_GATED_FIELDS",
    "JSON_PATCH",
    "MERGE_PATCH",
    "PATCH_TYPES",
    "RESOURCES",
    "STRATEGIC_MERGE_PATCH",
    "ApiError",
    "Event",
    "ListResult",
    "ResourceType",
    "Store",
    "WatchClose",
    "Watcher",
]


def _check_patched_uid(resource: ResourceType, current: JsonObject, body: Any) -> None:
    """A patch naming another UID is refused: metadata.uid is immutable (ValidateObjectMetaUpdate).

    Appliers use this as a precondition, so a claim deleted and re-created under
    the same name is never written with the old one's state.
    """
    meta = body.get("metadata") if isinstance(body, dict) else None
    uid = meta.get("uid") if isinstance(meta, dict) else None
    if uid and uid != current["metadata"].get("uid"):
        raise errors.invalid(
            resource.kind,
            resource.group,
            _meta(current, "name"),
            [
                Cause(
                    "FieldValueInvalid",
                    f'Invalid value: "{uid}": field is immutable',
                    "metadata.uid",
                )
            ],
        )


def _pre_135_taint_effects(obj: JsonObject) -> list[Cause]:
    """Before 1.35 the device taint effects are NoSchedule and NoExecute only."""
    causes = []
    for i, dev in enumerate((obj.get("spec") or {}).get("devices") or ()):
        for j, taint in enumerate((dev or {}).get("taints") or () if isinstance(dev, dict) else ()):
            if isinstance(taint, dict) and taint.get("effect") == "None":
                causes.append(
                    Cause(
                        "FieldValueNotSupported",
                        'Unsupported value: "None": supported values: "NoExecute", "NoSchedule"',
                        f"spec.devices[{i}].taints[{j}].effect",
                    )
                )
    return causes
