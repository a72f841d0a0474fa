"""HTTP front end of the API server double and its embedding API.

Built on ``http.server.ThreadingHTTPServer`` (one thread per connection, HTTP/1.1
keep-alive, chunked watch streams) so the package needs nothing beyond the standard
library and PyYAML, which the driver already depends on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import select
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from . import errors
from .errors import ApiError
from .faults import Faults, RequestLog, RequestRecord
from .selectors import field_matcher, label_matcher, parse_field_selector, parse_label_selector
from .store import (
    APPLY_PATCH,
    FEATURE_GATED_FIELDS,
    INITIAL_EVENTS_END_ANNOTATION,
    PATCH_TYPES,
    RESOURCES,
    ResourceType,
    Store,
    WatchClose,
    Watcher,
)

log = logging.getLogger(__name__)

JsonObject = dict[str, Any]

KUBERNETES_VERSION = {
    "major": "1",
    "minor": "36",
    "emulationMajor": "1",
    "emulationMinor": "36",
    "minCompatibilityMajor": "1",
    "minCompatibilityMinor": "35",
    "gitVersion": "v1.36.0",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2026-04-22T00:00:00Z",
    "goVersion": "go1.25.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}
WATCH_POLL_S = 0.2
DEFAULT_BOOKMARK_INTERVAL_S = 60.0
_FAULT_KEYS = frozenset(
    {"latency", "fail", "dropWatches", "down", "featureGates", "dropFields", "compact", "clear"}
)
_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


@dataclass(frozen=True)
class Route:
    resource: ResourceType
    namespace: str | None  # None: all namespaces (list/watch only) or cluster-scoped
    name: str
    subresource: str


def parse_route(path: str) -> Route | None:
    """Map a REST path to a resource, as kube-apiserver's installer lays them out."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        rest = parts[2:]
        group, version = "", "v1"
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace: str | None = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    if not rest or len(rest) > 3:
        return None
    resource = RESOURCES.get(rest[0])
    if resource is None or resource.group != group or resource.version != version:
        return None
    if namespace is not None and not resource.namespaced:
        return None
    name = rest[1] if len(rest) > 1 else ""
    if name and resource.namespaced and namespace is None:
        return None  # a namespaced object is only addressable under its namespace
    subresource = rest[2] if len(rest) > 2 else ""
    if subresource and (subresource != "status" or not resource.has_status):
        return None
    return Route(resource, namespace, name, subresource)


def _resource_list(group_version: str, group: str) -> JsonObject:
    resources: list[JsonObject] = []
    for r in RESOURCES.values():
        if r.group != group:
            continue
        entry: JsonObject = {
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": _VERBS,
        }
        if r.short_names:
            entry["shortNames"] = list(r.short_names)
        resources.append(entry)
        if r.has_status:
            resources.append(
                {
                    "name": f"{r.plural}/status",
                    "singularName": "",
                    "namespaced": r.namespaced,
                    "kind": r.kind,
                    "verbs": ["get", "patch", "update"],
                }
            )
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }


def _group_doc(group: str) -> JsonObject:
    gv = {"groupVersion": f"{group}/v1", "version": "v1"}
    return {"name": group, "versions": [gv], "preferredVersion": gv}


def _strip_type_meta(obj: JsonObject) -> JsonObject:
    """List items carry no apiVersion/kind on a real server; a driver must not expect them."""
    return {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}


