"""Folding one partition: its events into its projected states and position, exactly once in effect."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import redis.exceptions
import structlog

from orchestrator.domain.errors import ProjectionGapError
from orchestrator.domain.events import StoredEvent
from orchestrator.domain.state import TaskState, evolve
from orchestrator.storage.connections import store_unavailable
from orchestrator.storage.readmodel import Projection
from orchestrator.storage.readmodel.apply import PartitionProjection
from orchestrator.storage.readmodel.pointer import RETIRED

log = structlog.get_logger("backstream.projector")

# A cache of the states this folder last wrote. It stays valid while every one of its batches
# is accepted at the position it expected; it is dropped when another projector moved it.
_CACHE_LIMIT = 200_000

# When the last read found less than a full batch, a following folder waits this long between
# reads: under load it then folds bigger batches (each read, fold and store has a fixed cost that
# small batches pay per event). The API does not wait for it: a task's read folds in the events
# not projected yet (read-your-writes), so only lists and indexes lag, by at most this much.
FOLLOW_INTERVAL_S = 0.02

# Reads one partition's events after a position: (after, count, block_ms) -> events in log order.
Source = Callable[[str | None, int, int | None], Awaitable[list[StoredEvent]]]


class Batch(msgspec.Struct):
    """A folded batch of events: the task states before and after them, to be stored together
    with the new position (the last event's id)."""

    position: str | None  # the stored position the batch was read after
    events: list[StoredEvent]
    before: dict[str, TaskState]
    after: dict[str, TaskState]


class PartitionFolder:
    """Folds partition `index` of `projection` in batches of up to `batch_size` events (a blocking
    read waits up to `block_ms` ms). `source`: where the partition's events are read (default:
    its log; replay passes archives too); `on_stored(n)`: called after each stored batch of n
    events. One folder runs at a time (`run` once); `step` may be called on its own."""

    def __init__(
        self,
        projection: Projection,
        index: int,
        *,
        batch_size: int,
        block_ms: int,
        source: Source | None,
        on_stored: Callable[[int], None],
    ) -> None:
        self.projection = projection
        self.index = index
        self.part: PartitionProjection = projection.partition(index)
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.source = source or self.part.read_log
        self.on_stored = on_stored
        self._cache: dict[str, TaskState] = {}
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Stop following; the batch in flight is still stored."""
        self._stopping.set()

    async def _read(self, position: str | None, *, block: bool) -> list[StoredEvent]:
        """Up to batch_size events after `position` (waiting up to block_ms for one if `block`)."""
        return await self.source(position, self.batch_size, self.block_ms if block else None)

    async def _fold(self, position: str | None, events: list[StoredEvent]) -> Batch | None:
        """Fold `events`, the events after `position`, onto the cached or stored states.
        The cache is updated at once, optimistically: a batch that fails to store clears it."""
        if not events:
            return None
        first_seq: dict[str, int] = {}
        for stored in events:
            first_seq.setdefault(stored.event.task_id, stored.event.seq)
        # A task whose first event here is its `submitted` cannot have a stored state that this
        # batch's position does not already cover (states and position are stored together),
        # so only tasks seen before are looked up.
        missing = [t for t, seq in first_seq.items() if seq > 1 and t not in self._cache]
        before = {t: self._cache[t] for t in first_seq if t in self._cache}
        before.update(await self.part.load(missing))
        after = dict(before)
        for stored in events:
            task_id = stored.event.task_id
            after[task_id] = evolve(after.get(task_id), stored)
        if len(self._cache) > _CACHE_LIMIT:
            self._cache.clear()
        self._cache.update(after)
        return Batch(position, events, before, after)

    async def _store(self, part: PartitionProjection, batch: Batch) -> bool:
        verdict = await part.store(batch.position, batch.events[-1].id, batch.before, batch.after)
        if verdict != "ok":
            # Another projector got there first, or a rebuild switched the live projection:
            # forget what this one thought it knew and read again from the stored position.
            log.info("projector.retrying_batch", reason=verdict, expected=batch.position, partition=self.index)
            self._cache.clear()
            await self.projection.refresh(force=True)
            return False
        self.on_stored(len(batch.events))
        return True

    async def step(self, *, block: bool = False) -> int:
        """Fold and store one batch of events after the stored position. Returns how many were read."""
        await self.projection.refresh()
        self.part = self.projection.partition(self.index)
        position = await self.part.position()
        batch = await self._fold(position, await self._read(position, block=block))
        if batch is None:
            return 0
        await self._store(self.part, batch)
        return len(batch.events)

    async def run(self, *, burst: bool = False) -> None:
        """Follow the partition's log until stopped; in burst mode, return once it is fully folded.

        Batches are pipelined: the next batch is read and folded while Redis stores the last
        one, and its store is sent only once the last one was accepted at the position it
        expected. A rebuild that makes another projection live is followed (the pointer is
        re-read at most every POINTER_TTL_S, and whenever a store is refused). Store outages and
        refusals that pass (`store_unavailable`) are waited out with backoff; the stored position
        says where to go on. A gap in a task's events stops the folder, but only once it is seen
        twice folding onto stored states alone: a batch folded onto one that was then refused, or
        onto a projection a rebuild replaced, shows gaps that are not in the log. While catching
        up (full batches), the batch after the one being folded is read at once."""
        s = _Following(self.part.keys.projection_name)
        while not self._stopping.is_set():
            try:
                if await self._turn(s, burst):
                    break
            except ProjectionGapError as e:
                await s.settle()
                if s.gap_seen and not s.on_unstored:
                    raise
                # Folded onto a batch not stored yet (perhaps never), or seen once: again, from
                # the stored position and the stored states only.
                s.gap_seen = s.gap_seen or not s.on_unstored
                s.fresh = True
                log.info("projector.rechecking_gap", error=str(e), partition=self.index)
            except redis.exceptions.RedisError as e:
                await s.settle()
                if not store_unavailable(e):
                    raise
                log.warning("store.unavailable", error=str(e), error_type=type(e).__name__, retry_in_s=s.delay)
                s.fresh = True
                await asyncio.sleep(s.delay)
                s.delay = min(s.delay * 2, 5.0)
            except BaseException:
                # Stopping on a bad event (or cancelled): what was folded before it still lands.
                _drop(s.ahead)
                if s.inflight is not None:
                    await asyncio.shield(s.inflight)
                raise
        await _settle(s.ahead)
        if s.inflight is not None:
            await s.inflight

    async def _turn(self, s: _Following, burst: bool) -> bool:
        """Read and fold the next batch, and send its store once the one before was accepted.
        Returns True when a burst has folded the whole partition."""
        loop = asyncio.get_running_loop()
        if not await self._resume(s):
            return False
        if not burst and loop.time() < s.next_read:
            await asyncio.sleep(s.next_read - loop.time())
        s.on_unstored = s.inflight is not None
        if s.ahead is not None:
            events, s.ahead = await s.ahead, None
        else:
            events = await self._read(s.position, block=not burst and not s.on_unstored)
        full = len(events) >= self.batch_size
        if full:
            s.ahead = asyncio.create_task(self._read(events[-1].id, block=False))
        part = self.part
        batch = await self._fold(s.position, events)
        s.next_read = 0.0 if full else loop.time() + FOLLOW_INTERVAL_S
        if s.inflight is not None:
            accepted = await s.inflight
            s.inflight = None
            if not accepted:
                # The batch just folded was folded onto states that were never stored,
                # and its fold may have refilled the cache after _store cleared it.
                s.fresh = True
                return False
            s.gap_seen = False
        if batch is None:
            return burst
        s.inflight = asyncio.create_task(self._store(part, batch))
        s.position = batch.events[-1].id
        s.delay = 0.1
        return False

    async def _resume(self, s: _Following) -> bool:
        """Start again from the stored position when `s.fresh`; else follow a switch of the live
        projection. Returns False when the turn must start over (the live projection changed)."""
        if s.fresh:
            await _settle(s.ahead)
            s.ahead = None
            self._cache.clear()
            await self.projection.refresh()
            self.part = self.projection.partition(self.index)
            position = await self.part.position()
            if position == RETIRED:
                # A rebuild replaced this projection after the pointer was last read.
                await self.projection.refresh(force=True)
                if self.projection.layout.projection_name == self.part.keys.projection_name:
                    raise RuntimeError(f"projection {self.part.keys.projection_name} was retired by a rebuild")
                return False
            s.position, s.fresh = position, False
            s.following = self.part.keys.projection_name
            return True
        await self.projection.refresh()
        if self.projection.layout.projection_name != s.following:
            log.info("projector.following", projection=self.projection.layout.projection_name, partition=self.index)
            await _settle(s.inflight)
            s.inflight = None
            s.fresh = True
            return False
        return True


class _Following:
    """Where a following folder is: the position it folds after, the store in flight, the
    batch read ahead (dropped whenever it starts again from the stored position), and whether a
    gap was seen once already."""

    def __init__(self, following: str) -> None:
        self.delay = 0.1  # the next wait on an outage, s
        self.position: str | None = None
        self.inflight: asyncio.Task[bool] | None = None
        self.ahead: asyncio.Task[list[StoredEvent]] | None = None
        self.fresh = True
        self.gap_seen = False
        self.on_unstored = False
        self.next_read = 0.0  # event-loop time of the next read
        self.following = following

    async def settle(self) -> None:
        """Let the store in flight and the read ahead finish, and forget both."""
        await _settle(self.inflight)
        await _settle(self.ahead)
        self.ahead = None
        self.inflight = None


def _drop(task: asyncio.Task[Any] | None) -> None:
    """Cancel a read ahead that is still running, or take the error of one that failed (so it
    is not reported as never retrieved): its events are not wanted."""
    if task is None:
        return
    if not task.done():
        task.cancel()
    elif not task.cancelled():
        task.exception()


async def _settle(inflight: asyncio.Task[Any] | None) -> None:
    """Let a store or read in flight finish, whatever its outcome (the stored position tells)."""
    if inflight is not None:
        await asyncio.gather(inflight, return_exceptions=True)
