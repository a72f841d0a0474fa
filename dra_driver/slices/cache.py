"""The publisher's picture of the slices stored for this driver on this node.

Fed by full lists and by watch events (and by our own writes' answers), it
never goes back in time: an event at or below the last full list's
resourceVersion is stale, and a deleted object's UID is remembered so a late
event cannot resurrect it. It also remembers where the server stored
something other than what we sent (a field its feature gate dropped).
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import Any


def name_of(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def uid_of(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("uid", ""))


def rv_of(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion", ""))


def _rv_int(rv: str) -> int | None:
    """resourceVersions are opaque; etcd's are integers and then comparable."""
    try:
        return int(rv)
    except ValueError:
        return None


class SliceCache:
    """Stored slices by name. Used from the event loop thread only."""

    def __init__(self) -> None:
        self._objects: dict[str, dict[str, Any]] = {}
        self._floor_rv: int | None = None  # events at or below the last full list are stale
        self._tombstones: collections.deque[str] = collections.deque(maxlen=1024)
        # name -> (fingerprint sent, fingerprint stored) where the server altered what we sent.
        self.accepted: dict[str, tuple[str, str]] = {}

    def objects(self) -> list[dict[str, Any]]:
        return list(self._objects.values())

    def live_keys(self) -> set[tuple[str, str]]:
        """(uid, resourceVersion) of every cached object."""
        return {(uid_of(o), rv_of(o)) for o in self._objects.values()}

    def replace(self, items: list[dict[str, Any]], rv: str) -> None:
        """A full list: the whole truth as of resourceVersion rv."""
        self._objects = {name_of(o): o for o in items}
        self._floor_rv = _rv_int(rv)
        for name in set(self.accepted) - set(self._objects):
            del self.accepted[name]

    def forget(self, obj: Mapping[str, Any]) -> None:
        """We deleted obj."""
        self._tombstones.append(uid_of(obj))
        cur = self._objects.get(name_of(obj))
        if cur is not None and uid_of(cur) == uid_of(obj):
            del self._objects[name_of(obj)]
        self.accepted.pop(name_of(obj), None)

    def observe(self, obj: dict[str, Any], deleted: bool = False) -> bool:
        """Apply one stored state; True if it changed what we knew."""
        name, uid, rv = name_of(obj), uid_of(obj), _rv_int(rv_of(obj))
        if rv is not None and self._floor_rv is not None and rv <= self._floor_rv:
            return False  # older than a full list we already have
        if uid in self._tombstones:
            return False
        cur = self._objects.get(name)
        if deleted:
            self._tombstones.append(uid)
            if cur is not None and uid_of(cur) == uid:
                del self._objects[name]
                self.accepted.pop(name, None)
                return True
            return False
        if cur is not None and uid_of(cur) == uid:
            cur_rv = _rv_int(rv_of(cur))
            if rv is not None and cur_rv is not None and rv <= cur_rv:
                return False
            if rv is None and rv_of(cur) == rv_of(obj):
                return False
        self._objects[name] = obj
        return True
