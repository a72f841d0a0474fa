"""The parts of a ResourceClaim the preparer reads, checked for shape before use.

The API server validates allocations, but a claim also reaches us through
old servers, proxies and test doubles; a result that is not an object, a
request name that is a list or a status that is an array must fail that one
claim with a message, never succeed with nonsense or raise AttributeError.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class MalformedClaim(ValueError):
    """The claim's status does not have the shape of a resource.k8s.io/v1 allocation."""


class NotAllocated(ValueError):
    """The claim has no allocation (yet)."""


@dataclass(frozen=True)
class AllocatedDevice:
    """One allocation result of this driver."""

    request: str
    driver: str
    pool: str
    device: str
    admin_access: bool
    share_id: str | None


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), "a number"
    )


def _field(obj: Mapping[str, Any], key: str, where: str, *, required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value):
        raise MalformedClaim(f"{where}.{key} must be a non-empty string, not {_kind(value)}")
    return value


def allocation_devices(claim: Mapping[str, Any]) -> Mapping[str, Any]:
    """status.allocation.devices of a claim; raises NotAllocated or MalformedClaim."""
    status = claim.get("status")
    if status is None:
        raise NotAllocated("no status")
    if not isinstance(status, dict):
        raise MalformedClaim(f"status must be an object, not {_kind(status)}")
    allocation = status.get("allocation")
    if allocation is None:
        raise NotAllocated("no status.allocation")
    if not isinstance(allocation, dict):
        raise MalformedClaim(f"status.allocation must be an object, not {_kind(allocation)}")
    devices = allocation.get("devices")
    if devices is None:
        return {}
    if not isinstance(devices, dict):
        raise MalformedClaim(f"status.allocation.devices must be an object, not {_kind(devices)}")
    return devices


def driver_results(devices: Mapping[str, Any], driver: str) -> list[AllocatedDevice]:
    """This driver's allocation results, in order; every result is shape-checked."""
    raw = devices.get("results")
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise MalformedClaim(
            f"status.allocation.devices.results must be an array, not {_kind(raw)}"
        )
    out = []
    for i, r in enumerate(raw):
        where = f"status.allocation.devices.results[{i}]"
        if not isinstance(r, dict):
            raise MalformedClaim(f"{where} must be an object, not {_kind(r)}")
        if _field(r, "driver", where) != driver:
            continue
        admin = r.get("adminAccess")
        if admin is not None and not isinstance(admin, bool):
            raise MalformedClaim(f"{where}.adminAccess must be a boolean, not {_kind(admin)}")
        out.append(
            AllocatedDevice(
                request=str(_field(r, "request", where)),
                driver=driver,
                pool=str(_field(r, "pool", where)),
                device=str(_field(r, "device", where)),
                admin_access=admin is True,
                share_id=_field(r, "shareID", where, required=False) or None,
            )
        )
    return out
