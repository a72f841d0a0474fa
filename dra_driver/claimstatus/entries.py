"""One prepared device + its health verdict -> one `status.devices` entry. Pure.

An entry is keyed, as the API's listType=map keys it, by driver, pool, device
and shareID. It carries two conditions (metav1.Condition, validated by the
API server as such):

* `Ready`: True once the device is prepared on this node;
* `Healthy`: the health board's verdict: True for Healthy and Degraded (still
  usable; the reason says what is degraded), False for Unhealthy (and for a
  device that is no longer present), Unknown when no check vouches for it.

and `data`: the device's UUID, type and, for MIG, its profile and parent.
lastTransitionTime moves only when a condition's status changes, as
controllers reading conditions expect.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from ..health.board import DeviceHealth, Health
from ..inventory import Device

READY = "Ready"
HEALTHY = "Healthy"
MAX_MESSAGE = 1024  # metav1 allows 32768; the health stream's limit keeps them alike
MAX_REASON = 1024
REASON_PREPARED = "Prepared"
REASON_NOT_PRESENT = "DeviceNotPresent"

# (driver, pool, device, shareID): the list-map key of status.devices.
EntryKey = tuple[str, str, str, str | None]
Entries = dict[EntryKey, dict[str, Any]]

_REASON_OK = re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")


def rfc3339(when: datetime) -> str:
    """metav1.Time as the API server writes it: seconds, UTC, "Z"."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition_reason(text: str, fallback: str) -> str:
    """A health reason as a metav1 condition reason: "xid-79" -> "Xid79"."""
    words = [w for w in re.split(r"[^A-Za-z0-9]+", text) if w]
    reason = "".join(w[:1].upper() + w[1:] for w in words)[:MAX_REASON]
    if not reason or not reason[0].isalpha():
        reason = f"{fallback}{reason}"[:MAX_REASON]
    return reason if _REASON_OK.match(reason) else fallback


def _health_condition(health: DeviceHealth | None) -> tuple[str, str, str]:
    """(status, reason, message) of the Healthy condition."""
    if health is None:
        return "False", REASON_NOT_PRESENT, "device no longer present on this node"
    message = health.message[:MAX_MESSAGE]
    if health.health is Health.HEALTHY:
        return "True", "Healthy", message or "device is healthy"
    if health.health is Health.DEGRADED:
        return "True", condition_reason(health.reason, "Degraded"), message or "degraded"
    if health.health is Health.UNHEALTHY:
        return "False", condition_reason(health.reason, "Unhealthy"), message or "unhealthy"
    return "Unknown", condition_reason(health.reason, "Unknown"), message or "health unknown"


def _condition(
    type_: str,
    status: str,
    reason: str,
    message: str,
    previous: Mapping[str, Any] | None,
    now: str,
) -> dict[str, Any]:
    since = now
    if previous is not None and previous.get("status") == status:
        since = str(previous.get("lastTransitionTime") or now)
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
    }


def device_data(device: Device | None, uuid: str) -> dict[str, str]:
    """What a controller needs to find the device without node access."""
    if device is None:
        return {"uuid": uuid} if uuid else {}
    data = {"uuid": device.uuid, "type": device.type.value}
    if device.mig is not None:
        data["profile"] = device.mig.profile
    if device.parent_uuid:
        data["parentUUID"] = device.parent_uuid
    return data


def entry_key(entry: Mapping[str, Any]) -> EntryKey:
    share = entry.get("shareID")
    return (
        str(entry.get("driver", "")),
        str(entry.get("pool", "")),
        str(entry.get("device", "")),
        str(share) if share else None,
    )


def device_entry(
    key: EntryKey,
    device: Device | None,
    uuid: str,
    health: DeviceHealth | None,
    previous: Mapping[str, Any] | None,
    now: str,
) -> dict[str, Any]:
    """The entry of one prepared device; `previous` (what we wrote last) keeps times."""
    driver, pool, name, share = key
    old = {c.get("type"): c for c in (previous or {}).get("conditions") or ()}
    status, reason, message = _health_condition(health)
    entry: dict[str, Any] = {"driver": driver, "pool": pool, "device": name}
    if share:
        entry["shareID"] = share
    entry["conditions"] = [
        _condition(
            READY,
            "True",
            REASON_PREPARED,
            f"prepared by {driver} on node {pool}",
            old.get(READY),
            now,
        ),
        _condition(HEALTHY, status, reason, message, old.get(HEALTHY), now),
    ]
    data = device_data(device, uuid)
    if data:
        entry["data"] = data
    return entry


def our_entries(claim: Mapping[str, Any], driver: str, pool: str) -> Entries:
    """This driver's entries for this pool in a claim as the server returned it."""
    out: Entries = {}
    for entry in (claim.get("status") or {}).get("devices") or ():
        if isinstance(entry, dict) and entry.get("driver") == driver and entry.get("pool") == pool:
            out[entry_key(entry)] = entry
    return out


def apply_body(
    api_version: str, namespace: str, name: str, uid: str, entries: Entries
) -> dict[str, Any]:
    """The applied configuration: our entries only, the claim's UID as a precondition.

    Entries this field manager applied before and leaves out are removed by the
    server; other managers' entries (other drivers) are not touched.
    """
    return {
        "apiVersion": api_version,
        "kind": "ResourceClaim",
        "metadata": {"namespace": namespace, "name": name, "uid": uid},
        "status": {"devices": [entries[k] for k in sorted(entries, key=_sort_key)]},
    }


def _sort_key(key: EntryKey) -> tuple[str, str, str, str]:
    return (key[0], key[1], key[2], key[3] or "")


def now_text() -> str:
    return rfc3339(datetime.now(UTC))
