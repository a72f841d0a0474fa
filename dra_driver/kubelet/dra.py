"""DRAPlugin v1 and v1beta1 servicers: thin adapters onto the Preparer.

The kubelet treats a gRPC error as "the whole call failed" and a per-claim
`error` as "this claim failed". One bad claim (an empty UID, an absurd name,
a failing device) must therefore never turn into a gRPC error, and the answer
must carry exactly one entry per distinct claim UID, or the kubelet reports
"skipped N ResourceClaims" / "unknown claim UID" and retries forever.

Preparation runs shielded from the caller: when the kubelet's 45 s deadline
or a disconnect cancels the RPC, the preparer still finishes (and records)
what it started, and the kubelet's retry gets the idempotent result.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from ..prepare.types import (
    ClaimRef,
    ErrorKind,
    PreparedDevice,
    Preparer,
    PrepareResult,
    UnprepareResult,
)
from .proto import dra_v1_pb2 as v1
from .proto import dra_v1_pb2_grpc as v1_grpc
from .proto import dra_v1beta1_pb2 as v1beta1
from .proto import dra_v1beta1_pb2_grpc as v1beta1_grpc

log = logging.getLogger(__name__)

# Kubernetes limits (metadata validation) with slack for the UID, which the
# API server generates as a 36-character UUID.
MAX_NAME_BYTES = 253
MAX_NAMESPACE_BYTES = 63
MAX_UID_BYTES = 128
# Per-claim error text ends up in kubelet logs and pod events; keep it readable.
MAX_ERROR_BYTES = 4096

R = TypeVar("R", PrepareResult, UnprepareResult)


class CallObserver(Protocol):
    """Told about every claim the kubelet asks for (metrics); must be quick and never raise.

    operation is "prepare" or "unprepare". Each claim is started, then finished
    with an outcome: None for success, else the failure's kind.
    """

    def claims_started(self, operation: str, count: int) -> None: ...

    def claims_finished(
        self, operation: str, seconds: float, outcomes: Sequence[ErrorKind | None]
    ) -> None: ...


class _NoObserver:
    def claims_started(self, operation: str, count: int) -> None:
        pass

    def claims_finished(
        self, operation: str, seconds: float, outcomes: Sequence[ErrorKind | None]
    ) -> None:
        pass


def _outcome(r: PrepareResult | UnprepareResult) -> ErrorKind | None:
    if not r.error:
        return None
    return r.error_kind or ErrorKind.INTERNAL


class ClaimMessage(Protocol):
    """The Claim message of either DRA API version."""

    namespace: str
    uid: str
    name: str


def truncate_utf8(text: str, limit: int, marker: str = "...") -> str:
    """Text cut to at most limit UTF-8 bytes (marker included), on a character boundary."""
    data = text.encode()
    if len(data) <= limit:
        return text
    room = limit - len(marker.encode())
    return data[:room].decode(errors="ignore") + marker


def _claim_problem(claim: ClaimMessage) -> str:
    """Why a claim cannot be handed to the preparer ("" when it can)."""
    problems = []
    for field, value, limit in (
        ("uid", claim.uid, MAX_UID_BYTES),
        ("namespace", claim.namespace, MAX_NAMESPACE_BYTES),
        ("name", claim.name, MAX_NAME_BYTES),
    ):
        size = len(value.encode())
        if size == 0:
            problems.append(f"claim {field} is empty")
        elif size > limit:
            problems.append(f"claim {field} is {size} bytes (Kubernetes allows at most {limit})")
    return "; ".join(problems)


def collect_claims(claims: Iterable[ClaimMessage]) -> tuple[list[ClaimRef], dict[str, str]]:
    """Distinct valid claims in request order, and errors keyed by UID for the rest.

    A UID listed twice collapses to one entry; listed twice with a different
    namespace or name it is refused, since the kubelet never does that.
    """
    valid: dict[str, ClaimRef] = {}
    errors: dict[str, str] = {}
    for claim in claims:
        uid = claim.uid
        # An over-long UID would make a huge map key; key it by a bounded prefix.
        key = truncate_utf8(uid, MAX_UID_BYTES)
        if key in errors:
            continue
        problem = _claim_problem(claim)
        if problem:
            errors[key] = problem
            valid.pop(key, None)
            continue
        ref = ClaimRef(namespace=claim.namespace, uid=uid, name=claim.name)
        seen = valid.get(uid)
        if seen is None:
            valid[uid] = ref
        elif seen != ref:
            errors[uid] = (
                f"claim uid {uid} listed twice with different identities "
                f"({seen.namespace}/{seen.name} and {ref.namespace}/{ref.name})"
            )
            del valid[uid]
    return list(valid.values()), errors


class ClaimCalls:
    """The version-independent part: validation, bounded concurrency, per-claim errors.

    Every claim is reported to `observer` (set it before serving): refused ones at
    once, the others when the preparer is done with them, even after the kubelet
    gave up waiting.
    """

    def __init__(
        self, preparer: Preparer, max_concurrent: int = 32, observer: CallObserver | None = None
    ) -> None:
        self._preparer = preparer
        self._slots = asyncio.Semaphore(max_concurrent)
        self._inflight: set[asyncio.Task[Any]] = set()
        self.observer: CallObserver = observer or _NoObserver()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    async def prepare(self, claims: Iterable[ClaimMessage]) -> dict[str, PrepareResult]:
        return await self._call("prepare", claims, self._preparer.prepare, PrepareResult)

    async def unprepare(self, claims: Iterable[ClaimMessage]) -> dict[str, UnprepareResult]:
        return await self._call("unprepare", claims, self._preparer.unprepare, UnprepareResult)

    async def drain(self, timeout: float) -> bool:
        """Wait up to timeout for started preparer calls; True if none is left."""
        pending = set(self._inflight)
        if not pending:
            return True
        _, still = await asyncio.wait(pending, timeout=timeout)
        return not still

    async def _call(
        self,
        op: str,
        claims: Iterable[ClaimMessage],
        method: Callable[[Sequence[ClaimRef]], Awaitable[Mapping[str, R]]],
        result_type: type[R],
    ) -> dict[str, R]:
        started = time.perf_counter()
        valid, invalid = collect_claims(claims)
        out: dict[str, R] = {
            uid: result_type(error=msg, error_kind=ErrorKind.INVALID_CLAIM)
            for uid, msg in invalid.items()
        }
        if invalid:
            examples = dict(list(invalid.items())[:5])
            log.warning("%s: refused %d malformed claim(s), e.g. %s", op, len(invalid), examples)
            self.observer.claims_started(op, len(invalid))
            self.observer.claims_finished(
                op, time.perf_counter() - started, [ErrorKind.INVALID_CLAIM] * len(invalid)
            )
        if not valid:
            return out
        task = asyncio.ensure_future(self._observed(op, valid, method, result_type, started))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        out.update(await asyncio.shield(task))
        return out

    async def _observed(
        self,
        op: str,
        claims: list[ClaimRef],
        method: Callable[[Sequence[ClaimRef]], Awaitable[Mapping[str, R]]],
        result_type: type[R],
        started: float,
    ) -> dict[str, R]:
        self.observer.claims_started(op, len(claims))
        results: dict[str, R] = {}
        try:
            results = await self._guarded(op, claims, method, result_type)
            return results
        finally:
            # Cancelled (only at shutdown): every claim without an answer counts as internal.
            outcomes = [
                _outcome(results[c.uid]) if c.uid in results else ErrorKind.INTERNAL for c in claims
            ]
            self.observer.claims_finished(op, time.perf_counter() - started, outcomes)

    async def _guarded(
        self,
        op: str,
        claims: list[ClaimRef],
        method: Callable[[Sequence[ClaimRef]], Awaitable[Mapping[str, R]]],
        result_type: type[R],
    ) -> dict[str, R]:
        async with self._slots:
            try:
                results = dict(await method(claims))
            except Exception as e:
                log.exception("%s of %d claim(s) failed as a whole", op, len(claims))
                message = truncate_utf8(f"{op} failed: {type(e).__name__}: {e}", MAX_ERROR_BYTES)
                return {
                    c.uid: result_type(error=message, error_kind=ErrorKind.INTERNAL) for c in claims
                }
        out: dict[str, R] = {}
        for c in claims:
            r = results.pop(c.uid, None)
            if r is None:
                log.error("%s: preparer returned no result for claim %s", op, c.uid)
                r = result_type(
                    error=f"internal error: no {op} result for this claim",
                    error_kind=ErrorKind.INTERNAL,
                )
            elif (size := len(r.error.encode())) > MAX_ERROR_BYTES:
                r = dataclasses.replace(r, error=truncate_utf8(r.error, MAX_ERROR_BYTES))
                log.warning("%s: claim %s error of %d bytes truncated", op, c.uid, size)
            out[c.uid] = r
        if results:
            log.error("%s: preparer returned results for unrequested claims %s", op, list(results))
        return out


def _v1_device(d: PreparedDevice) -> v1.Device:
    dev = v1.Device(
        request_names=d.request_names,
        pool_name=d.pool_name,
        device_name=d.device_name,
        cdi_device_ids=d.cdi_device_ids,
    )
    if d.share_id is not None:
        dev.share_id = d.share_id
    return dev


def _v1beta1_device(d: PreparedDevice) -> v1beta1.Device:
    # v1beta1 has no share_id; the kubelet's own v1 -> v1beta1 conversion drops it too.
    return v1beta1.Device(
        request_names=d.request_names,
        pool_name=d.pool_name,
        device_name=d.device_name,
        cdi_device_ids=d.cdi_device_ids,
    )


class DRAPluginV1(v1_grpc.DRAPluginServicer):
    """k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin."""

    def __init__(self, calls: ClaimCalls) -> None:
        self._calls = calls

    async def NodePrepareResources(
        self, request: v1.NodePrepareResourcesRequest, context: object
    ) -> v1.NodePrepareResourcesResponse:
        resp = v1.NodePrepareResourcesResponse()
        if not request.claims:  # the kubelet's (and our tests') cheap liveness probe
            return resp
        for uid, r in (await self._calls.prepare(request.claims)).items():
            entry = resp.claims[uid]
            entry.error = r.error
            if not r.error:
                entry.devices.extend(_v1_device(d) for d in r.devices)
        return resp

    async def NodeUnprepareResources(
        self, request: v1.NodeUnprepareResourcesRequest, context: object
    ) -> v1.NodeUnprepareResourcesResponse:
        resp = v1.NodeUnprepareResourcesResponse()
        if not request.claims:
            return resp
        for uid, r in (await self._calls.unprepare(request.claims)).items():
            resp.claims[uid].error = r.error
        return resp


class DRAPluginV1beta1(v1beta1_grpc.DRAPluginServicer):
    """k8s.io.kubelet.pkg.apis.dra.v1beta1.DRAPlugin: the same calls, older messages."""

    def __init__(self, calls: ClaimCalls) -> None:
        self._calls = calls

    async def NodePrepareResources(
        self, request: v1beta1.NodePrepareResourcesRequest, context: object
    ) -> v1beta1.NodePrepareResourcesResponse:
        resp = v1beta1.NodePrepareResourcesResponse()
        if not request.claims:
            return resp
        for uid, r in (await self._calls.prepare(request.claims)).items():
            entry = resp.claims[uid]
            entry.error = r.error
            if not r.error:
                entry.devices.extend(_v1beta1_device(d) for d in r.devices)
        return resp

    async def NodeUnprepareResources(
        self, request: v1beta1.NodeUnprepareResourcesRequest, context: object
    ) -> v1beta1.NodeUnprepareResourcesResponse:
        resp = v1beta1.NodeUnprepareResourcesResponse()
        if not request.claims:
            return resp
        for uid, r in (await self._calls.unprepare(request.claims)).items():
            resp.claims[uid].error = r.error
        return resp
