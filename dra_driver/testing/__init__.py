"""The simulation kit: a whole GPU node without a GPU, a cluster or a kubelet.

A client of the driver, never imported by it (an import contract in
pyproject.toml says so). Tests, benchmarks and ``dra-driver demo`` import it
from here; each name loads its module on first use, so ``import
dra_driver.testing`` stays cheap (no gRPC, no kubernetes client).

- ``FakeNode``, ``FaultInjector``, ``load_topology``, ``library_path``: the fake
  libnvidia-ml (``fakenvml``) and fault injection;
- ``SimHost``, ``populate_host``, ``build_host``: a simulated host tree
  (``simhost``; also ``python -m dra_driver.testing.simhost``);
- ``claim_object``, ``claim_uid``: ResourceClaims as the API returns them;
  ``MemoryClaimSource``: claims held in memory, for the preparer (``claims``);
- ``gpu_record``, ``mig_record``, ``mig_profile``, ``snapshot``,
  ``node_snapshot``, ``make_inventory``: NVML records (``records``);
- ``ApiServerDouble``: kube-apiserver for resource.k8s.io (``apiserver``);
- ``DraClient``, ``register``, ``wait_for_socket``: the kubelet's side (``kubelet``);
- ``PluginProcess``: a ``dra-driver run`` child process (``plugin``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# name -> (module, attribute)
_EXPORTS: dict[str, tuple[str, str]] = {
    "ApiServerDouble": ("apiserver", "ApiServerDouble"),
    "DraClient": ("kubelet", "DraClient"),
    "FakeNode": ("fakenvml", "FakeNode"),
    "MemoryClaimSource": ("claims", "MemoryClaimSource"),
    "FakeNvmlError": ("fakenvml", "FakeNvmlError"),
    "FaultInjector": ("fakenvml", "FaultInjector"),
    "PluginExited": ("plugin", "PluginExited"),
    "PluginProcess": ("plugin", "PluginProcess"),
    "PluginRegistration": ("kubelet", "PluginRegistration"),
    "SimHost": ("simhost", "SimHost"),
    "SimHostError": ("simhost", "SimHostError"),
    "build_host": ("simhost", "build"),
    "claim_object": ("simhost", "claim_object"),
    "claim_uid": ("simhost", "claim_uid"),
    "gpu_record": ("records", "gpu_record"),
    "library_path": ("fakenvml", "library_path"),
    "load_topology": ("fakenvml", "load_topology"),
    "make_inventory": ("simhost", "make_inventory"),
    "mig_profile": ("records", "mig_profile"),
    "mig_record": ("records", "mig_record"),
    "node_snapshot": ("records", "node_snapshot"),
    "populate_host": ("simhost", "populate_host"),
    "register": ("kubelet", "register"),
    "snapshot": ("records", "snapshot"),
    "wait_for_socket": ("kubelet", "wait_for_socket"),
}

__all__ = [
    "ApiServerDouble",
    "DraClient",
    "FakeNode",
    "FakeNvmlError",
    "FaultInjector",
    "MemoryClaimSource",
    "PluginExited",
    "PluginProcess",
    "PluginRegistration",
    "SimHost",
    "SimHostError",
    "build_host",
    "claim_object",
    "claim_uid",
    "gpu_record",
    "library_path",
    "load_topology",
    "make_inventory",
    "mig_profile",
    "mig_record",
    "node_snapshot",
    "populate_host",
    "register",
    "snapshot",
    "wait_for_socket",
]

if TYPE_CHECKING:
    from .apiserver import ApiServerDouble
    from .claims import MemoryClaimSource
    from .fakenvml import FakeNode, FakeNvmlError, FaultInjector, library_path, load_topology
    from .kubelet import DraClient, PluginRegistration, register, wait_for_socket
    from .plugin import PluginExited, PluginProcess
    from .records import gpu_record, mig_profile, mig_record, node_snapshot, snapshot
    from .simhost import (
        SimHost,
        SimHostError,
        claim_object,
        claim_uid,
        make_inventory,
        populate_host,
    )
    from .simhost import build as build_host


def __getattr__(name: str) -> Any:
    try:
        module, attr = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f".{module}", __name__), attr)
    globals()[name] = value  # once loaded, a plain module attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