def _list_doc(
    resource: ResourceType,
    items: list[JsonObject],
    rv: int,
    cont: str = "",
    remaining: int | None = None,
) -> JsonObject:
    meta: JsonObject = {"resourceVersion": str(rv)}
    if cont:
        meta["continue"] = cont
    if remaining is not None:
        meta["remainingItemCount"] = remaining
    return {
        "kind": f"{resource.kind}List",
        "apiVersion": resource.api_version,
        "metadata": meta,
        "items": [_strip_type_meta(i) for i in items],
    }


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], double: ApiServerDouble) -> None:
        self.double = double
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HttpServer
    server_version = "kube-apiserver-double"

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without this, Nagle and the
        # client's delayed ACK add ~40 ms to every keep-alive request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.double._track(self.connection, True)

    def finish(self) -> None:
        self.server.double._track(self.connection, False)
        with contextlib.suppress(OSError):
            super().finish()

    def handle_one_request(self) -> None:
        if self.server.double._down_mode == "reset":
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        super().handle_one_request()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # ---- plumbing ---------------------------------------------------------------------

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send_json(self, code: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_text(self, code: int, text: str) -> None:
        data = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _dispatch(self, method: str) -> None:
        double = self.server.double
        url = urllib.parse.urlsplit(self.path)
        query = {
            k: v[-1] for k, v in urllib.parse.parse_qs(url.query, keep_blank_values=True).items()
        }
        try:
            raw = self._read_body()
        except (OSError, ValueError):
            self.close_connection = True
            return
        if url.path.startswith("/_test/"):
            self._control(method, url.path, query, raw)
            return
        route = parse_route(url.path)
        verb = _verb(method, route, query)
        record = _Recorder(method, url.path, url.query, verb, route)
        headers: dict[str, str] = {}
        body: JsonObject | str
        try:
            latency = double.faults.latency
            if latency:
                time.sleep(latency)
            rule = double.faults.take(method, url.path)
            if rule is not None:
                raise errors.injected(rule.status, rule.retry_after)
            if route is None:
                status, body = self._non_resource(method, url.path)
            elif verb == "watch":
                double.requests.add(record.done(200))
                self._watch(route, query)
                return
            else:
                status, body = self._resource(method, verb, route, query, raw)
        except ApiError as err:
            status, body, headers = err.code, err.status(), err.headers
        except Exception:
            log.exception("API server double failed on %s %s", method, url.path)
            status = 500
            body = ApiError(
                500, "InternalError", "internal error in the API server double"
            ).status()
        # Record before answering, so a client that got its answer sees it in the log.
        double.requests.add(record.done(status))
        try:
            if isinstance(body, str):
                self._send_text(status, body)
            else:
                self._send_json(status, body, headers)
        except OSError as exc:
            log.debug("request %s %s aborted: %s", method, url.path, exc)
            self.close_connection = True

    def _non_resource(self, method: str, path: str) -> tuple[int, JsonObject | str]:
        double = self.server.double
        docs: dict[str, JsonObject] = {
            "/version": double.version_document(),
            "/api": {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{double.host}:{double.port}"}
                ],
            },
            "/api/v1": _resource_list("v1", ""),
            "/apis": {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [_group_doc("resource.k8s.io")],
            },
            "/apis/resource.k8s.io": {
                "kind": "APIGroup",
                "apiVersion": "v1",
                **_group_doc("resource.k8s.io"),
            },
            "/apis/resource.k8s.io/v1": _resource_list("resource.k8s.io/v1", "resource.k8s.io"),
        }
        trimmed = path.rstrip("/") or "/"
        if trimmed in ("/healthz", "/livez", "/readyz"):
            if method != "GET":
                raise errors.method_not_allowed(method)
            return 200, "ok"
        if trimmed in docs:
            if method != "GET":
                raise errors.method_not_allowed(method)
            return 200, docs[trimmed]
        raise errors.path_not_found()

    def _decode(self, raw: bytes, content_type: str) -> Any:
        if not raw:
            return None
        try:
            if content_type == APPLY_PATCH:
                return yaml.safe_load(raw)
            return json.loads(raw)
        except (ValueError, yaml.YAMLError) as exc:
            raise errors.bad_request(f"the request body could not be decoded: {exc}") from None

    def _resource(
        self, method: str, verb: str, route: Route, query: dict[str, str], raw: bytes
    ) -> tuple[int, Any]:
        store = self.server.double.store
        resource = route.resource
        ns = route.namespace or ""
        dry_run = query.get("dryRun") == "All"
        content_type = (
            self.headers.get("Content-Type", "application/json").split(";")[0].strip().lower()
        )
        if verb == "list":
            matcher = _matcher(resource, query)
            limit = _int_param(query, "limit")
            result = store.list_objects(
                resource, route.namespace, matcher, limit, query.get("continue", "")
            )
            return 200, _list_doc(
                resource,
                result.items,
                result.resource_version,
                result.continue_token,
                result.remaining,
            )
        if verb == "get":
            return 200, store.get(resource, ns, route.name)
        if verb == "create":
            if resource.namespaced and route.namespace is None:
                raise errors.method_not_allowed(method)
            return 201, store.create(resource, ns, self._decode(raw, content_type), dry_run=dry_run)
        if verb == "update":
            return 200, store.update(
                resource,
                ns,
                route.name,
                self._decode(raw, content_type),
                subresource=route.subresource,
                dry_run=dry_run,
            )
        if verb == "patch":
            if content_type not in PATCH_TYPES:
                raise errors.unsupported_media_type(content_type)
            obj = store.patch(
                resource,
                ns,
                route.name,
                content_type,
                self._decode(raw, content_type),
                subresource=route.subresource,
                field_manager=query.get("fieldManager", ""),
                dry_run=dry_run,
            )
            return 200, obj
        if verb == "delete":
            options = self._decode(raw, "application/json") or {}
            pre = options.get("preconditions") or {} if isinstance(options, dict) else {}
            dry_run = dry_run or "All" in (
                options.get("dryRun") or [] if isinstance(options, dict) else []
            )
            obj, deleted = store.delete(
                resource,
                ns,
                route.name,
                precondition_uid=pre.get("uid"),
                precondition_rv=pre.get("resourceVersion"),
                dry_run=dry_run,
            )
            if deleted and not resource.returns_deleted_object:
                return 200, {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "details": {
                        "name": route.name,
                        "group": resource.group,
                        "kind": resource.plural,
                        "uid": obj["metadata"]["uid"],
                    },
                }
            return 200, obj
        if verb == "deletecollection":
            if resource.namespaced and route.namespace is None:
                raise errors.method_not_allowed(method)
            matcher = _matcher(resource, query)
            items = store.delete_collection(resource, route.namespace, matcher, dry_run=dry_run)
            return 200, _list_doc(resource, items, store.resource_version)
        raise errors.method_not_allowed(method)

    # ---- watch ------------------------------------------------------------------------

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _event(self, type_: str, obj: JsonObject) -> None:
        self._write_chunk(
            json.dumps({"type": type_, "object": obj}, separators=(",", ":")).encode() + b"\n"
        )

    def _client_gone(self) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _watch(self, route: Route, query: dict[str, str]) -> None:
        double = self.server.double
        resource = route.resource
        matcher = _matcher(resource, query)
        send_initial = query.get("sendInitialEvents") == "true"
        bookmarks = query.get("allowWatchBookmarks") == "true"
        timeout = _int_param(query, "timeoutSeconds")
        expired: ApiError | None = None
        watcher: Watcher | None = None
        initial = 0
        try:
            watcher, _, initial = double.store.watch(
                resource, route.namespace, matcher, query.get("resourceVersion"), send_initial
            )
        except ApiError as err:
            if err.code != 410:
                raise
            expired = err
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        self.close_connection = True
        if watcher is None:
            assert expired is not None
            with contextlib.suppress(OSError):
                self._event("ERROR", expired.status())
                self._write_chunk(b"")
            return
        try:
            self._stream(watcher, resource, timeout, bookmarks, send_initial, initial)
        finally:
            double.store.unwatch(watcher)

    def _stream(
        self,
        watcher: Watcher,
        resource: ResourceType,
        timeout: int,
        bookmarks: bool,
        send_initial: bool,
        initial: int,
    ) -> None:
        double = self.server.double
        start = time.monotonic()
        deadline = start + timeout if timeout else None
        next_bookmark = start + double.bookmark_interval
        pending_initial = initial if send_initial else -1
        try:
            while True:
                if pending_initial == 0:
                    pending_initial = -1
                    if bookmarks:
                        self._bookmark(resource, initial_end=True)
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    self._write_chunk(b"")
                    return
                try:
                    item = watcher.queue.get(timeout=WATCH_POLL_S)
                except queue.Empty:
                    if double._stopping.is_set() or self._client_gone():
                        return
                    if bookmarks and time.monotonic() >= next_bookmark:
                        next_bookmark = time.monotonic() + double.bookmark_interval
                        self._bookmark(resource)
                    continue
                if isinstance(item, WatchClose):
                    self._close_watch(item.mode)
                    return
                type_, obj = item
                self._event(type_, obj)
                if pending_initial > 0:
                    pending_initial -= 1
        except OSError:
            return

    def _bookmark(self, resource: ResourceType, initial_end: bool = False) -> None:
        meta: JsonObject = {"resourceVersion": str(self.server.double.store.resource_version)}
        if initial_end:
            meta["annotations"] = {INITIAL_EVENTS_END_ANNOTATION: "true"}
        self._event(
            "BOOKMARK",
            {"kind": resource.kind, "apiVersion": resource.api_version, "metadata": meta},
        )

    def _close_watch(self, mode: str) -> None:
        if mode == "reset":
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        if mode == "expire":
            self._event(
                "ERROR",
                errors.expired("too old resource version: watch was expired by the test").status(),
            )
        self._write_chunk(b"")

    # ---- /_test control endpoints -----------------------------------------------------

    def _control(self, method: str, path: str, query: dict[str, str], raw: bytes) -> None:
        double = self.server.double
        try:
            body = json.loads(raw) if raw else {}
            if path == "/_test/requests":
                if method == "GET":
                    self._send_json(
                        200,
                        {
                            "items": [r.to_json() for r in double.requests.records()],
                            "writes": double.requests.writes_by_resource(),
                        },
                    )
                elif method == "DELETE":
                    double.requests.reset()
                    self._send_json(200, {"status": "Success"})
                else:
                    raise errors.method_not_allowed(method)
            elif path == "/_test/faults":
                if method == "POST":
                    double.apply_fault_document(body)
                elif method == "DELETE":
                    double.clear_faults()
                elif method != "GET":
                    raise errors.method_not_allowed(method)
                self._send_json(200, double.fault_document())
            elif path.startswith("/_test/objects/"):
                resource = RESOURCES.get(path.removeprefix("/_test/objects/"))
                if resource is None:
                    raise errors.path_not_found()
                if method == "GET":
                    self._send_json(200, {"items": double.store.snapshot(resource)})
                elif method == "POST":
                    self._send_json(
                        201,
                        double.store.create(
                            resource,
                            query.get("namespace", "default") if resource.namespaced else "",
                            body,
                            keep_status=True,
                        ),
                    )
                else:
                    raise errors.method_not_allowed(method)
            else:
                raise errors.path_not_found()
        except ApiError as err:
            self._send_json(err.code, err.status())
        except (ValueError, TypeError, KeyError) as exc:
            self._send_json(400, errors.bad_request(f"bad fault request: {exc}").status())


