"""An HTTP test double of kube-apiserver for resource.k8s.io/v1 and core/v1 nodes.

No cluster can run where the tests and ``dra-driver demo`` run, so they point the
UNMODIFIED official ``kubernetes`` client at this server over real HTTP; the driver
cannot tell it from a kube-apiserver 1.36.

Why our own and not kmock: we looked at kmock 0.8 (``KubernetesEmulator``), the
closest maintained PyPI library. It answers ``resourceVersion: "..."`` in lists, has
no per-object revisions, so no 409 on a stale update, no watch resume from a revision
and no 410; no field or label selectors, no validation, no server-side apply, and it
pulls in aiohttp, attrs, yarl and jsonpatch. What a DRA driver must be tested against
is exactly those semantics, so extending kmock would mean replacing its core while
carrying its dependencies into the shipped package. This double is written on the
standard library (``ThreadingHTTPServer``, chunked watch streams) plus PyYAML,
which the driver already needs.

What it serves, faithfully to the real server:
- paths: ``/apis/resource.k8s.io/v1/{resourceslices,deviceclasses}``,
  ``/apis/resource.k8s.io/v1/[namespaces/{ns}/]resourceclaims[/{name}[/status]]``,
  ``/api/v1/nodes[/{name}[/status]]`` and discovery (``/api``, ``/apis``, ``/version``);
- verbs: create (generateName), get, list (limit/continue), watch (resume from a
  revision, 410 Expired when compacted, bookmarks, sendInitialEvents), update (409 on
  a stale resourceVersion), patch (merge, strategic treated as merge, JSON patch,
  server-side apply), delete (uid/resourceVersion preconditions, finalizers) and
  deletecollection; field selectors (only the labels the real server registers) and
  label selectors; ``Status`` error bodies; the ResourceSlice and ResourceClaim
  validation rules of 1.36 as 422 Invalid; feature-gated field dropping.
- test controls: latency, scripted 4xx/5xx/429 failures, dropped watches, going down
  and coming back, dropped fields, and a request log; in-process through
  ``ApiServerDouble`` and over HTTP under ``/_test/`` for a standalone instance
  (``python -m dra_driver.testing.apiserver``).
"""

from .errors import ApiError
from .faults import FailureRule, Faults, RequestLog, RequestRecord
from .server import KUBERNETES_VERSION, ApiServerDouble, parse_route
from .store import DEFAULT_FEATURE_GATES, FEATURE_GATED_FIELDS, RESOURCES, Store

__all__ = [
    "DEFAULT_FEATURE_GATES",
    "FEATURE_GATED_FIELDS",
    "KUBERNETES_VERSION",
    "RESOURCES",
    "ApiError",
    "ApiServerDouble",
    "FailureRule",
    "Faults",
    "RequestLog",
    "RequestRecord",
    "Store",
    "parse_route",
]
