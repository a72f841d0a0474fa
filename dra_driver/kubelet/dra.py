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
    CALL_DEADLINE,
    AnswersFromCheckpoint,
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
# Answer this long before the caller's deadline at most (less for short deadlines).
MAX_DEADLINE_MARGIN = 1.0
# Deadlines shorter than this get no early BUSY answers (a probe, not the kubelet's 45 s).
MIN_EARLY_ANSWER = 0.5

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


def _margin(remaining: float) -> float:
    """How long before the caller's deadline an answer must leave to arrive in time."""
    return min(MAX_DEADLINE_MARGIN, 0.1 * remaining)


class ClaimCalls:
    """The version-independent part: validation, bounded concurrency, per-claim errors.

    Every claim is reported to `observer` (set it before serving): refused ones at
    once, the others when the preparer is done with them, even after the kubelet
    gave up waiting.

    A claim the same operation is already working on is joined, not started
    again: kubelet retries of one stuck claim hold no capacity. Prepare and
    unprepare have separate capacity, and claims a preparer can answer from its
    checkpoint (AnswersFromCheckpoint) are answered before any queueing. With a
    deadline of at least MIN_EARLY_ANSWER seconds, a claim still waiting (for
    capacity, or on an earlier attempt) just before it gets a per-claim BUSY
    error instead of the whole call's DEADLINE_EXCEEDED; the work goes on.
    """

    def __init__(
        self, preparer: Preparer, max_concurrent: int = 32, observer: CallObserver | None = None
    ) -> None:
        self._preparer = preparer
        self._slots = {
            "prepare": asyncio.Semaphore(max_concurrent),
            "unprepare": asyncio.Semaphore(max_concurrent),
        }
        self._inflight: set[asyncio.Task[Any]] = set()
        self._running: dict[tuple[str, ClaimRef], asyncio.Task[Any]] = {}
        self.observer: CallObserver = observer or _NoObserver()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    async def prepare(
        self, claims: Iterable[ClaimMessage], timeout: float | None = None
    ) -> dict[str, PrepareResult]:
        """timeout: seconds the caller waits (the gRPC deadline), None for no limit."""
        return await self._call("prepare", claims, self._preparer.prepare, PrepareResult, timeout)

    async def unprepare(
        self, claims: Iterable[ClaimMessage], timeout: float | None = None
    ) -> dict[str, UnprepareResult]:
        return await self._call(
            "unprepare", claims, self._preparer.unprepare, UnprepareResult, timeout
        )

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
        timeout: float | None = None,
    ) -> dict[str, R]:
        started = time.perf_counter()
        # The preparer's deadline comes first, so its own per-claim error (e.g. "the
        # API server did not answer") wins over the generic one given at answer_by.
        deadline = answer_by = None
        if timeout is not None:
            deadline = time.monotonic() + timeout - _margin(timeout)
            answer_by = deadline + _margin(timeout) / 2
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
        waits: dict[asyncio.Task[Any], list[ClaimRef]] = {}
        fresh = []
        for ref in valid:
            running = self._running.get((op, ref))
            if running is None:
                fresh.append(ref)
            else:
                waits.setdefault(running, []).append(ref)
        for task, joined in waits.items():
            self._observe_joined(op, joined, task, started)
        if fresh:
            token = CALL_DEADLINE.set(deadline)
            try:
                task = asyncio.ensure_future(
                    self._observed(op, fresh, method, result_type, started, deadline)
                )
            finally:
                CALL_DEADLINE.reset(token)
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
            keys = [(op, ref) for ref in fresh]
            self._running.update((key, task) for key in keys)
            task.add_done_callback(lambda t: self._forget(keys, t))
            waits[task] = fresh
        early = timeout is not None and timeout >= MIN_EARLY_ANSWER
        for task, refs in waits.items():
            try:
                if early and answer_by is not None:
                    results = await asyncio.wait_for(
                        asyncio.shield(task), max(0.0, answer_by - time.monotonic())
                    )
                else:
                    results = await asyncio.shield(task)
            except TimeoutError:
                message = (
                    f"{op} of this claim is still in progress and did not finish within the "
                    "caller's deadline; it goes on, and a retry gets its result"
                )
                results = {
                    r.uid: result_type(error=message, error_kind=ErrorKind.BUSY) for r in refs
                }
            out.update((r.uid, results[r.uid]) for r in refs)
        return out

    def _forget(self, keys: list[tuple[str, ClaimRef]], task: asyncio.Task[Any]) -> None:
        for key in keys:
            if self._running.get(key) is task:
                del self._running[key]

    def _observe_joined(
        self, op: str, refs: list[ClaimRef], task: asyncio.Task[Any], started: float
    ) -> None:
        """Count claims that joined a running attempt, finishing with that attempt."""
        self.observer.claims_started(op, len(refs))

        def finished(t: asyncio.Task[Any]) -> None:
            results = {} if t.cancelled() or t.exception() is not None else t.result()
            outcomes = [
                _outcome(results[r.uid]) if r.uid in results else ErrorKind.INTERNAL for r in refs
            ]
            self.observer.claims_finished(op, time.perf_counter() - started, outcomes)

        task.add_done_callback(finished)

    async def _observed(
        self,
        op: str,
        claims: list[ClaimRef],
        method: Callable[[Sequence[ClaimRef]], Awaitable[Mapping[str, R]]],
        result_type: type[R],
        started: float,
        deadline: float | None,
    ) -> dict[str, R]:
        self.observer.claims_started(op, len(claims))
        results: dict[str, R] = {}
        try:
            rest = claims
            if op == "prepare" and isinstance(self._preparer, AnswersFromCheckpoint):
                hits = await self._preparer.prepared(claims)
                results.update((c.uid, hits[c.uid]) for c in claims if c.uid in hits)  # type: ignore[misc]
                rest = [c for c in claims if c.uid not in results]
            if rest:
                results.update(await self._guarded(op, rest, method, result_type, deadline))
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
        deadline: float | None,
    ) -> dict[str, R]:
        slots = self._slots[op]
        try:
            if deadline is None:
                await slots.acquire()
            else:
                await asyncio.wait_for(slots.acquire(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            message = (
                f"{op}: every slot for {op} calls was busy until the caller's deadline; "
                "retry (the node is overloaded or the API server is slow)"
            )
            log.warning(
                "%s of %d claim(s) refused: no capacity before the deadline", op, len(claims)
            )
            return {c.uid: result_type(error=message, error_kind=ErrorKind.BUSY) for c in claims}
        try:
            results = dict(await method(claims))
        except Exception as e:
            log.exception("%s of %d claim(s) failed as a whole", op, len(claims))
            message = truncate_utf8(f"{op} failed: {type(e).__name__}: {e}", MAX_ERROR_BYTES)
            return {
                c.uid: result_type(error=message, error_kind=ErrorKind.INTERNAL) for c in claims
            }
        finally:
            slots.release()
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


def time_remaining(context: object) -> float | None:
    """The gRPC deadline left for this call, in seconds (None: none, or not a gRPC context)."""
    fn = getattr(context, "time_remaining", None)
    if fn is None:
        return None
    try:
        remaining = fn()
    except Exception:
        return None
    return float(remaining) if isinstance(remaining, int | float) else None


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
        for uid, r in (await self._calls.prepare(request.claims, time_remaining(context))).items():
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
        for uid, r in (
            await self._calls.unprepare(request.claims, time_remaining(context))
        ).items():
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
        for uid, r in (await self._calls.prepare(request.claims, time_remaining(context))).items():
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
        for uid, r in (
            await self._calls.unprepare(request.claims, time_remaining(context))
        ).items():
            resp.claims[uid].error = r.error
        return resp
