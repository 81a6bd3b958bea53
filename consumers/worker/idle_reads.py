"""The blocking reads an idle worker waits on: at most one per partition, each in a background
task, since on a Redis Cluster one XREADGROUP cannot name the streams of two partitions
(CROSSSLOT).

A worker that found every partition idle starts a read on each partition without one and wakes
when the first brings something or times out. The others keep running (never cancelled, which
would let Redis hand an entry to a read nobody collects) and are waited on again at the next idle
wait; a read that timed out with nothing proves its partition is still idle. Each read asks for
about its share of the free slots, so that what several bring at once (pending under this worker
until it claims them) stays near what the worker can start: a backlog the intake serves first.
If the worker holds such an item past the lease, another worker reclaims it and this one's
claim is refused (busy or stale), as for any item claimed late.

Each outstanding read holds a connection of the blocking client: an idle worker holds one per
partition."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import structlog

from orchestrator.storage.connections import ready_for_concurrent_calls
from orchestrator.storage.work_items import WorkItem, WorkItems

log = structlog.get_logger("backstream.worker")


class IdleReads:
    """The outstanding blocking reads of worker `name` on `queue`'s partitions, each blocking
    up to `block_ms`. `drained` holds the partitions known to hold no new item since they were
    last looked at (a take that came back short, or a read that timed out empty)."""

    def __init__(self, queue: WorkItems, *, name: str, block_ms: int) -> None:
        self.queue = queue
        self.name = name
        self.block_ms = block_ms
        self.drained: set[int] = set()
        self._reads: dict[int, asyncio.Task[list[WorkItem]]] = {}
        # Items of ended reads not yet handed out (a harvest that raised keeps them here).
        self._brought: list[WorkItem] = []

    @property
    def watched(self) -> set[int]:
        """The partitions with a read outstanding: whatever arrives there comes through it."""
        return set(self._reads)

    async def wait(self, partitions: Iterable[int], count: int) -> None:
        """Start a read of up to `count` items on each of `partitions` that has none, then wait
        until one of the outstanding reads ends (at most `block_ms`). Collect with `harvest`."""
        await ready_for_concurrent_calls(self.queue.reader)
        for partition in partitions:
            if partition not in self._reads:
                read = self.queue.read_new(worker=self.name, count=count, block_ms=self.block_ms, partition=partition)
                self._reads[partition] = asyncio.create_task(read)
        if self._reads:
            await asyncio.wait(list(self._reads.values()), return_when=asyncio.FIRST_COMPLETED)

    def harvest(self) -> list[WorkItem]:
        """The items of the reads that ended, their partitions no longer watched (and `drained`
        if the read came back empty). Raises the error of a read that failed (its partition is
        read again at the next wait); what the others brought is kept for the next harvest."""
        error: BaseException | None = None
        for partition, read in list(self._reads.items()):
            if not read.done():
                continue
            del self._reads[partition]
            failure = asyncio.CancelledError() if read.cancelled() else read.exception()
            if failure is not None:
                self.drained.discard(partition)
                error = error or failure
                continue
            got = read.result()
            if got:
                self.drained.discard(partition)
            else:
                self.drained.add(partition)
            self._brought += got
        if error is not None:
            raise error
        items, self._brought = self._brought, []
        return items

    async def close(self) -> list[WorkItem]:
        """Wait for the outstanding reads to end (within `block_ms`) and return what they
        brought: those items are pending under this worker. A read that failed is logged."""
        reads = list(self._reads.items())
        self._reads.clear()
        outcomes = await asyncio.gather(*(read for _, read in reads), return_exceptions=True)
        items, self._brought = self._brought, []
        for (partition, _), outcome in zip(reads, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                log.warning("worker.read_failed", partition=partition, error=str(outcome))
            else:
                items += outcome
        return items
