"""API server access through the official kubernetes client.

One place decides how the driver finds its API server (in-cluster service
account, or a kubeconfig by flag/env), so the publisher and the preparer
share one configured ApiClient. Calls through it block: run them with
asyncio.to_thread.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from typing import Any

from kubernetes import client, config

log = logging.getLogger(__name__)

RESOURCE_GROUP = "resource.k8s.io"
RESOURCE_VERSION = "v1"


class NoApiServerConfigError(RuntimeError):
    """Neither a kubeconfig nor an in-cluster service account is available."""


class ApiServerConfigError(RuntimeError):
    """The kubeconfig (or the pod's service account) was given but cannot be used."""


def load_api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """Build an ApiClient from a kubeconfig path, or from the in-cluster environment."""
    cfg = client.Configuration()
    if kubeconfig:
        paths = [p for p in kubeconfig.split(os.pathsep) if p]
        if not any(os.path.isfile(p) for p in paths):
            raise ApiServerConfigError(f"cannot use kubeconfig {kubeconfig}: no such file")
        try:
            config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        except Exception as e:  # missing file, bad YAML, no current context, bad certificate
            raise ApiServerConfigError(f"cannot use kubeconfig {kubeconfig}: {_one_line(e)}") from e
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        try:
            config.load_incluster_config(client_configuration=cfg)
        except Exception as e:
            raise ApiServerConfigError(
                f"cannot use the pod's service account: {_one_line(e)}"
            ) from e
    else:
        raise NoApiServerConfigError(
            "no API server: pass --kubeconfig (env KUBECONFIG) or run in a pod"
        )
    # Fail fast on a dead API server instead of hanging the caller's worker
    # thread; the retry policy belongs to the caller.
    cfg.retries = 0
    api = client.ApiClient(cfg)
    api.user_agent = "dra-driver-gpu/0.1"
    log.debug("API server %s", cfg.host)
    return api


def _one_line(e: BaseException) -> str:
    """An error as one line: YAML and OS errors span several."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return " ".join(str(e).split()) or type(e).__name__


def request_timeout(seconds: float = 10.0) -> tuple[float, float]:
    """(connect, read) timeout for one request through the generated client."""
    return (min(seconds, 5.0), seconds)


def parse_server_version(doc: Mapping[str, Any]) -> tuple[int, int] | None:
    """(major, minor) of a /version answer; None when it says nothing usable.

    Managed clusters write minors like "35+"; gitVersion ("v1.35.2-gke.1") is the fallback.
    """
    major = re.match(r"\d+", str(doc.get("major") or ""))
    minor = re.match(r"\d+", str(doc.get("minor") or ""))
    if major and minor:
        return int(major.group()), int(minor.group())
    git = re.match(r"v?(\d+)\.(\d+)", str(doc.get("gitVersion") or ""))
    return (int(git.group(1)), int(git.group(2))) if git else None
