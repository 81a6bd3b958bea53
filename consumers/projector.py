"""The projector: folds the event log into the current-state hashes, exactly once in effect."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import redis.exceptions
import structlog

from orchestrator.events import StoredEvent
from orchestrator.projection import Projection
from orchestrator.state import TaskState, evolve

log = structlog.get_logger("backstream.projector")

# A cache of the states this projector last wrote. It stays valid while every one of its batches
# is accepted at the position it expected; it is dropped when another projector moved it.
_CACHE_LIMIT = 200_000

# Reads events after a position: (after, count, block_ms) -> events in log order.
Source = Callable[[str | None, int, int | None], Awaitable[list[StoredEvent]]]


class Projector:
    def __init__(
        self,
        projection: Projection,
        *,
        batch_size: int = 1000,
        block_ms: int = 1000,
        source: Source | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.projection = projection
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.source = source or projection.read_log
        self.on_batch = on_batch
        self._cache: dict[str, TaskState] = {}
        self._stopping = asyncio.Event()
        self.applied = 0

    def stop(self) -> None:
        self._stopping.set()

    async def step(self, *, block: bool = False) -> int:
        """Fold one batch of events after the stored position. Returns how many were read."""
        position = await self.projection.position()
        events = await self.source(position, self.batch_size, self.block_ms if block else None)
        if not events:
            return 0
        task_ids = list(dict.fromkeys(e.event.task_id for e in events))
        missing = [t for t in task_ids if t not in self._cache]
        before = {t: self._cache[t] for t in task_ids if t in self._cache}
        before.update(await self.projection.load(missing))
        after = dict(before)
        for stored in events:
            task_id = stored.event.task_id
            after[task_id] = evolve(after.get(task_id), stored)
        verdict = await self.projection.store(position, events[-1].id, before, after)
        if verdict != "ok":
            # Another projector got there first, or a rebuild switched the live projection:
            # forget what this one thought it knew and read again.
            log.info("projector.retrying_batch", reason=verdict, expected=position)
            self._cache.clear()
            await self.projection.refresh(force=True)
            return len(events)
        if len(self._cache) > _CACHE_LIMIT:
            self._cache.clear()
        self._cache.update(after)
        self.applied += len(events)
        if self.on_batch is not None:
            self.on_batch(len(events))
        return len(events)

    async def run(self, *, burst: bool = False) -> None:
        """Follow the log until stopped; in burst mode, return once the log is fully folded.
        Redis outages are waited out with backoff; the stored position says where to go on."""
        log.info("projector.started", projection=self.projection.keys.projection_name)
        delay = 0.1
        while not self._stopping.is_set():
            try:
                read = await self.step(block=not burst)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as e:
                log.warning("store.unavailable", error=str(e), retry_in_s=delay)
                self._cache.clear()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.1
            if burst and read == 0:
                break
        log.info("projector.stopped", applied=self.applied)


async def fold_log(projection: Projection, **kwargs: Any) -> int:
    """Fold the whole log into `projection` (used by replay): returns the number of events read."""
    projector = Projector(projection, **kwargs)
    await projector.run(burst=True)
    return projector.applied
