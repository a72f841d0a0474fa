"""`dra-driver cleanup`: delete this driver's ResourceSlices for this node (uninstall).

The plugin never deletes its slices on shutdown (a restart must not make the
node's devices vanish from the scheduler); this is the explicit way to.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from .. import settings as settings_mod
from .common import load_settings

if TYPE_CHECKING:  # the kubernetes client costs ~0.25 s to import: only when this command runs
    from ..slices.api import SliceApi


def register(sub: Any) -> None:
    p = sub.add_parser(
        "cleanup",
        help="delete this driver's ResourceSlices for this node (uninstall)",
        description="Delete the ResourceSlices this driver published for this node, as after "
        "an uninstall. The plugin itself leaves them in place when it stops, so that a "
        "restart does not make the node's devices vanish from the scheduler.",
    )
    settings_mod.add_arguments(p, settings_mod.CLEANUP)
    p.set_defaults(func=run)


def delete_node_slices(api: SliceApi, driver: str, node_name: str) -> int:
    """Delete every slice of driver on node_name; returns how many there were.

    One DeleteCollection when the server (and RBAC) allows it, else one
    DELETE per slice; a slice already gone is fine.
    """
    from ..slices.api import ApiError, slice_field_selector

    selector = slice_field_selector(driver, node_name)
    items, _ = api.list_slices(selector)
    if not items:
        return 0
    try:
        api.delete_collection(selector)
    except ApiError as e:
        if e.status not in (403, 404, 405):
            raise
        items, _ = api.list_slices(selector)
        for obj in items:
            meta = obj["metadata"]
            api.delete_slice(meta["name"], meta.get("uid"), None)
    return len(items)


def run(args: argparse.Namespace) -> int:
    from ..k8s import ApiServerConfigError, NoApiServerConfigError, load_api_client
    from ..slices.api import ApiError, ApiUnreachable, SliceApi

    s = load_settings(args)
    try:
        api = SliceApi(load_api_client(s.kubeconfig))
        n = delete_node_slices(api, s.driver_name, s.node_name)
    except (NoApiServerConfigError, ApiServerConfigError) as e:
        print(f"dra-driver cleanup: {e}", file=sys.stderr)
        return 2
    except ApiError as e:
        print(
            f"dra-driver cleanup: the API server answered {e.status}: {e.message}",
            file=sys.stderr,
        )
        return 1
    except ApiUnreachable as e:
        print(f"dra-driver cleanup: cannot reach the API server: {e}", file=sys.stderr)
        return 1
    print(f"deleted {n} ResourceSlice(s) of {s.driver_name} on node {s.node_name}")
    return 0
