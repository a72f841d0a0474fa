"""The Preparer the kubelet servicers get when claim status is on: the real one, reported.

After the inner preparer answers, each claim it prepared (or unprepared) is
handed to the writer, which only records it: the answer is returned at once,
and nothing the writer does can turn a successful prepare into a failure.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ..prepare.types import (
    AnswersFromCheckpoint,
    ClaimRef,
    Preparer,
    PrepareResult,
    UnprepareResult,
)
from .writer import ClaimStatusWriter

log = logging.getLogger(__name__)


class StatusReportingPreparer:
    """A Preparer that tells a ClaimStatusWriter what the inner Preparer did."""

    def __init__(self, inner: Preparer, writer: ClaimStatusWriter) -> None:
        self._inner = inner
        self._writer = writer

    async def prepared(self, claims: Sequence[ClaimRef]) -> dict[str, PrepareResult]:
        """The inner preparer's checkpoint answers (AnswersFromCheckpoint), reported alike.

        Without this, wrapping would hide the fast path, and a cached re-prepare
        would queue behind calls waiting on a hung API server.
        """
        if not isinstance(self._inner, AnswersFromCheckpoint):
            return {}
        return self._report(claims, await self._inner.prepared(claims))

    async def prepare(self, claims: Sequence[ClaimRef]) -> dict[str, PrepareResult]:
        return self._report(claims, await self._inner.prepare(claims))

    def _report(
        self, claims: Sequence[ClaimRef], results: dict[str, PrepareResult]
    ) -> dict[str, PrepareResult]:
        refs = {c.uid: c for c in claims}
        for uid, result in results.items():
            ref = refs.get(uid)
            if ref is not None and not result.error and result.devices:
                try:
                    self._writer.prepared(ref, result.devices)
                except Exception:
                    log.exception("BUG: recording claim %s for its device status failed", uid)
        return results

    async def unprepare(self, claims: Sequence[ClaimRef]) -> dict[str, UnprepareResult]:
        results = await self._inner.unprepare(claims)
        refs = {c.uid: c for c in claims}
        for uid, result in results.items():
            ref = refs.get(uid)
            if ref is not None and not result.error:
                try:
                    self._writer.unprepared(ref)
                except Exception:
                    log.exception("BUG: recording claim %s for its device status failed", uid)
        return results