class _Recorder:
    def __init__(self, method: str, path: str, query: str, verb: str, route: Route | None) -> None:
        self.method, self.path, self.query, self.verb, self.route = method, path, query, verb, route

    def done(self, status: int) -> RequestRecord:
        route = self.route
        resource = ""
        if route is not None:
            resource = route.resource.plural + (
                f"/{route.subresource}" if route.subresource else ""
            )
        return RequestRecord(
            method=self.method,
            path=self.path,
            query=self.query,
            status=status,
            verb=self.verb,
            resource=resource,
            namespace=route.namespace or "" if route else "",
            name=route.name if route else "",
            time=time.time(),
        )


def _verb(method: str, route: Route | None, query: dict[str, str]) -> str:
    if route is None:
        return method.lower()
    if method == "GET":
        if route.name:
            return "get"
        return "watch" if query.get("watch") in ("true", "1") else "list"
    if method == "POST":
        return "create" if not route.name else "post"
    if method == "PUT":
        return "update"
    if method == "PATCH":
        return "patch"
    if method == "DELETE":
        return "delete" if route.name else "deletecollection"
    return method.lower()


def _namespace(resource: ResourceType, namespace: str) -> str:
    """Seeding helpers default namespaced objects to "default", like kubectl."""
    if not resource.namespaced:
        return ""
    return namespace or "default"


