"""Where a worker's next work items come from: its own pending items after a restart, expired
leases and due retries (swept a few times per lease), waiting work (read and claimed in one
round trip), or, when idle, a blocking read."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from typing import NamedTuple

import structlog

from orchestrator.settings import Settings
from orchestrator.storage.workqueue import Claim, WorkQueue

log = structlog.get_logger("backstream.worker")

# An idle read blocks this long before the loop looks at stop requests, reclaims and retries.
READ_BLOCK_MS = 500


class Item(NamedTuple):
    """A work item to run: read (then claimed by its own task) or already claimed by `take`."""

    message_id: str
    task_id: str
    reclaim: bool = False
    claim: Claim | None = None


class Intake:
    """Reads the next work items of worker `name` from `queue`. `running()` gives the message
    ids of the items this worker is running now (never reclaimed from itself)."""

    def __init__(
        self, queue: WorkQueue, settings: Settings, *, name: str, running: Callable[[], Collection[str]]
    ) -> None:
        self.queue = queue
        self.settings = settings
        self.name = name
        self._running = running
        self._next_sweep = 0.0

    async def own_pending(self) -> list[Item]:
        """What a worker restarted under the same name held before: to be taken back (reclaims)."""
        return [Item(m, t, reclaim=True) for m, t in await self.queue.read_own_pending(worker=self.name)]

    async def next_items(self, free: int, burst: bool) -> list[Item]:
        """Up to `free` items: reclaimed ones when a sweep finds some, else waiting work claimed
        in one round trip, else what a read blocking up to READ_BLOCK_MS brings (not blocking in
        `burst` mode). Raises redis errors."""
        now = time.monotonic()
        if now >= self._next_sweep:
            # Reclaims and due retries are looked for a few times per lease, not on every read.
            self._next_sweep = now + min(self.settings.lease_ms / 4000, 1.0)
            reclaimed = await self._sweep(free)
            if reclaimed:
                return reclaimed
        # With work waiting, read and claim in one round trip; only an idle worker blocks.
        taken = await self.queue.take(worker=self.name, count=free)
        if taken:
            return [Item(t.message_id, t.task_id, claim=t.claim) for t in taken]
        read = await self.queue.read_new(worker=self.name, count=free, block_ms=None if burst else READ_BLOCK_MS)
        return [Item(m, t) for m, t in read]

    async def _sweep(self, free: int) -> list[Item]:
        """Promote due retries, and reclaim up to `free` items whose lease expired."""
        await self.queue.promote_due_retries()
        reclaimed = await self.queue.reclaim_expired(worker=self.name, min_idle_ms=self.settings.lease_ms, count=free)
        # Never its own running tasks: their leases lapse only while the store refuses the
        # renewals (out of memory, say), and the outcome they hold is stored once it passes.
        mine = set(self._running())
        reclaimed = [item for item in reclaimed if item.message_id not in mine]
        if reclaimed:
            log.info("worker.reclaimed", count=len(reclaimed))
        return [Item(m, t, reclaim=True) for m, t in reclaimed]
