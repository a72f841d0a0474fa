"""The real kube-apiserver accepts every ResourceSlice we would publish.

For every shipped fake topology, plain, with --partitionable-devices and with
--dynamic-mig (every placement of every MIG-mode GPU against its counters),
`dra-driver slices` output is created with server-side dry run: the API
server's own validation (names, attribute and capacity limits, counter sets,
per-slice device limits) judges it, nothing is stored.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

import pytest

from dra_driver.testing.fakenvml import topology_names

from .conftest import Cluster

LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+ (DEBUG|INFO|WARNING) ")


MODES = {"plain": [], "partitionable": ["--partitionable-devices"], "dynamic": ["--dynamic-mig"]}


def published(topology: str, node: str, mode: str) -> list[dict[str, Any]]:
    cmd = [
        sys.executable,
        "-m",
        "dra_driver",
        "slices",
        "--fake-nvml",
        topology,
        "--node-name",
        node,
        "-o",
        "json",
    ]
    cmd += MODES[mode]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    # build_slices' problems (devices it cannot publish) are printed as plain lines;
    # log records (e.g. a100's "MIG mode change pending" warning) are not problems.
    problems = [ln for ln in proc.stderr.splitlines() if ln.strip() and not LOG_RECORD.match(ln)]
    assert not problems, f"{topology}: unpublishable devices: {problems}"
    items: list[dict[str, Any]] = json.loads(proc.stdout)["items"]
    return items


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("topology", topology_names())
def test_apiserver_accepts_our_slices(cluster: Cluster, topology: str, mode: str) -> None:
    from kubernetes.client.exceptions import ApiException

    slices = published(topology, "validation-node", mode)
    assert slices, f"{topology}: nothing to publish"
    res = cluster.resource("resource.k8s.io/v1", "ResourceSlice")
    for s in slices:
        try:
            created = res.create(body=s, dry_run="All")
        except ApiException as e:
            pytest.fail(
                f"{topology} ({mode}): the API server rejected "
                f"{s['metadata'].get('generateName')}: {e.status} {e.body}"
            )
        # What the server stored would equal what we sent: no field dropped
        # (a field the server does not know is silently pruned, not rejected).
        assert created.to_dict()["spec"] == _with_server_defaults(
            s["spec"], created.to_dict()["spec"]
        )


def _with_server_defaults(sent: dict[str, Any], got: dict[str, Any]) -> dict[str, Any]:
    """sent, plus only the keys the server adds as defaults (never removes any)."""

    def merge(a: Any, b: Any) -> Any:
        if isinstance(a, dict) and isinstance(b, dict):
            return {
                **{k: b[k] for k in b.keys() - a.keys()},
                **{k: merge(v, b.get(k)) for k, v in a.items()},
            }
        if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            return [merge(x, y) for x, y in zip(a, b, strict=True)]
        return a

    return dict(merge(sent, got))
