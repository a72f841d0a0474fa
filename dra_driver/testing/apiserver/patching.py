"""Patch formats: JSON merge patch, JSON patch, and a small server-side apply.

Strategic merge patch is answered as a JSON merge patch: the resource.k8s.io types
carry few patch strategies and none of the driver's writes depend on them.

Server-side apply is modelled for what a DRA driver does with it: apply a partial
object under a field manager, merging list-map entries by their keys, and removing
the entries that this manager applied before and leaves out now (so a driver that
drops a device from ``status.devices`` sees it disappear). Ownership conflicts between
managers are not modelled.
"""

from __future__ import annotations

import copy
from typing import Any

from .errors import Cause, bad_request, invalid

JsonObject = dict[str, Any]

# Paths of list-typed fields that are "listType=map" in the resource.k8s.io / core
# OpenAPI, with their key fields. A "[]" step means "every element of that list".
LIST_MAP_KEYS: dict[tuple[str, ...], tuple[str, ...]] = {
    ("status", "devices"): ("driver", "device", "pool", "shareID"),
    ("status", "devices", "[]", "conditions"): ("type",),
    ("status", "conditions"): ("type",),
    ("status", "reservedFor"): ("uid",),
    ("metadata", "ownerReferences"): ("uid",),
}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, null deletes, everything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise bad_request(f"json patch: invalid path {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _container(doc: Any, parts: list[str], path: str) -> Any:
    node = doc
    for part in parts:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise bad_request(f"json patch: path {path!r} not found")
    return node


def _get(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    return _container(doc, parts, path)


def _remove(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        raise bad_request("json patch: cannot remove the whole document")
    parent = _container(doc, parts[:-1], path)
    last = parts[-1]
    if isinstance(parent, dict) and last in parent:
        return parent.pop(last)
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent.pop(int(last))
    raise bad_request(f"json patch: unable to remove nonexistent key {path!r}")


def _add(doc: Any, path: str, value: Any, replace: bool) -> Any:
    parts = _pointer(path)
    if not parts:
        return copy.deepcopy(value)
    parent = _container(doc, parts[:-1], path)
    last = parts[-1]
    value = copy.deepcopy(value)
    if isinstance(parent, dict):
        if replace and last not in parent:
            raise bad_request(
                f"json patch: replace operation does not apply: doc is missing key {path!r}"
            )
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-" and not replace:
            parent.append(value)
        elif last.isdigit() and int(last) <= len(parent) - (1 if replace else 0):
            if replace:
                parent[int(last)] = value
            else:
                parent.insert(int(last), value)
        else:
            raise bad_request(f"json patch: index out of range in {path!r}")
    else:
        raise bad_request(f"json patch: {path!r} does not name a container")
    return doc


def json_patch(target: JsonObject, ops: Any) -> Any:
    """RFC 6902; a failed ``test`` is a 422 like the real server's."""
    if not isinstance(ops, list):
        raise bad_request("json patch: the body must be a list of operations")
    doc: Any = copy.deepcopy(target)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise bad_request(f"json patch: malformed operation {op!r}")
        kind, path = op["op"], op["path"]
        if kind in ("add", "replace"):
            if "value" not in op:
                raise bad_request(f"json patch: {kind} operation needs a value")
            doc = _add(doc, path, op["value"], replace=kind == "replace")
        elif kind == "remove":
            _remove(doc, path)
        elif kind in ("move", "copy"):
            source = op.get("from")
            if not isinstance(source, str):
                raise bad_request(f"json patch: {kind} operation needs 'from'")
            value = _remove(doc, source) if kind == "move" else copy.deepcopy(_get(doc, source))
            doc = _add(doc, path, value, replace=False)
        elif kind == "test":
            if _get(doc, path) != op.get("value"):
                raise invalid(
                    "", "", "", [Cause("FieldValueInvalid", f"testing value {path} failed", "")]
                )
        else:
            raise bad_request(f"json patch: unexpected operation {kind!r}")
    return doc


def _entry_key(entry: Any, keys: tuple[str, ...]) -> tuple[Any, ...] | None:
    if not isinstance(entry, dict):
        return None
    return tuple(entry.get(k) for k in keys)


def _generic(path: tuple[str, ...]) -> tuple[str, ...]:
    return tuple("[]" if p.startswith("[") else p for p in path)


Owned = dict[tuple[str, ...], set[tuple[Any, ...]]]


def apply_merge(live: Any, applied: Any, path: tuple[str, ...], owned: Owned) -> Any:
    """Merge an applied configuration into the live object.

    ``owned`` maps concrete list-map paths to the entry keys this manager applied last
    time; entries it owned and no longer applies are removed, and ``owned`` is updated
    in place to what this apply set.
    """
    if isinstance(applied, dict):
        result = dict(live) if isinstance(live, dict) else {}
        for key, value in applied.items():
            if value is None:
                result.pop(key, None)
            else:
                result[key] = apply_merge(result.get(key), value, (*path, key), owned)
        generic = _generic(path)
        for list_path, keys in LIST_MAP_KEYS.items():
            if list_path[:-1] != generic:
                continue
            name = list_path[-1]
            if name in applied:
                continue
            stale = owned.pop((*path, name), None)
            if stale and isinstance(result.get(name), list):
                result[name] = [e for e in result[name] if _entry_key(e, keys) not in stale]
                if not result[name]:
                    del result[name]
        return result
    if isinstance(applied, list):
        list_keys = LIST_MAP_KEYS.get(_generic(path))
        if list_keys is None:
            return copy.deepcopy(applied)
        keys = list_keys
        previous = owned.get(path, set())
        current = live if isinstance(live, list) else []
        applied_by_key = {_entry_key(e, keys): e for e in applied}
        merged: list[Any] = []
        for entry in current:
            k = _entry_key(entry, keys)
            if k in applied_by_key:
                merged.append(apply_merge(entry, applied_by_key.pop(k), (*path, f"[{k!r}]"), owned))
            elif k not in previous:
                merged.append(entry)
        for k, entry in applied_by_key.items():
            merged.append(apply_merge(None, entry, (*path, f"[{k!r}]"), owned))
        owned[path] = {k for e in applied if (k := _entry_key(e, keys)) is not None}
        return merged
    return copy.deepcopy(applied)
