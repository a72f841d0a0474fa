"""Validation and defaulting of resource.k8s.io/v1 objects, as kube-apiserver 1.36 does it.

The limits are the named constants of ``k8s.io/api/resource/v1`` (v0.36); the rule
set follows ``pkg/apis/resource/validation``. A publisher that passes here must pass
on a real cluster, so where upstream is lax by accident (qualified names with more
than one ``/`` slip through upstream) the double rejects: the driver should not
depend on the accident.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any, TypeGuard

from .errors import Cause
from .selectors import valid_label_key, valid_label_value

JsonObject = dict[str, Any]

RESOURCE_SLICE_MAX_DEVICES = 128
RESOURCE_SLICE_MAX_DEVICES_WITH_ADVANCED_FEATURES = 64  # taints, consumesCounters, list attributes
RESOURCE_SLICE_MAX_ATTRIBUTES_AND_CAPACITIES_PER_DEVICE = 32
RESOURCE_SLICE_MAX_ATTRIBUTE_VALUES_PER_DEVICE = 48
DEVICE_ATTRIBUTE_MAX_VALUE_LENGTH = 64
DEVICE_MAX_DOMAIN_LENGTH = 63
DEVICE_MAX_ID_LENGTH = 32
DRIVER_NAME_MAX_LENGTH = 63
POOL_NAME_MAX_LENGTH = 253
DEVICE_TAINTS_MAX_LENGTH = 16
RESOURCE_SLICE_MAX_COUNTER_SETS = 8
RESOURCE_SLICE_MAX_COUNTERS_PER_COUNTER_SET = 32
RESOURCE_SLICE_MAX_DEVICE_COUNTER_CONSUMPTIONS_PER_DEVICE = 2
RESOURCE_SLICE_MAX_COUNTERS_PER_DEVICE_COUNTER_CONSUMPTION = 32
BINDING_CONDITIONS_MAX_SIZE = 4
BINDING_FAILURE_CONDITIONS_MAX_SIZE = 4
DEVICE_TAINT_EFFECTS = ("NoSchedule", "NoExecute", "None")
DNS1123_LABEL_MAX_LENGTH = 63
DNS1123_SUBDOMAIN_MAX_LENGTH = 253

RESOURCE_CLAIM_MAX_REQUESTS = 32  # DeviceRequestsMaxSize
FIRST_AVAILABLE_DEVICE_REQUEST_MAX_SIZE = 8
DEVICE_SELECTORS_MAX_SIZE = 32
DEVICE_CONSTRAINTS_MAX_SIZE = 32
DEVICE_CONFIG_MAX_SIZE = 32
DEVICE_TOLERATIONS_MAX_LENGTH = 16
ALLOCATION_RESULTS_MAX_SIZE = 32
ALLOCATION_CONFIG_MAX_SIZE = 64
RESOURCE_CLAIM_RESERVED_FOR_MAX_SIZE = 256
OPAQUE_PARAMETERS_MAX_LENGTH = 10 * 1024
DEVICE_STATUS_DATA_MAX_LENGTH = 10 * 1024
DEVICE_STATUS_MAX_CONDITIONS = 8
NETWORK_DEVICE_DATA_INTERFACE_NAME_MAX_LENGTH = 256
NETWORK_DEVICE_DATA_HARDWARE_ADDRESS_MAX_LENGTH = 128
NETWORK_DEVICE_DATA_MAX_IPS = 16
ALLOCATION_MODES = ("ExactCount", "All")
TOLERATION_OPERATORS = ("Exists", "Equal")
SCALAR_ATTRIBUTE_KINDS = ("int", "bool", "string", "version")
LIST_ATTRIBUTE_KINDS = ("ints", "bools", "strings", "versions")  # DRAListTypeAttributes (alpha)

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_C_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
_QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?\d+)?$")
_TAINT_EFFECT_LIST = ", ".join(f'"{e}"' for e in DEVICE_TAINT_EFFECTS)


MSG_DNS_SUBDOMAIN = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
    "'-' or '.', and must start and end with an alphanumeric character"
)
MSG_NODE_SELECTION = (
    "exactly one of `nodeName`, `nodeSelector`, `allNodes`, `perDeviceNodeSelection` is required"
)


def _show(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


class Errors:
    """Collects field errors worded like ``k8s.io/apimachinery/pkg/util/validation/field``."""

    def __init__(self) -> None:
        self.causes: list[Cause] = []

    def __bool__(self) -> bool:
        return bool(self.causes)

    def required(self, path: str, detail: str = "") -> None:
        self.causes.append(
            Cause("FieldValueRequired", "Required value" + (f": {detail}" if detail else ""), path)
        )

    def invalid(self, path: str, value: Any, detail: str) -> None:
        self.causes.append(
            Cause("FieldValueInvalid", f"Invalid value: {_show(value)}: {detail}", path)
        )

    def too_many(self, path: str, actual: int, limit: int) -> None:
        self.causes.append(
            Cause("FieldValueTooMany", f"Too many: {actual}: must have at most {limit} items", path)
        )

    def too_long(self, path: str, limit: int) -> None:
        self.causes.append(
            Cause("FieldValueTooLong", f"Too long: may not be more than {limit} bytes", path)
        )

    def duplicate(self, path: str, value: Any) -> None:
        self.causes.append(Cause("FieldValueDuplicate", f"Duplicate value: {_show(value)}", path))

    def not_supported(self, path: str, value: Any, supported: Iterable[str]) -> None:
        choices = ", ".join(f'"{s}"' for s in supported)
        self.causes.append(
            Cause(
                "FieldValueNotSupported",
                f"Unsupported value: {_show(value)}: supported values: {choices}",
                path,
            )
        )

    def forbidden(self, path: str, detail: str) -> None:
        self.causes.append(Cause("FieldValueForbidden", f"Forbidden: {detail}", path))

    def type_error(self, path: str, value: Any, expected: str) -> None:
        self.causes.append(
            Cause(
                "FieldValueTypeInvalid", f"Invalid value: {_show(value)}: must be {expected}", path
            )
        )


def is_dns_label(value: Any) -> bool:
    return (
        isinstance(value, str)
        and len(value) <= DNS1123_LABEL_MAX_LENGTH
        and bool(_DNS_LABEL.match(value))
    )


def is_dns_subdomain(value: Any) -> bool:
    return (
        isinstance(value, str)
        and len(value) <= DNS1123_SUBDOMAIN_MAX_LENGTH
        and bool(_DNS_SUBDOMAIN.match(value))
    )


def is_quantity(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) or (
        isinstance(value, str) and bool(_QUANTITY.match(value))
    )


def validate_object_name(errs: Errors, obj: JsonObject) -> None:
    name = obj.get("metadata", {}).get("name", "")
    if not name:
        errs.required("metadata.name", "name or generateName is required")
    elif not is_dns_subdomain(name):
        errs.invalid(
            "metadata.name",
            name,
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
            "'-' or '.', and must start and end with an alphanumeric character",
        )


def _validate_driver_name(errs: Errors, path: str, value: Any) -> None:
    if not value:
        errs.required(path)
    elif not isinstance(value, str):
        errs.type_error(path, value, "a string")
    elif len(value) > DRIVER_NAME_MAX_LENGTH:
        errs.too_long(path, DRIVER_NAME_MAX_LENGTH)
    elif not is_dns_subdomain(value.lower()):
        errs.invalid(
            path,
            value,
            MSG_DNS_SUBDOMAIN,
        )


def _validate_dns_label(errs: Errors, path: str, value: Any) -> None:
    if not value:
        errs.required(path)
    elif not is_dns_label(value):
        errs.invalid(
            path,
            value,
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
            "and must start and end with an alphanumeric character",
        )


def _validate_qualified_name(errs: Errors, path: str, name: str) -> None:
    domain, sep, ident = name.partition("/")
    if not sep:
        domain, ident = "", name
    elif not domain:
        errs.required(path, "the domain must not be empty")
    else:
        _validate_driver_name(errs, path, domain)
    if not ident:
        errs.required(path, "the name must not be empty")
    elif len(ident) > DEVICE_MAX_ID_LENGTH:
        errs.too_long(path, DEVICE_MAX_ID_LENGTH)
    elif not _C_IDENTIFIER.match(ident):
        errs.invalid(
            path,
            name,
            "a valid C identifier must start with alphabetic character or '_', followed by a "
            "string of alphanumeric characters or '_'",
        )


def _list(errs: Errors, path: str, value: Any) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        errs.type_error(path, value, "a list")
        return []
    return value


def _map(errs: Errors, path: str, value: Any) -> JsonObject:
    if value is None:
        return {}
    if not isinstance(value, dict):
        errs.type_error(path, value, "an object")
        return {}
    return value


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _validate_attribute(errs: Errors, path: str, attr: Any) -> int:
    """Check one DeviceAttribute; returns how many values it holds (for the per-device cap)."""
    if not isinstance(attr, dict):
        errs.type_error(path, attr, "an object")
        return 0
    kinds = [k for k in (*SCALAR_ATTRIBUTE_KINDS, *LIST_ATTRIBUTE_KINDS) if attr.get(k) is not None]
    if len(kinds) != 1:
        errs.invalid(path, attr, "exactly one value must be specified")
        return 0
    kind = kinds[0]
    value = attr[kind]
    if kind in LIST_ATTRIBUTE_KINDS:
        if not isinstance(value, list) or not value:
            errs.required(f"{path}.{kind}", "must have at least one value")
            return 0
        values, scalar = value, kind[:-1]
    else:
        values, scalar = [value], kind
    for i, v in enumerate(values):
        vpath = f"{path}.{kind}" if kind == scalar else f"{path}.{kind}[{i}]"
        if scalar == "int" and not _is_int(v):
            errs.type_error(vpath, v, "an integer")
        elif scalar == "bool" and not isinstance(v, bool):
            errs.type_error(vpath, v, "a boolean")
        elif scalar in ("string", "version") and not isinstance(v, str):
            errs.type_error(vpath, v, "a string")
        elif scalar in ("string", "version") and len(v) > DEVICE_ATTRIBUTE_MAX_VALUE_LENGTH:
            errs.too_long(vpath, DEVICE_ATTRIBUTE_MAX_VALUE_LENGTH)
        elif scalar == "version" and not _SEMVER.match(v):
            errs.invalid(vpath, v, "must be a string compatible with semver.org spec 2.0.0")
    return len(values)


def _validate_counters(errs: Errors, path: str, counters: Any, limit: int) -> None:
    counters = _map(errs, path, counters)
    if not counters:
        errs.required(path)
    if len(counters) > limit:
        errs.too_many(path, len(counters), limit)
    for name, counter in counters.items():
        cpath = f"{path}[{name}]"
        if not is_dns_label(name):
            _validate_dns_label(errs, cpath, name)
        value = counter.get("value") if isinstance(counter, dict) else None
        if value is None:
            errs.required(f"{cpath}.value")
        elif not is_quantity(value):
            errs.invalid(
                f"{cpath}.value",
                value,
                "quantities must match the regular expression "
                "'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
            )


def _validate_node_selector(errs: Errors, path: str, selector: Any) -> None:
    terms = _list(
        errs, f"{path}.nodeSelectorTerms", _map(errs, path, selector).get("nodeSelectorTerms")
    )
    if len(terms) != 1:
        errs.invalid(
            f"{path}.nodeSelectorTerms", len(terms), "must have exactly one node selector term"
        )


def _validate_taint(errs: Errors, path: str, taint: Any) -> None:
    taint = _map(errs, path, taint)
    key = taint.get("key")
    if not key:
        errs.required(f"{path}.key")
    elif not isinstance(key, str) or not valid_label_key(key):
        errs.invalid(
            f"{path}.key", key, "name part must consist of alphanumeric characters, '-', '_' or '.'"
        )
    value = taint.get("value")
    if value and (not isinstance(value, str) or not valid_label_value(value)):
        errs.invalid(
            f"{path}.value",
            value,
            "a valid label must be an empty string or consist of alphanumeric characters, "
            "'-', '_' or '.'",
        )
    effect = taint.get("effect")
    if not effect:
        errs.required(f"{path}.effect")
    elif effect not in DEVICE_TAINT_EFFECTS:
        errs.not_supported(f"{path}.effect", effect, DEVICE_TAINT_EFFECTS)


def _has_advanced_features(device: Any) -> bool:
    if not isinstance(device, dict):
        return False
    if device.get("taints") or device.get("consumesCounters"):
        return True
    attrs = device.get("attributes")
    return isinstance(attrs, dict) and any(
        isinstance(a, dict) and any(a.get(k) is not None for k in LIST_ATTRIBUTE_KINDS)
        for a in attrs.values()
    )


def _validate_device(errs: Errors, path: str, device: Any, per_device_nodes: bool) -> None:
    device = _map(errs, path, device)
    _validate_dns_label(errs, f"{path}.name", device.get("name"))
    attributes = _map(errs, f"{path}.attributes", device.get("attributes"))
    capacity = _map(errs, f"{path}.capacity", device.get("capacity"))
    combined = len(attributes) + len(capacity)
    if combined > RESOURCE_SLICE_MAX_ATTRIBUTES_AND_CAPACITIES_PER_DEVICE:
        errs.invalid(
            path,
            combined,
            "the total number of attributes and capacities must not exceed "
            f"{RESOURCE_SLICE_MAX_ATTRIBUTES_AND_CAPACITIES_PER_DEVICE}",
        )
    values = 0
    for name, attr in attributes.items():
        apath = f"{path}.attributes[{name}]"
        _validate_qualified_name(errs, apath, name)
        values += _validate_attribute(errs, apath, attr)
    if values > RESOURCE_SLICE_MAX_ATTRIBUTE_VALUES_PER_DEVICE:
        errs.invalid(
            f"{path}.attributes",
            values,
            "the total number of attribute values must not exceed "
            f"{RESOURCE_SLICE_MAX_ATTRIBUTE_VALUES_PER_DEVICE}",
        )
    for name, cap in capacity.items():
        cpath = f"{path}.capacity[{name}]"
        _validate_qualified_name(errs, cpath, name)
        value = cap.get("value") if isinstance(cap, dict) else None
        if value is None:
            errs.required(f"{cpath}.value")
        elif not is_quantity(value):
            errs.invalid(f"{cpath}.value", value, "must be a quantity")
        if (
            isinstance(cap, dict)
            and cap.get("requestPolicy") is not None
            and not device.get("allowMultipleAllocations")
        ):
            errs.forbidden(
                f"{cpath}.requestPolicy", "allowed only when allowMultipleAllocations is true"
            )
    consumes = _list(errs, f"{path}.consumesCounters", device.get("consumesCounters"))
    if len(consumes) > RESOURCE_SLICE_MAX_DEVICE_COUNTER_CONSUMPTIONS_PER_DEVICE:
        errs.too_many(
            f"{path}.consumesCounters",
            len(consumes),
            RESOURCE_SLICE_MAX_DEVICE_COUNTER_CONSUMPTIONS_PER_DEVICE,
        )
    seen_sets: set[str] = set()
    for i, consumption in enumerate(consumes):
        cpath = f"{path}.consumesCounters[{i}]"
        consumption = _map(errs, cpath, consumption)
        counter_set = consumption.get("counterSet")
        _validate_dns_label(errs, f"{cpath}.counterSet", counter_set)
        if isinstance(counter_set, str):
            if counter_set in seen_sets:
                errs.duplicate(f"{cpath}.counterSet", counter_set)
            seen_sets.add(counter_set)
        _validate_counters(
            errs,
            f"{cpath}.counters",
            consumption.get("counters"),
            RESOURCE_SLICE_MAX_COUNTERS_PER_DEVICE_COUNTER_CONSUMPTION,
        )
    taints = _list(errs, f"{path}.taints", device.get("taints"))
    if len(taints) > DEVICE_TAINTS_MAX_LENGTH:
        errs.too_many(f"{path}.taints", len(taints), DEVICE_TAINTS_MAX_LENGTH)
    for i, taint in enumerate(taints):
        _validate_taint(errs, f"{path}.taints[{i}]", taint)
    node_fields = [
        f for f in ("nodeName", "nodeSelector", "allNodes") if device.get(f) not in (None, "")
    ]
    if per_device_nodes:
        if len(node_fields) != 1:
            errs.invalid(
                path,
                node_fields,
                "exactly one of `nodeName`, `nodeSelector`, or `allNodes` is required when "
                "`perDeviceNodeSelection` is set to true in the ResourceSlice spec",
            )
        elif device.get("allNodes") is not None and device.get("allNodes") is not True:
            errs.invalid(f"{path}.allNodes", device.get("allNodes"), "must be true")
        elif device.get("nodeSelector") is not None:
            _validate_node_selector(errs, f"{path}.nodeSelector", device.get("nodeSelector"))
    else:
        for f in node_fields:
            errs.forbidden(
                f"{path}.{f}",
                "`nodeName`, `nodeSelector` and `allNodes` can only be set if "
                "`perDeviceNodeSelection` is set to true in the ResourceSlice spec",
            )
    conditions = _list(errs, f"{path}.bindingConditions", device.get("bindingConditions"))
    failures = _list(
        errs, f"{path}.bindingFailureConditions", device.get("bindingFailureConditions")
    )
    for cpath, items, limit in (
        (f"{path}.bindingConditions", conditions, BINDING_CONDITIONS_MAX_SIZE),
        (f"{path}.bindingFailureConditions", failures, BINDING_FAILURE_CONDITIONS_MAX_SIZE),
    ):
        if len(items) > limit:
            errs.too_many(cpath, len(items), limit)
        for i, cond in enumerate(items):
            if not isinstance(cond, str) or not valid_label_key(cond):
                errs.invalid(f"{cpath}[{i}]", cond, "must be a valid label name")
    if conditions and not failures:
        errs.required(
            f"{path}.bindingFailureConditions",
            "bindingFailureConditions are required to use bindingConditions",
        )
    if failures and not conditions:
        errs.required(
            f"{path}.bindingConditions",
            "bindingConditions are required to use bindingFailureConditions",
        )
    for cond in (
        set(conditions) & set(failures)
        if all(isinstance(c, str) for c in conditions + failures)
        else ()
    ):
        errs.invalid(
            f"{path}.bindingConditions",
            cond,
            "bindingConditions and bindingFailureConditions must not overlap",
        )


def validate_resource_slice(obj: JsonObject, old: JsonObject | None) -> list[Cause]:
    errs = Errors()
    validate_object_name(errs, obj)
    spec = _map(errs, "spec", obj.get("spec"))
    _validate_driver_name(errs, "spec.driver", spec.get("driver"))
    pool = _map(errs, "spec.pool", spec.get("pool"))
    pool_name = pool.get("name")
    if not pool_name:
        errs.required("spec.pool.name")
    elif not isinstance(pool_name, str):
        errs.type_error("spec.pool.name", pool_name, "a string")
    elif len(pool_name) > POOL_NAME_MAX_LENGTH:
        errs.too_long("spec.pool.name", POOL_NAME_MAX_LENGTH)
    else:
        for part in pool_name.split("/"):
            if not is_dns_subdomain(part):
                errs.invalid(
                    "spec.pool.name",
                    pool_name,
                    "a valid pool name consists of one or more DNS sub-domains separated by "
                    "slashes",
                )
                break
    generation = pool.get("generation", 0)
    if not _is_int(generation) or generation < 0:
        errs.invalid("spec.pool.generation", generation, "must be greater than or equal to 0")
    count = pool.get("resourceSliceCount")
    if not _is_int(count) or count <= 0:
        errs.invalid("spec.pool.resourceSliceCount", count, "must be greater than 0")

    selection = [
        f
        for f in ("nodeName", "nodeSelector", "allNodes", "perDeviceNodeSelection")
        if spec.get(f) not in (None, "")
    ]
    if not selection:
        errs.required(
            "spec",
            MSG_NODE_SELECTION,
        )
    elif len(selection) > 1:
        errs.invalid(
            "spec",
            "{" + ", ".join(f"`{s}`" for s in selection) + "}",
            MSG_NODE_SELECTION + ", but multiple fields are set",
        )
    node_name = spec.get("nodeName")
    if node_name not in (None, "") and not is_dns_subdomain(node_name):
        errs.invalid(
            "spec.nodeName",
            node_name,
            MSG_DNS_SUBDOMAIN,
        )
    if spec.get("nodeSelector") is not None:
        _validate_node_selector(errs, "spec.nodeSelector", spec["nodeSelector"])
    for flag in ("allNodes", "perDeviceNodeSelection"):
        if spec.get(flag) is not None and spec.get(flag) is not True:
            errs.invalid(f"spec.{flag}", spec.get(flag), "must be true")
    per_device_nodes = spec.get("perDeviceNodeSelection") is True

    devices = _list(errs, "spec.devices", spec.get("devices"))
    limit = (
        RESOURCE_SLICE_MAX_DEVICES_WITH_ADVANCED_FEATURES
        if any(_has_advanced_features(d) for d in devices)
        else RESOURCE_SLICE_MAX_DEVICES
    )
    if len(devices) > limit:
        errs.too_many("spec.devices", len(devices), limit)
    names: set[str] = set()
    for i, device in enumerate(devices):
        _validate_device(errs, f"spec.devices[{i}]", device, per_device_nodes)
        name = device.get("name") if isinstance(device, dict) else None
        if isinstance(name, str) and name:
            if name in names:
                errs.duplicate(f"spec.devices[{i}].name", name)
            names.add(name)

    counter_sets = _list(errs, "spec.sharedCounters", spec.get("sharedCounters"))
    if counter_sets and devices:
        errs.invalid(
            "spec",
            "{`devices`, `sharedCounters`}",
            "only one of `devices` or `sharedCounters` may be set",
        )
    if len(counter_sets) > RESOURCE_SLICE_MAX_COUNTER_SETS:
        errs.too_many("spec.sharedCounters", len(counter_sets), RESOURCE_SLICE_MAX_COUNTER_SETS)
    set_names: set[str] = set()
    for i, counter_set in enumerate(counter_sets):
        cpath = f"spec.sharedCounters[{i}]"
        counter_set = _map(errs, cpath, counter_set)
        name = counter_set.get("name")
        _validate_dns_label(errs, f"{cpath}.name", name)
        if isinstance(name, str) and name:
            if name in set_names:
                errs.duplicate(f"{cpath}.name", name)
            set_names.add(name)
        _validate_counters(
            errs,
            f"{cpath}.counters",
            counter_set.get("counters"),
            RESOURCE_SLICE_MAX_COUNTERS_PER_COUNTER_SET,
        )

    if old is not None:
        old_spec = old.get("spec", {})
        for path, new_value, old_value in (
            ("spec.driver", spec.get("driver"), old_spec.get("driver")),
            ("spec.pool.name", pool_name, old_spec.get("pool", {}).get("name")),
            ("spec.nodeName", spec.get("nodeName"), old_spec.get("nodeName")),
        ):
            if new_value != old_value:
                errs.invalid(path, new_value, "field is immutable")
    return errs.causes


def _validate_tolerations(errs: Errors, path: str, tolerations: Any) -> None:
    items = _list(errs, path, tolerations)
    if len(items) > DEVICE_TOLERATIONS_MAX_LENGTH:
        errs.too_many(path, len(items), DEVICE_TOLERATIONS_MAX_LENGTH)
    for i, tol in enumerate(items):
        tpath = f"{path}[{i}]"
        tol = _map(errs, tpath, tol)
        key = tol.get("key")
        if key and not valid_label_key(key):
            errs.invalid(f"{tpath}.key", key, "must be a valid label key")
        operator = tol.get("operator", "Equal")
        if operator not in TOLERATION_OPERATORS:
            errs.not_supported(f"{tpath}.operator", operator, TOLERATION_OPERATORS)
        if operator == "Exists" and tol.get("value"):
            errs.invalid(
                f"{tpath}.value",
                tol.get("value"),
                "value must be empty when `operator` is 'Exists'",
            )
        effect = tol.get("effect")
        if effect and effect not in DEVICE_TAINT_EFFECTS:
            errs.not_supported(f"{tpath}.effect", effect, DEVICE_TAINT_EFFECTS)


def _validate_exact_request(errs: Errors, path: str, req: JsonObject) -> None:
    if not req.get("deviceClassName"):
        errs.required(f"{path}.deviceClassName")
    elif not is_dns_subdomain(req["deviceClassName"]):
        errs.invalid(f"{path}.deviceClassName", req["deviceClassName"], "must be a DNS subdomain")
    mode = req.get("allocationMode", "ExactCount")
    if mode not in ALLOCATION_MODES:
        errs.not_supported(f"{path}.allocationMode", mode, ALLOCATION_MODES)
    elif mode == "ExactCount":
        count = req.get("count", 1)
        if not _is_int(count) or count <= 0:
            errs.invalid(f"{path}.count", count, "must be greater than zero")
    elif req.get("count") not in (None, 0):
        errs.invalid(
            f"{path}.count", req.get("count"), "must not be specified when allocationMode is 'All'"
        )
    selectors = _list(errs, f"{path}.selectors", req.get("selectors"))
    if len(selectors) > DEVICE_SELECTORS_MAX_SIZE:
        errs.too_many(f"{path}.selectors", len(selectors), DEVICE_SELECTORS_MAX_SIZE)
    for i, sel in enumerate(selectors):
        expr = sel.get("cel", {}).get("expression") if isinstance(sel, dict) else None
        if not expr:
            errs.required(f"{path}.selectors[{i}].cel.expression")
    _validate_tolerations(errs, f"{path}.tolerations", req.get("tolerations"))


def _validate_opaque(errs: Errors, path: str, opaque: Any) -> None:
    opaque = _map(errs, path, opaque)
    _validate_driver_name(errs, f"{path}.driver", opaque.get("driver"))
    params = opaque.get("parameters")
    if params is None:
        errs.required(f"{path}.parameters")
    elif not isinstance(params, dict):
        errs.invalid(
            f"{path}.parameters", "<value omitted>", "parameters must be a valid JSON object"
        )
    elif len(json.dumps(params, separators=(",", ":"))) > OPAQUE_PARAMETERS_MAX_LENGTH:
        errs.too_long(f"{path}.parameters", OPAQUE_PARAMETERS_MAX_LENGTH)


def _validate_claim_spec(errs: Errors, spec: JsonObject) -> None:
    devices = _map(errs, "spec.devices", spec.get("devices"))
    requests = _list(errs, "spec.devices.requests", devices.get("requests"))
    if len(requests) > RESOURCE_CLAIM_MAX_REQUESTS:
        errs.too_many("spec.devices.requests", len(requests), RESOURCE_CLAIM_MAX_REQUESTS)
    names: set[str] = set()
    for i, req in enumerate(requests):
        rpath = f"spec.devices.requests[{i}]"
        req = _map(errs, rpath, req)
        _validate_dns_label(errs, f"{rpath}.name", req.get("name"))
        if isinstance(req.get("name"), str):
            if req["name"] in names:
                errs.duplicate(f"{rpath}.name", req["name"])
            names.add(req["name"])
        exactly, first = req.get("exactly"), req.get("firstAvailable")
        if exactly is None and not first:
            errs.required(rpath, "exactly one of `exactly` or `firstAvailable` is required")
        elif exactly is not None and first:
            errs.invalid(
                rpath,
                "{`exactly`, `firstAvailable`}",
                "exactly one of `exactly` or `firstAvailable` is required, "
                "but multiple fields are set",
            )
        if exactly is not None:
            _validate_exact_request(
                errs, f"{rpath}.exactly", _map(errs, f"{rpath}.exactly", exactly)
            )
        subs = _list(errs, f"{rpath}.firstAvailable", first)
        if len(subs) > FIRST_AVAILABLE_DEVICE_REQUEST_MAX_SIZE:
            errs.too_many(
                f"{rpath}.firstAvailable", len(subs), FIRST_AVAILABLE_DEVICE_REQUEST_MAX_SIZE
            )
        sub_names: set[str] = set()
        for j, sub in enumerate(subs):
            spath = f"{rpath}.firstAvailable[{j}]"
            sub = _map(errs, spath, sub)
            _validate_dns_label(errs, f"{spath}.name", sub.get("name"))
            if isinstance(sub.get("name"), str):
                if sub["name"] in sub_names:
                    errs.duplicate(f"{spath}.name", sub["name"])
                sub_names.add(sub["name"])
            _validate_exact_request(errs, spath, sub)
    constraints = _list(errs, "spec.devices.constraints", devices.get("constraints"))
    if len(constraints) > DEVICE_CONSTRAINTS_MAX_SIZE:
        errs.too_many("spec.devices.constraints", len(constraints), DEVICE_CONSTRAINTS_MAX_SIZE)
    for i, constraint in enumerate(constraints):
        attr = constraint.get("matchAttribute") if isinstance(constraint, dict) else None
        if attr:
            _validate_qualified_name(errs, f"spec.devices.constraints[{i}].matchAttribute", attr)
    configs = _list(errs, "spec.devices.config", devices.get("config"))
    if len(configs) > DEVICE_CONFIG_MAX_SIZE:
        errs.too_many("spec.devices.config", len(configs), DEVICE_CONFIG_MAX_SIZE)
    for i, cfg in enumerate(configs):
        cfg = _map(errs, f"spec.devices.config[{i}]", cfg)
        if cfg.get("opaque") is None:
            errs.required(f"spec.devices.config[{i}].opaque")
        else:
            _validate_opaque(errs, f"spec.devices.config[{i}].opaque", cfg["opaque"])


def _validate_claim_status(errs: Errors, status: JsonObject) -> None:
    allocation = status.get("allocation")
    allocated: set[tuple[Any, Any, Any]] = set()
    if allocation is not None:
        devices = _map(
            errs,
            "status.allocation.devices",
            _map(errs, "status.allocation", allocation).get("devices"),
        )
        results = _list(errs, "status.allocation.devices.results", devices.get("results"))
        if len(results) > ALLOCATION_RESULTS_MAX_SIZE:
            errs.too_many(
                "status.allocation.devices.results", len(results), ALLOCATION_RESULTS_MAX_SIZE
            )
        for i, result in enumerate(results):
            rpath = f"status.allocation.devices.results[{i}]"
            result = _map(errs, rpath, result)
            if not result.get("request"):
                errs.required(f"{rpath}.request")
            _validate_driver_name(errs, f"{rpath}.driver", result.get("driver"))
            if not result.get("pool"):
                errs.required(f"{rpath}.pool")
            _validate_dns_label(errs, f"{rpath}.device", result.get("device"))
            allocated.add((result.get("driver"), result.get("pool"), result.get("device")))
        configs = _list(errs, "status.allocation.devices.config", devices.get("config"))
        if len(configs) > ALLOCATION_CONFIG_MAX_SIZE:
            errs.too_many(
                "status.allocation.devices.config", len(configs), ALLOCATION_CONFIG_MAX_SIZE
            )
        for i, cfg in enumerate(configs):
            cpath = f"status.allocation.devices.config[{i}]"
            cfg = _map(errs, cpath, cfg)
            if cfg.get("source") not in ("FromClass", "FromClaim"):
                errs.not_supported(f"{cpath}.source", cfg.get("source"), ("FromClass", "FromClaim"))
            _validate_opaque(errs, f"{cpath}.opaque", cfg.get("opaque"))
    reserved = _list(errs, "status.reservedFor", status.get("reservedFor"))
    if len(reserved) > RESOURCE_CLAIM_RESERVED_FOR_MAX_SIZE:
        errs.too_many("status.reservedFor", len(reserved), RESOURCE_CLAIM_RESERVED_FOR_MAX_SIZE)
    uids: set[str] = set()
    for i, ref in enumerate(reserved):
        rpath = f"status.reservedFor[{i}]"
        ref = _map(errs, rpath, ref)
        for required in ("resource", "name", "uid"):
            if not ref.get(required):
                errs.required(f"{rpath}.{required}")
        if ref.get("uid") in uids:
            errs.duplicate(f"{rpath}.uid", ref.get("uid"))
        uids.add(ref.get("uid", ""))
    seen: set[tuple[Any, ...]] = set()
    for i, dev in enumerate(_list(errs, "status.devices", status.get("devices"))):
        dpath = f"status.devices[{i}]"
        dev = _map(errs, dpath, dev)
        _validate_driver_name(errs, f"{dpath}.driver", dev.get("driver"))
        if not dev.get("pool"):
            errs.required(f"{dpath}.pool")
        _validate_dns_label(errs, f"{dpath}.device", dev.get("device"))
        key = (dev.get("driver"), dev.get("pool"), dev.get("device"), dev.get("shareID"))
        if key in seen:
            errs.duplicate(dpath, {"driver": key[0], "pool": key[1], "device": key[2]})
        seen.add(key)
        if key[:3] not in allocated:
            errs.invalid(
                dpath,
                {"driver": key[0], "pool": key[1], "device": key[2]},
                "must be an allocated device in the claim",
            )
        conditions = _list(errs, f"{dpath}.conditions", dev.get("conditions"))
        if len(conditions) > DEVICE_STATUS_MAX_CONDITIONS:
            errs.too_many(f"{dpath}.conditions", len(conditions), DEVICE_STATUS_MAX_CONDITIONS)
        for j, cond in enumerate(conditions):
            cpath = f"{dpath}.conditions[{j}]"
            cond = _map(errs, cpath, cond)
            for key_name in ("type", "status", "lastTransitionTime", "reason"):
                if not cond.get(key_name):
                    errs.required(f"{cpath}.{key_name}")
            _validate_condition_text(errs, cpath, cond)
            if cond.get("status") and cond["status"] not in ("True", "False", "Unknown"):
                errs.not_supported(f"{cpath}.status", cond["status"], ("True", "False", "Unknown"))
        data = dev.get("data")
        if data is not None and (
            not isinstance(data, dict)
            or len(json.dumps(data, separators=(",", ":"))) > DEVICE_STATUS_DATA_MAX_LENGTH
        ):
            errs.too_long(f"{dpath}.data", DEVICE_STATUS_DATA_MAX_LENGTH)
        net = _map(errs, f"{dpath}.networkData", dev.get("networkData"))
        if len(net.get("interfaceName", "")) > NETWORK_DEVICE_DATA_INTERFACE_NAME_MAX_LENGTH:
            errs.too_long(
                f"{dpath}.networkData.interfaceName", NETWORK_DEVICE_DATA_INTERFACE_NAME_MAX_LENGTH
            )
        if len(net.get("hardwareAddress", "")) > NETWORK_DEVICE_DATA_HARDWARE_ADDRESS_MAX_LENGTH:
            errs.too_long(
                f"{dpath}.networkData.hardwareAddress",
                NETWORK_DEVICE_DATA_HARDWARE_ADDRESS_MAX_LENGTH,
            )
        ips = _list(errs, f"{dpath}.networkData.ips", net.get("ips"))
        if len(ips) > NETWORK_DEVICE_DATA_MAX_IPS:
            errs.too_many(f"{dpath}.networkData.ips", len(ips), NETWORK_DEVICE_DATA_MAX_IPS)
        if len(set(map(str, ips))) != len(ips):
            errs.invalid(f"{dpath}.networkData.ips", ips, "must not contain duplicates")


# metav1validation.ValidateConditions: what a metav1.Condition's fields may hold.
CONDITION_REASON_RE = re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
CONDITION_REASON_MAX_LENGTH = 1024
CONDITION_MESSAGE_MAX_LENGTH = 32768


def _validate_condition_text(errs: Errors, path: str, cond: JsonObject) -> None:
    type_ = cond.get("type")
    if type_ and (not isinstance(type_, str) or not valid_label_key(type_)):
        errs.invalid(f"{path}.type", type_, "must be a qualified name")
    reason = cond.get("reason")
    if reason:
        if not isinstance(reason, str) or not CONDITION_REASON_RE.match(reason):
            errs.invalid(
                f"{path}.reason",
                reason,
                "a condition reason must start with alphabetic character, optionally followed "
                "by a string of alphanumeric characters or '_,:', and must end with an "
                "alphanumeric character or '_'",
            )
        elif len(reason) > CONDITION_REASON_MAX_LENGTH:
            errs.too_long(f"{path}.reason", CONDITION_REASON_MAX_LENGTH)
    message = cond.get("message")
    if isinstance(message, str) and len(message) > CONDITION_MESSAGE_MAX_LENGTH:
        errs.too_long(f"{path}.message", CONDITION_MESSAGE_MAX_LENGTH)


def validate_resource_claim(obj: JsonObject, old: JsonObject | None) -> list[Cause]:
    errs = Errors()
    validate_object_name(errs, obj)
    spec = _map(errs, "spec", obj.get("spec"))
    _validate_claim_spec(errs, spec)
    _validate_claim_status(errs, _map(errs, "status", obj.get("status")))
    if old is not None and spec != old.get("spec", {}):
        errs.invalid("spec", "<value omitted>", "field is immutable")
    return errs.causes


def validate_device_class(obj: JsonObject, old: JsonObject | None) -> list[Cause]:
    errs = Errors()
    validate_object_name(errs, obj)
    spec = _map(errs, "spec", obj.get("spec"))
    selectors = _list(errs, "spec.selectors", spec.get("selectors"))
    if len(selectors) > DEVICE_SELECTORS_MAX_SIZE:
        errs.too_many("spec.selectors", len(selectors), DEVICE_SELECTORS_MAX_SIZE)
    configs = _list(errs, "spec.config", spec.get("config"))
    if len(configs) > DEVICE_CONFIG_MAX_SIZE:
        errs.too_many("spec.config", len(configs), DEVICE_CONFIG_MAX_SIZE)
    for i, cfg in enumerate(configs):
        _validate_opaque(
            errs, f"spec.config[{i}].opaque", _map(errs, f"spec.config[{i}]", cfg).get("opaque")
        )
    return errs.causes


def validate_node(obj: JsonObject, old: JsonObject | None) -> list[Cause]:
    errs = Errors()
    validate_object_name(errs, obj)
    return errs.causes


def _default_exact(req: JsonObject) -> None:
    req.setdefault("allocationMode", "ExactCount")
    if req["allocationMode"] == "ExactCount":
        req.setdefault("count", 1)
    for tol in req.get("tolerations") or []:
        if isinstance(tol, dict):
            tol.setdefault("operator", "Equal")


def default_resource_claim(obj: JsonObject) -> None:
    """The defaults the server fills into a claim's requests (allocationMode, count, operator)."""
    devices = obj.get("spec", {}).get("devices")
    if not isinstance(devices, dict):
        return
    for req in devices.get("requests") or []:
        if not isinstance(req, dict):
            continue
        if isinstance(req.get("exactly"), dict):
            _default_exact(req["exactly"])
        for sub in req.get("firstAvailable") or []:
            if isinstance(sub, dict):
                _default_exact(sub)