def _int_param(query: dict[str, str], key: str) -> int:
    value = query.get(key, "")
    if not value:
        return 0
    try:
        number = int(value)
    except ValueError:
        raise errors.bad_request(f"invalid {key}: {value!r}") from None
    if number < 0:
        raise errors.bad_request(f"invalid {key}: {value!r}")
    return number


def _matcher(resource: ResourceType, query: dict[str, str]) -> Callable[[JsonObject], bool]:
    terms = parse_field_selector(
        query.get("fieldSelector", ""),
        resource.field_labels,
        f"{resource.api_version}, Kind={resource.kind}",
    )
    by_field = field_matcher(terms, resource.field_labels)
    by_label = label_matcher(parse_label_selector(query.get("labelSelector", "")))
    return lambda obj: by_field(obj) and by_label(obj)


class ApiServerDouble:
    """A resource.k8s.io/v1 + core/v1 API server on 127.0.0.1, for the official client.

    ``with ApiServerDouble() as api:`` serves on an ephemeral port from a background
    thread; ``api.kubeconfig_path(tmp)`` writes a kubeconfig for ``load_api_client``.
    The store, the fault controls and the request log are attributes.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        history_limit: int | None = None,
        bookmark_interval: float = DEFAULT_BOOKMARK_INTERVAL_S,
    ) -> None:
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the API server double binds to the loopback interface only")
        self.host = host
        self.store = Store() if history_limit is None else Store(history_limit)
        self.faults = Faults()
        self.requests = RequestLog()
        self.bookmark_interval = bookmark_interval
        self._requested_port = port
        self._port = 0
        self._server: _HttpServer | None = None
        self._thread: threading.Thread | None = None
        self._state_lock = threading.Lock()
        self._conn_lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._down_mode: str | None = None
        self._up_timer: threading.Timer | None = None

    # ---- lifecycle --------------------------------------------------------------------

    def start(self) -> ApiServerDouble:
        with self._state_lock:
            if self._server is not None:
                return self
            self._stopping.clear()
            self._listen(self._port or self._requested_port)
        return self

    def _listen(self, port: int) -> None:
        server = _HttpServer((self.host, port), self)
        self._port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"apiserver-double:{self._port}",
            daemon=True,
        )
        self._thread.start()

    def _unlisten(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._reset_connections()

    def stop(self) -> None:
        """Close watches, the listener and every open connection; returns promptly."""
        with self._state_lock:
            self._stopping.set()
            if self._up_timer is not None:
                self._up_timer.cancel()
                self._up_timer = None
            self.store.close_watches("end")
            self._down_mode = None
            self._unlisten()

    def __enter__(self) -> ApiServerDouble:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _track(self, conn: socket.socket, opened: bool) -> None:
        with self._conn_lock:
            if opened:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _reset_connections(self) -> None:
        with self._conn_lock:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self._port}"

    def kubeconfig(self) -> JsonObject:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "apiserver-double", "cluster": {"server": self.url}}],
            "users": [{"name": "apiserver-double", "user": {}}],
            "contexts": [
                {
                    "name": "apiserver-double",
                    "context": {"cluster": "apiserver-double", "user": "apiserver-double"},
                }
            ],
            "current-context": "apiserver-double",
        }

    def write_kubeconfig(self, path: str | Path) -> Path:
        """Write a kubeconfig (plain http, no credentials) to ``path`` and return it."""
        path = Path(path)
        path.write_text(yaml.safe_dump(self.kubeconfig(), sort_keys=False))
        return path

    def kubeconfig_path(self, directory: str | Path) -> Path:
        """Write ``<directory>/kubeconfig`` for the official client and return its path."""
        return self.write_kubeconfig(Path(directory) / "kubeconfig")

    # ---- faults -----------------------------------------------------------------------

    def drop_watches(self, mode: str = "reset") -> int:
        """End every open watch: "reset" cuts the connection, "end" closes the stream
        cleanly, "expire" sends a 410 ERROR event first. Returns how many were open."""
        if mode not in ("reset", "end", "expire"):
            raise ValueError(f"unknown watch drop mode {mode!r}")
        return self.store.close_watches(mode)

    def go_down(self, seconds: float | None = None, mode: str = "refuse") -> None:
        """Stop answering: "refuse" closes the listener (connection refused), "reset"
        accepts and closes each connection. Comes back after ``seconds`` if given."""
        if mode not in ("refuse", "reset"):
            raise ValueError(f"unknown down mode {mode!r}")
        with self._state_lock:
            if self._up_timer is not None:
                self._up_timer.cancel()
                self._up_timer = None
            self.store.close_watches("reset")
            self._down_mode = mode
            if mode == "refuse":
                self._unlisten()
            else:
                self._reset_connections()
            if seconds is not None:
                self._up_timer = threading.Timer(seconds, self.come_up)
                self._up_timer.daemon = True
                self._up_timer.start()

    def come_up(self) -> None:
        """Serve again on the same port after ``go_down``."""
        with self._state_lock:
            if self._stopping.is_set():
                return
            self._up_timer = None
            self._down_mode = None
            if self._server is None:
                self._listen(self._port)

    @property
    def is_down(self) -> bool:
        return self._down_mode is not None

    def set_version(self, minor: int) -> None:
        """Claim to be Kubernetes 1.<minor> in /version, and validate like it where modelled."""
        self.store.server_minor = minor

    def version_document(self) -> JsonObject:
        minor = self.store.server_minor
        return {
            **KUBERNETES_VERSION,
            "minor": str(minor),
            "emulationMinor": str(minor),
            "minCompatibilityMinor": str(minor - 1),
            "gitVersion": f"v1.{minor}.0",
        }

    def set_feature_gate(self, gate: str, enabled: bool) -> None:
        """Turn an API server feature gate off to have its fields silently dropped on write."""
        self.store.set_feature_gate(gate, enabled)

    def drop_field(self, resource: str, path: str) -> None:
        """Silently drop ``path`` (e.g. ``spec.devices[].taints``) from writes of ``resource``."""
        self.store.drop_field(resource, path)

    def clear_faults(self) -> None:
        """Back to a healthy 1.36 server: no latency, no failure rules, default gates."""
        self.faults.clear()
        self.store.reset_fields()
        self.store.server_minor = 36

    def reset(self) -> None:
        """Empty store, no faults, empty request log: a fresh server on the same port."""
        self.clear_faults()
        self.store.reset()
        self.requests.reset()

    def fault_document(self) -> JsonObject:
        return {
            "latency": self.faults.latency,
            "fail": [r.to_json() for r in self.faults.rules()],
            "down": self._down_mode,
            "featureGates": self.store.feature_gates,
            "dropFields": [{"resource": r, "path": p} for r, p in self.store.dropped_fields],
            "openWatches": self.store.open_watches,
            "resourceVersion": str(self.store.resource_version),
        }

    def apply_fault_document(self, doc: JsonObject) -> None:
        """Apply a /_test/faults POST body; any of latency, fail (one rule or a list),
        dropWatches, down, featureGates, dropFields, compact, clear.

        The whole document is checked before anything changes, so a bad request
        leaves the server as it was.
        """
        if not isinstance(doc, dict):
            raise ValueError("the fault document must be an object")
        unknown = set(doc) - _FAULT_KEYS
        if unknown:
            raise ValueError(f"unknown fault keys: {sorted(unknown)}; known: {sorted(_FAULT_KEYS)}")
        latency = float(doc["latency"]) if "latency" in doc else None
        if latency is not None and latency < 0:
            raise ValueError("latency must be >= 0")
        fail = doc.get("fail") or []
        rules = [fail] if isinstance(fail, dict) else fail
        if not isinstance(rules, list) or not all(isinstance(r, dict) for r in rules):
            raise ValueError("fail must be a rule object or a list of them")
        gates = doc.get("featureGates") or {}
        if not isinstance(gates, dict) or set(gates) - set(FEATURE_GATED_FIELDS):
            raise ValueError(
                f"featureGates must map known gates {sorted(FEATURE_GATED_FIELDS)} to booleans"
            )
        drops = doc.get("dropFields") or []
        if not isinstance(drops, list) or any(
            not isinstance(d, dict) or d.get("resource") not in RESOURCES or not d.get("path")
            for d in drops
        ):
            raise ValueError("dropFields must be a list of {resource, path} with a known resource")
        watch_mode = doc.get("dropWatches")
        if watch_mode not in (None, False, True, "reset", "end", "expire"):
            raise ValueError("dropWatches must be true, 'reset', 'end' or 'expire'")
        down = doc.get("down")
        if "down" in doc:
            if not isinstance(down, dict) or float(down.get("seconds", 0)) <= 0:
                raise ValueError(
                    "down needs {seconds > 0, mode?}: nothing else could bring it back"
                )
            if down.get("mode", "refuse") not in ("refuse", "reset"):
                raise ValueError("down mode must be 'refuse' or 'reset'")
        candidate = Faults()
        for rule in rules:
            retry = rule.get("retryAfter")
            candidate.fail_next(
                int(rule.get("count", 1)),
                int(rule.get("status", 500)),
                method=rule.get("method"),
                path=rule.get("path"),
                retry_after=None if retry is None else float(retry),
            )

        if doc.get("clear"):
            self.clear_faults()
        if latency is not None:
            self.faults.set_latency(latency)
        for checked in candidate.rules():
            self.faults.fail_next(
                checked.remaining,
                checked.status,
                method=checked.method,
                path=checked.path,
                retry_after=checked.retry_after,
            )
        for gate, enabled in gates.items():
            self.set_feature_gate(gate, bool(enabled))
        for entry in drops:
            self.drop_field(entry["resource"], entry["path"])
        if doc.get("compact"):
            self.store.compact()
        if watch_mode:
            self.drop_watches(watch_mode if isinstance(watch_mode, str) else "reset")
        if isinstance(down, dict):
            # Answer this request before the listener goes away.
            threading.Timer(
                0.05,
                self.go_down,
                kwargs={"seconds": float(down["seconds"]), "mode": down.get("mode", "refuse")},
            ).start()

    # ---- direct store access for tests -----------------------------------------------

    def _resource(self, plural: str) -> ResourceType:
        try:
            return RESOURCES[plural]
        except KeyError:
            raise ValueError(f"unknown resource {plural!r}; known: {sorted(RESOURCES)}") from None

    def create(self, resource: str, obj: JsonObject, namespace: str = "") -> JsonObject:
        """Create through the same rules as POST, but keep ``status`` (seed an allocated claim)."""
        rt = self._resource(resource)
        ns = (
            namespace or obj.get("metadata", {}).get("namespace", "default")
            if rt.namespaced
            else ""
        )
        return self.store.create(rt, ns, obj, keep_status=True)

    def get(self, resource: str, name: str, namespace: str = "") -> JsonObject | None:
        rt = self._resource(resource)
        try:
            return self.store.get(rt, _namespace(rt, namespace), name)
        except ApiError:
            return None

    def objects(self, resource: str, namespace: str | None = None) -> list[JsonObject]:
        rt = self._resource(resource)
        return [
            o
            for o in self.store.snapshot(rt)
            if namespace is None or o["metadata"].get("namespace") == namespace
        ]

    def update_status(
        self, resource: str, name: str, status: JsonObject, namespace: str = ""
    ) -> JsonObject:
        """Merge ``status`` into the object's status subresource (e.g. allocate a claim)."""
        rt = self._resource(resource)
        return self.store.patch(
            rt,
            _namespace(rt, namespace),
            name,
            "application/merge-patch+json",
            {"status": status},
            subresource="status",
        )

    def delete(self, resource: str, name: str, namespace: str = "") -> None:
        rt = self._resource(resource)
        self.store.delete(rt, _namespace(rt, namespace), name)

    def create_node(self, name: str, labels: dict[str, str] | None = None) -> JsonObject:
        return self.create("nodes", {"metadata": {"name": name, "labels": labels or {}}})

    def slices(self, *, driver: str | None = None, node: str | None = None) -> list[JsonObject]:
        return [
            s
            for s in self.objects("resourceslices")
            if (driver is None or s["spec"].get("driver") == driver)
            and (node is None or s["spec"].get("nodeName") == node)
        ]

    def wait_for(self, predicate: Callable[[ApiServerDouble], bool], timeout: float = 5.0) -> bool:
        """Poll ``predicate(self)`` until true or timeout; returns the last answer."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.01)
        return bool(predicate(self))
