"""Opaque claim configuration: `resource.nvidia.com/v1beta1` GpuConfig and MigDeviceConfig.

Decoded strictly, as NVIDIA's driver does for claims: an unknown field, a
wrong type or a bad value is an error that names the field, so a typo in a
ResourceClaim fails that claim loudly instead of being silently ignored.
Precedence follows NVIDIA's GetOpaqueDeviceConfigs: class configs, then claim
configs, the later one winning; a config naming no requests applies to all
of them; a config of the wrong kind for a device is an error when it names
the request explicitly and is skipped otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import (
    ROUND_CEILING,
    Context,
    Decimal,
    DecimalException,
    InvalidOperation,
    Overflow,
    localcontext,
)
from enum import StrEnum
from typing import Any, TypeVar

API_VERSION = "resource.nvidia.com/v1beta1"
MIN_PINNED_MEMORY = 1024 * 1024  # NVIDIA rejects MPS limits under 1 MiB ("value set too low")


class ConfigError(ValueError):
    """A claim's opaque configuration is invalid; the message names the field."""


class SharingStrategy(StrEnum):
    TIME_SLICING = "TimeSlicing"
    MPS = "MPS"


class TimeSliceInterval(StrEnum):
    DEFAULT = "Default"
    SHORT = "Short"
    MEDIUM = "Medium"
    LONG = "Long"


@dataclass(frozen=True)
class TimeSlicingConfig:
    interval: TimeSliceInterval = TimeSliceInterval.DEFAULT


@dataclass(frozen=True)
class MpsConfig:
    default_active_thread_percentage: int | None = None
    default_pinned_device_memory_limit: int | None = None  # bytes
    # Keyed by device UUID or index, as NVIDIA's API allows; values in bytes.
    default_per_device_pinned_memory_limit: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Sharing:
    strategy: SharingStrategy
    time_slicing: TimeSlicingConfig | None = None
    mps: MpsConfig | None = None


@dataclass(frozen=True)
class GpuConfig:
    sharing: Sharing | None = None
    kind: str = "GpuConfig"


@dataclass(frozen=True)
class MigDeviceConfig:
    sharing: Sharing | None = None
    kind: str = "MigDeviceConfig"


DeviceConfig = GpuConfig | MigDeviceConfig


@dataclass(frozen=True)
class OpaqueConfig:
    """One decoded config entry of a claim's allocation, with where it came from."""

    index: int  # position in status.allocation.devices.config
    source: str  # FromClass | FromClaim
    requests: tuple[str, ...]
    config: DeviceConfig

    @property
    def where(self) -> str:
        req = f", requests {list(self.requests)}" if self.requests else ""
        return f"config[{self.index}] ({self.source}{req})"


# --- quantities --------------------------------------------------------------------------

_QUANTITY = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))([a-zA-Z]*|[eE][+-]?[0-9]+)\Z")
# Bounds that keep parsing O(1): Kubernetes quantities fit in an int64 anyway.
MAX_QUANTITY = 2**63 - 1
MAX_QUANTITY_CHARS = 64
MAX_EXPONENT = 64
_PRECISION = MAX_QUANTITY_CHARS + 2 * MAX_EXPONENT  # exact for every text that passes the bounds
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}


def parse_quantity(value: Any, where: str) -> int:
    """A Kubernetes resource.Quantity (string or JSON number) as an integer, rounded up.

    Opaque parameters reach us unvalidated, so the text, the exponent and the
    result are bounded before any arithmetic: "9e999999" would otherwise build
    a multi-million-bit integer while holding the GIL, stalling every claim.
    """
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConfigError(f"{where}: must be a quantity such as '10Gi', got {_type(value)}")
    if isinstance(value, int) and value.bit_length() > MAX_QUANTITY.bit_length():
        raise ConfigError(f"{where}: quantity out of range (at most {MAX_QUANTITY})")
    if isinstance(value, str) and len(value) > MAX_QUANTITY_CHARS:
        raise ConfigError(
            f"{where}: a quantity of {len(value)} characters is not a quantity "
            f"(at most {MAX_QUANTITY_CHARS}; e.g. '512Mi', '10Gi')"
        )
    text = str(value).strip()
    m = _QUANTITY.match(text)
    if not m:
        raise ConfigError(
            f"{where}: {text[:MAX_QUANTITY_CHARS]!r} is not a quantity (e.g. '512Mi', '10Gi')"
        )
    number, suffix = m.groups()
    if suffix not in _BINARY and suffix not in _DECIMAL:
        if suffix[:1] not in ("e", "E"):
            raise ConfigError(f"{where}: {text!r} has an unknown suffix {suffix!r}")
        digits = suffix[1:].lstrip("+-").lstrip("0")
        if len(digits) > 3 or int(digits or "0") > MAX_EXPONENT:
            raise ConfigError(
                f"{where}: {text!r}: quantity exponent out of range (at most {MAX_EXPONENT})"
            )
    try:
        with localcontext(Context(prec=_PRECISION, traps=[InvalidOperation, Overflow])):
            amount = Decimal(number)
            if suffix in _BINARY:
                amount *= _BINARY[suffix]
            elif suffix in _DECIMAL:
                amount *= _DECIMAL[suffix]
            else:
                amount = amount.scaleb(int(suffix[1:]))
            result = int(amount.to_integral_value(rounding=ROUND_CEILING))
    except DecimalException as e:
        raise ConfigError(f"{where}: {text!r} is not a quantity: {type(e).__name__}") from e
    if abs(result) > MAX_QUANTITY:
        raise ConfigError(f"{where}: {text!r}: quantity out of range (at most {MAX_QUANTITY})")
    return result


