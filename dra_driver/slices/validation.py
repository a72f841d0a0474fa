"""The API server's documented ResourceSlice validation rules, checked before sending.

A slice the API server rejects (422) would be rejected again on every retry,
so the publisher would either loop or publish nothing. Instead, everything
the server would refuse is found here and dropped or clipped, one device or
attribute at a time, with a message that reads like a bug report. The rules
and limits are those of `k8s.io/api/resource/v1` (v0.36) and
`pkg/apis/resource/validation`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .quantity import QuantityError, parse_quantity

MAX_DEVICES_PER_SLICE = 128
MAX_DEVICES_PER_SLICE_ADVANCED = 64  # any taints or consumesCounters in the slice
MAX_ATTRIBUTES_AND_CAPACITIES = 32
ATTRIBUTE_MAX_VALUE_LENGTH = 64
MAX_DOMAIN_LENGTH = 63
MAX_ID_LENGTH = 32
DRIVER_NAME_MAX_LENGTH = 63
POOL_NAME_MAX_LENGTH = 253
# 1.35+ allows 16 taints per device, 1.34 (alpha gate) allowed 4: 4 is valid everywhere.
MAX_TAINTS_PER_DEVICE = 4
MAX_COUNTER_SETS_PER_SLICE = 8
MAX_COUNTERS_PER_SET = 32
MAX_CONSUMPTIONS_PER_DEVICE = 2
MAX_COUNTERS_PER_CONSUMPTION = 32
TAINT_EFFECTS = ("NoSchedule", "NoExecute", "None")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
_C_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]\Z")
# semver.org's SemVer 2.0.0 grammar, as the API server enforces it.
_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
_ATTRIBUTE_TYPES = ("int", "bool", "string", "version")


def is_dns_label(name: str) -> bool:
    return len(name) <= 63 and bool(_DNS_LABEL.match(name))


def is_dns_subdomain(name: str) -> bool:
    return 0 < len(name) <= 253 and all(is_dns_label(p) for p in name.split("."))


def is_semver(text: str) -> bool:
    return len(text) <= ATTRIBUTE_MAX_VALUE_LENGTH and bool(_SEMVER.match(text))


def driver_name_problem(name: str) -> str | None:
    """Why a driver name is invalid (a configuration error, never clipped)."""
    if not name:
        return "the driver name is empty"
    if len(name) > DRIVER_NAME_MAX_LENGTH:
        return f"driver name {name!r} is longer than {DRIVER_NAME_MAX_LENGTH} characters"
    if not is_dns_subdomain(name.lower()):
        return f"driver name {name!r} is not a DNS subdomain"
    return None


def pool_name_problem(name: str) -> str | None:
    """Why a pool (node) name is invalid: one or more DNS subdomains joined by '/'."""
    if not name:
        return "the pool name is empty"
    if len(name) > POOL_NAME_MAX_LENGTH:
        return f"pool name {name!r} is longer than {POOL_NAME_MAX_LENGTH} characters"
    if not all(is_dns_subdomain(p) for p in name.split("/")):
        return f"pool name {name!r} is not a '/'-separated list of DNS subdomains"
    return None


def qualified_name_problem(name: str) -> str | None:
    """Attribute and capacity keys: C identifier, or <DNS subdomain>/<C identifier>."""
    domain, sep, ident = name.rpartition("/")
    if sep:
        if "/" in domain:
            return f"{name!r} has more than one '/'"
        if len(domain) > MAX_DOMAIN_LENGTH or not is_dns_subdomain(domain):
            return f"domain {domain!r} of {name!r} is not a DNS subdomain of at most 63 characters"
    if not ident:
        return f"{name!r} has an empty identifier"
    if len(ident) > MAX_ID_LENGTH:
        return f"identifier {ident!r} is longer than {MAX_ID_LENGTH} characters"
    if not _C_IDENTIFIER.match(ident):
        return f"identifier {ident!r} is not a C identifier"
    return None


def attribute_value_problem(value: Mapping[str, Any]) -> str | None:
    """A DeviceAttribute must set exactly one of int, bool, string, version, validly."""
    kinds = [k for k, v in value.items() if v is not None]
    if len(kinds) != 1 or kinds[0] not in _ATTRIBUTE_TYPES:
        return f"value {dict(value)!r} must set exactly one of {', '.join(_ATTRIBUTE_TYPES)}"
    kind = kinds[0]
    v = value[kind]
    if kind == "int":
        if not isinstance(v, int) or isinstance(v, bool) or not INT64_MIN <= v <= INT64_MAX:
            return f"int value {v!r} is not a 64-bit integer"
    elif kind == "bool":
        if not isinstance(v, bool):
            return f"bool value {v!r} is not a boolean"
    elif kind == "string":
        if not isinstance(v, str):
            return f"string value {v!r} is not a string"
        if len(v) > ATTRIBUTE_MAX_VALUE_LENGTH:
            return (
                f"string value {v!r} is {len(v)} characters (at most {ATTRIBUTE_MAX_VALUE_LENGTH})"
            )
    elif not isinstance(v, str) or not is_semver(v):
        return f"version value {v!r} is not a strict semantic version of at most 64 characters"
    return None


def quantity_problem(value: Any) -> str | None:
    try:
        if parse_quantity(value) < 0:
            return f"quantity {value!r} is negative"
    except (QuantityError, TypeError, ValueError):
        return f"{value!r} is not a quantity"
    return None


def taint_problem(taint: Mapping[str, Any]) -> str | None:
    """A DeviceTaint: key a label name, value a label value, effect one of TAINT_EFFECTS."""
    key = taint.get("key")
    if not isinstance(key, str) or not key:
        return f"taint {dict(taint)!r} has no key"
    prefix, sep, name = key.rpartition("/")
    if (sep and not is_dns_subdomain(prefix)) or len(name) > 63 or not _LABEL_NAME.match(name):
        return f"taint key {key!r} is not a label name"
    value = taint.get("value") or ""
    if not isinstance(value, str) or len(value) > 63 or (value and not _LABEL_NAME.match(value)):
        return f"taint value {value!r} of {key!r} is not a label value"
    if taint.get("effect") not in TAINT_EFFECTS:
        return f"taint effect {taint.get('effect')!r} of {key!r} is not one of {TAINT_EFFECTS}"
    return None


@dataclass
class Checked:
    """The result of cleaning one object: what survives and what was wrong."""

    value: dict[str, Any] | None
    problems: list[str] = field(default_factory=list)


def _bug(subject: str, problem: str, action: str) -> str:
    return (
        f"BUG: {subject}: {problem}; the API server would reject the whole slice, "
        f"so {action}. Please report this with the output of `dra-driver inventory --json`."
    )


def _clean_counters(
    subject: str, counters: Mapping[str, Any], limit: int, problems: list[str]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, counter in counters.items():
        value = counter.get("value") if isinstance(counter, Mapping) else None
        problem = (
            f"counter name {name!r} is not a DNS label"
            if not is_dns_label(name)
            else quantity_problem(value)
        )
        if problem:
            problems.append(_bug(subject, problem, f"counter {name!r} was dropped"))
            continue
        if len(out) >= limit:
            problems.append(
                _bug(subject, f"more than {limit} counters", f"counter {name!r} was dropped")
            )
            continue
        out[name] = {"value": value}
    return out


def check_device(device: Mapping[str, Any]) -> Checked:
    """Clean one device: drop invalid attributes/capacities/taints/consumptions, clip to limits.

    An invalid device name cannot be repaired (claims refer to it), so the
    device is dropped. Attributes win over capacities when clipping to 32,
    in the order given, which puts identity (type, uuid) first.
    """
    name = device.get("name", "")
    if not isinstance(name, str) or not is_dns_label(name):
        return Checked(
            None,
            [_bug(f"device {name!r}", "the name is not a DNS label", "the device was dropped")],
        )
    problems: list[str] = []
    subject = f"device {name}"
    out: dict[str, Any] = {"name": name}
    budget = MAX_ATTRIBUTES_AND_CAPACITIES
    attrs: dict[str, Any] = {}
    for key, value in (device.get("attributes") or {}).items():
        problem = qualified_name_problem(key) or attribute_value_problem(value)
        if problem is None and budget == 0:
            problem = f"more than {MAX_ATTRIBUTES_AND_CAPACITIES} attributes and capacities"
        if problem:
            problems.append(_bug(subject, problem, f"attribute {key!r} was dropped"))
            continue
        attrs[key] = dict(value)
        budget -= 1
    caps: dict[str, Any] = {}
    for key, cap in (device.get("capacity") or {}).items():
        value = cap.get("value") if isinstance(cap, Mapping) else None
        problem = qualified_name_problem(key) or quantity_problem(value)
        if problem is None and budget == 0:
            problem = f"more than {MAX_ATTRIBUTES_AND_CAPACITIES} attributes and capacities"
        if problem:
            problems.append(_bug(subject, problem, f"capacity {key!r} was dropped"))
            continue
        caps[key] = dict(cap)
        budget -= 1
    if attrs:
        out["attributes"] = attrs
    if caps:
        out["capacity"] = caps
    consumptions: list[dict[str, Any]] = []
    for entry in device.get("consumesCounters") or ():
        set_name = entry.get("counterSet", "")
        if not is_dns_label(set_name) or any(c["counterSet"] == set_name for c in consumptions):
            problems.append(
                _bug(
                    subject,
                    f"counter set reference {set_name!r} is not a unique DNS label",
                    "the device was dropped",
                )
            )
            return Checked(None, problems)
        if len(consumptions) >= MAX_CONSUMPTIONS_PER_DEVICE:
            problems.append(
                _bug(
                    subject,
                    f"consumes from more than {MAX_CONSUMPTIONS_PER_DEVICE} counter sets",
                    "the device was dropped",
                )
            )
            return Checked(None, problems)
        counters = _clean_counters(
            subject, entry.get("counters") or {}, MAX_COUNTERS_PER_CONSUMPTION, problems
        )
        consumptions.append({"counterSet": set_name, "counters": counters})
    if consumptions:
        out["consumesCounters"] = consumptions
    taints = clean_taints(subject, device.get("taints") or (), problems)
    if taints:
        out["taints"] = taints
    return Checked(out, problems)


_EFFECT_RANK = {"NoExecute": 0, "NoSchedule": 1, "None": 2}


def clean_taints(
    subject: str, taints: Iterable[Mapping[str, Any]], problems: list[str]
) -> list[dict[str, Any]]:
    """Valid, de-duplicated taints; beyond the limit the most severe ones are kept."""
    out: list[dict[str, Any]] = []
    seen: set[tuple[str, str, str]] = set()
    for taint in taints:
        problem = taint_problem(taint)
        if problem:
            problems.append(_bug(subject, problem, "the taint was dropped"))
            continue
        ident = (taint["key"], taint.get("value") or "", taint["effect"])
        if ident in seen:
            continue
        seen.add(ident)
        out.append({k: v for k, v in taint.items() if v not in (None, "")})
    if len(out) > MAX_TAINTS_PER_DEVICE:
        ranked = sorted(range(len(out)), key=lambda i: (_EFFECT_RANK[out[i]["effect"]], i))
        keep = sorted(ranked[:MAX_TAINTS_PER_DEVICE])
        dropped = [out[i]["key"] for i in ranked[MAX_TAINTS_PER_DEVICE:]]
        problems.append(
            _bug(
                subject,
                f"{len(out)} taints (at most {MAX_TAINTS_PER_DEVICE} are portable)",
                f"the least severe were dropped: {', '.join(dropped)}",
            )
        )
        out = [out[i] for i in keep]
    return out


def check_counter_set(counter_set: Mapping[str, Any]) -> Checked:
    """A CounterSet: DNS-label name, 1..32 DNS-label counters with quantities."""
    name = counter_set.get("name", "")
    if not isinstance(name, str) or not is_dns_label(name):
        return Checked(
            None,
            [_bug(f"counter set {name!r}", "the name is not a DNS label", "it was dropped")],
        )
    problems: list[str] = []
    counters = _clean_counters(
        f"counter set {name}", counter_set.get("counters") or {}, MAX_COUNTERS_PER_SET, problems
    )
    if not counters:
        problems.append(_bug(f"counter set {name}", "it has no counters", "it was dropped"))
        return Checked(None, problems)
    return Checked({"name": name, "counters": counters}, problems)


def check_pool(
    devices: Sequence[Mapping[str, Any]], counter_sets: Sequence[Mapping[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """Pool-wide rules the API server does not check but the scheduler relies on.

    Device and counter-set names must be unique across the pool, and every
    consumed counter must exist in its set (the helper refuses such a pool).
    Returns the surviving devices, counter sets and the problems found.
    """
    problems: list[str] = []
    sets: dict[str, dict[str, Any]] = {}
    for cs in counter_sets:
        checked = check_counter_set(cs)
        problems += checked.problems
        if checked.value is None:
            continue
        if checked.value["name"] in sets:
            problems.append(
                _bug(f"counter set {checked.value['name']}", "the name is duplicated", "dropped it")
            )
            continue
        sets[checked.value["name"]] = checked.value
    out: list[dict[str, Any]] = []
    names: set[str] = set()
    for device in devices:
        checked = check_device(device)
        problems += checked.problems
        dev = checked.value
        if dev is None:
            continue
        if dev["name"] in names:
            problems.append(
                _bug(f"device {dev['name']}", "the name is duplicated", "dropped the later one")
            )
            continue
        missing = [
            f"{c['counterSet']}/{n}"
            for c in dev.get("consumesCounters", ())
            for n in c["counters"]
            if n not in sets.get(c["counterSet"], {}).get("counters", {})
        ]
        if missing:
            problems.append(
                _bug(
                    f"device {dev['name']}",
                    f"consumes unknown counters {', '.join(missing)}",
                    "the device was dropped",
                )
            )
            continue
        names.add(dev["name"])
        out.append(dev)
    return out, list(sets.values()), problems


def slice_problems(spec: Mapping[str, Any]) -> list[str]:
    """Slice-level limits; the builder's layout must never violate them."""
    problems = []
    devices = spec.get("devices") or []
    counter_sets = spec.get("sharedCounters") or []
    advanced = any(d.get("taints") or d.get("consumesCounters") for d in devices)
    limit = MAX_DEVICES_PER_SLICE_ADVANCED if advanced else MAX_DEVICES_PER_SLICE
    if len(devices) > limit:
        problems.append(f"{len(devices)} devices in one slice (at most {limit})")
    if len(counter_sets) > MAX_COUNTER_SETS_PER_SLICE:
        problems.append(f"{len(counter_sets)} counter sets in one slice")
    if devices and counter_sets:
        problems.append("devices and sharedCounters in the same slice (invalid from 1.35)")
    return problems
