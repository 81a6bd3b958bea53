"""Where a worker's next work items come from: its own pending items after a restart, expired
leases and due retries (swept a few times per lease), items its idle reads brought, waiting work
(read and claimed in one round trip per partition), or, when every partition is idle, blocking
reads (idle_reads.py)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Collection
from typing import NamedTuple

import structlog

from consumers.worker.idle_reads import IdleReads
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
    """Reads the next work items of worker `name` from `queue`'s partitions. `running()` gives
    the message ids of the items this worker is running now (never reclaimed from itself)."""

    def __init__(
        self, queue: WorkQueue, settings: Settings, *, name: str, running: Callable[[], Collection[str]]
    ) -> None:
        self.queue = queue
        self.settings = settings
        self.name = name
        self._running = running
        self._next_sweep = 0.0
        self._idle = IdleReads(queue, name=name, block_ms=READ_BLOCK_MS)
        # Items the idle reads brought beyond the free slots: pending under this worker already.
        self._backlog: list[Item] = []
        self._rounds = itertools.count()

    @property
    def waiting_on(self) -> set[int]:
        """The partitions an idle read is outstanding on (every one, while the worker is idle)."""
        return self._idle.watched

    async def own_pending(self) -> list[Item]:
        """What a worker restarted under the same name held before: to be taken back (reclaims)."""
        return [Item(m, t, reclaim=True) for m, t in await self.queue.read_own_pending(worker=self.name)]

    async def next_items(self, free: int, burst: bool) -> list[Item]:
        """Up to `free` items: reclaimed ones when a sweep finds some, else what idle reads
        brought, else waiting work claimed as `take` does, else what reads blocking up to
        READ_BLOCK_MS bring (not blocking in `burst` mode: [] then). Raises redis errors."""
        now = time.monotonic()
        if now >= self._next_sweep:
            # Reclaims and due retries are looked for a few times per lease, not on every read.
            self._next_sweep = now + min(self.settings.lease_ms / 4000, 1.0)
            reclaimed = await self._sweep(free)
            if reclaimed:
                return reclaimed
        self._backlog += [Item(m, t) for m, t in self._idle.harvest()]
        if not self._backlog:
            # With work waiting, read and claim in one round trip; only an idle worker blocks.
            taken = await self._take(free, burst)
            if taken or burst:
                return taken
            # Every partition is idle: wait on all of them, each read asking for its share.
            await self._idle.wait(range(self.queue.width), count=max(1, free // self.queue.width))
            self._backlog += [Item(m, t) for m, t in self._idle.harvest()]
        items, self._backlog = self._backlog[:free], self._backlog[free:]
        return items

    async def _take(self, free: int, burst: bool) -> list[Item]:
        """Waiting work, read and claimed from the partitions in turn until `free` are filled.
        Partitions an idle read watches, or found drained in the last `width` rounds, are skipped:
        a read (outstanding, or started at the next wait) brings what arrives there. In `burst`
        mode (no reads) every partition is tried. One round trip per partition tried: one with
        one partition; a busy worker whose work is all in one partition spends about two a round."""
        if next(self._rounds) % self.queue.width == 0:
            # What was drained may have filled since, and a busy worker never waits on its reads:
            # every `width` rounds each partition is looked at again (every round, with one).
            self._idle.drained.clear()
        skip = set() if burst else self._idle.watched | self._idle.drained
        taken: list[Item] = []
        for partition in self.queue.rotation():
            if partition in skip:
                continue
            asked = free - len(taken)
            got = await self.queue.take_from(partition, worker=self.name, count=asked)
            if len(got) < asked:
                self._idle.drained.add(partition)
            taken += [Item(t.message_id, t.task_id, claim=t.claim) for t in got]
            if len(taken) >= free:
                break
        return taken

    async def close(self) -> list[Item]:
        """Wait for the outstanding idle reads to end (within READ_BLOCK_MS) and return every
        item read but not handed out: they are pending under this worker."""
        leftover = self._backlog + [Item(m, t) for m, t in await self._idle.close()]
        self._backlog = []
        return leftover

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