# --- strict decoding ---------------------------------------------------------------------


def _type(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(
        type(value), "number"
    )


def _show(text: str, limit: int = 64) -> str:
    """A user's value for an error message: as is when short and printable, else cut."""
    if len(text) <= limit and text.isprintable():
        return text
    return f"{text[:limit]!r}... ({len(text)} characters)"


def _object(value: Any, where: str, allowed: Sequence[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: must be an object, got {_type(value)}")
    for key in value:
        if key not in allowed:
            raise ConfigError(
                f"{where}.{_show(str(key))}: unknown field (allowed: {', '.join(allowed)})"
            )
    return {k: v for k, v in value.items() if v is not None}


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: must be a string, got {_type(value)}")
    return value


_E = TypeVar("_E", bound=StrEnum)


def _enum(cls: type[_E], value: Any, where: str) -> _E:
    text = _string(value, where)
    try:
        return cls(text)
    except ValueError:
        allowed = ", ".join(m.value for m in cls)
        raise ConfigError(f"{where}: {_show(repr(text))} is not one of {allowed}") from None


def _decode_mps(value: Any, where: str) -> MpsConfig:
    obj = _object(
        value,
        where,
        (
            "defaultActiveThreadPercentage",
            "defaultPinnedDeviceMemoryLimit",
            "defaultPerDevicePinnedMemoryLimit",
        ),
    )
    pct = obj.get("defaultActiveThreadPercentage")
    if pct is not None:
        w = f"{where}.defaultActiveThreadPercentage"
        if isinstance(pct, bool) or not isinstance(pct, int):
            raise ConfigError(f"{w}: must be an integer, got {_type(pct)}")
        if not 0 <= pct <= 100:
            raise ConfigError(f"{w}: must be between 0 and 100, got {pct}")
    limit = None
    if "defaultPinnedDeviceMemoryLimit" in obj:
        w = f"{where}.defaultPinnedDeviceMemoryLimit"
        raw_limit = obj["defaultPinnedDeviceMemoryLimit"]
        limit = parse_quantity(raw_limit, w)
        if limit < MIN_PINNED_MEMORY:
            raise ConfigError(f"{w}: must be at least 1Mi, got {_show(str(raw_limit))}")
    per_device: dict[str, int] = {}
    raw = obj.get("defaultPerDevicePinnedMemoryLimit")
    if raw is not None:
        w = f"{where}.defaultPerDevicePinnedMemoryLimit"
        if not isinstance(raw, dict):
            raise ConfigError(f"{w}: must be an object of device -> quantity, got {_type(raw)}")
        for key, q in raw.items():
            if not key:
                raise ConfigError(f"{w}: empty device key")
            v = parse_quantity(q, f"{w}[{_show(key)}]")
            if v < MIN_PINNED_MEMORY:
                raise ConfigError(f"{w}[{_show(key)}]: must be at least 1Mi, got {_show(str(q))}")
            per_device[key] = v
    return MpsConfig(pct, limit, per_device)


def _decode_sharing(value: Any, where: str, *, mig: bool) -> Sharing:
    fields = ("strategy", "mpsConfig") if mig else ("strategy", "timeSlicingConfig", "mpsConfig")
    obj = _object(value, where, fields)
    if "strategy" not in obj:
        raise ConfigError(f"{where}.strategy: required")
    strategy = _enum(SharingStrategy, obj["strategy"], f"{where}.strategy")
    ts = None
    if "timeSlicingConfig" in obj:
        w = f"{where}.timeSlicingConfig"
        if strategy is not SharingStrategy.TIME_SLICING:
            raise ConfigError(f"{w}: only valid with strategy TimeSlicing, not {strategy}")
        ts_obj = _object(obj["timeSlicingConfig"], w, ("interval",))
        ts = TimeSlicingConfig(
            _enum(TimeSliceInterval, ts_obj["interval"], f"{w}.interval")
            if "interval" in ts_obj
            else TimeSliceInterval.DEFAULT
        )
    elif strategy is SharingStrategy.TIME_SLICING and not mig:
        ts = TimeSlicingConfig()
    mps = None
    if "mpsConfig" in obj:
        w = f"{where}.mpsConfig"
        if strategy is not SharingStrategy.MPS:
            raise ConfigError(f"{w}: only valid with strategy MPS, not {strategy}")
        mps = _decode_mps(obj["mpsConfig"], w)
    elif strategy is SharingStrategy.MPS:
        mps = MpsConfig()
    return Sharing(strategy, ts, mps)


def decode_parameters(params: Any, where: str = "parameters") -> DeviceConfig:
    """Decode one opaque `parameters` object strictly."""
    if not isinstance(params, dict):
        raise ConfigError(f"{where}: must be an object, got {_type(params)}")
    api_version = params.get("apiVersion")
    kind = params.get("kind")
    if api_version != API_VERSION:
        raise ConfigError(
            f"{where}.apiVersion: {api_version!r} is not supported (want {API_VERSION})"
        )
    if kind == "GpuConfig":
        obj = _object(params, where, ("apiVersion", "kind", "sharing"))
        sharing = obj.get("sharing")
        return GpuConfig(
            _decode_sharing(sharing, f"{where}.sharing", mig=False) if sharing is not None else None
        )
    if kind == "MigDeviceConfig":
        obj = _object(params, where, ("apiVersion", "kind", "sharing"))
        sharing = obj.get("sharing")
        return MigDeviceConfig(
            _decode_sharing(sharing, f"{where}.sharing", mig=True) if sharing is not None else None
        )
    if kind == "VfioDeviceConfig":
        raise ConfigError(
            f"{where}.kind: VfioDeviceConfig needs GPU passthrough, "
            "which this driver does not support"
        )
    raise ConfigError(f"{where}.kind: {kind!r} is not one of GpuConfig, MigDeviceConfig")


def decode_configs(
    allocation_devices: Mapping[str, Any], driver: str, requests: Collection[str] | None = None
) -> list[OpaqueConfig]:
    """This driver's opaque configs of an allocation, lowest precedence first.

    With requests, a config that names requests but none of these is skipped
    undecoded: a claim pays only for the configs that can apply to it.
    """
    raw = allocation_devices.get("config") or []
    if not isinstance(raw, list):
        raise ConfigError("status.allocation.devices.config: must be an array")
    out: list[OpaqueConfig] = []
    for i, entry in enumerate(raw):
        where = f"config[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: must be an object")
        opaque = entry.get("opaque")
        if not isinstance(opaque, dict) or opaque.get("driver") != driver:
            continue  # another driver's config, or a structured one we do not own
        names = entry.get("requests") or []
        if not isinstance(names, list) or not all(isinstance(r, str) for r in names):
            raise ConfigError(f"{where}.requests: must be an array of strings")
        if names and requests is not None and not any(r in requests for r in names):
            continue
        source = entry.get("source") or "FromClaim"
        if not isinstance(source, str):
            raise ConfigError(f"{where}.source: must be a string")
        config = decode_parameters(opaque.get("parameters"), f"{where}.opaque.parameters")
        out.append(OpaqueConfig(i, source, tuple(names), config))
    # Class configs first, then claim configs; stable within each source.
    out.sort(key=lambda c: 0 if c.source == "FromClass" else 1)
    return out


def base_request(request: str) -> str:
    """ "gpu/sub" -> "gpu": the name containers and configs refer to."""
    return request.split("/", 1)[0]


def config_for(request: str, is_mig: bool, configs: Sequence[OpaqueConfig]) -> OpaqueConfig | None:
    """The config that applies to one allocation result, or None.

    Later configs win. A config that names the request but is the wrong kind
    for the device is an error; one that names no requests is skipped instead.
    """
    want = MigDeviceConfig if is_mig else GpuConfig
    for c in reversed(configs):
        if c.requests:
            if request not in c.requests and base_request(request) not in c.requests:
                continue
            if not isinstance(c.config, want):
                device = "a MIG device" if is_mig else "a full GPU"
                raise ConfigError(
                    f"{c.where}: cannot apply {c.config.kind} to request {request!r}, "
                    f"which was allocated {device}"
                )
            return c
        if isinstance(c.config, want):
            return c
    return None
