"""The one read path: a task, a list, read-your-writes, the audit trail, dead letters, stored
results and the ops gauges, all from the live projection (or a named one) and the log, over every
partition of a deployment (or over one partition, for the projector and replay)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from orchestrator.domain.events import StoredEvent
from orchestrator.domain.state import TaskState, evolve
from orchestrator.domain.status import Status
from orchestrator.storage.codec import text
from orchestrator.storage.connections import RedisClient
from orchestrator.storage.hashform import from_hash
from orchestrator.storage.keys import Keys
from orchestrator.storage.partitions import Layout, as_layout
from orchestrator.storage.readmodel import dead_letters as letters
from orchestrator.storage.readmodel import listing, log
from orchestrator.storage.readmodel.cursor import START, LogCursor
from orchestrator.storage.readmodel.gauges import (
    LAG_COUNT_CAP,
    READY_LAG_CAP,
    Gauges,
    Readiness,
    Workers,
    read_gauges,
    read_readiness,
    read_workers,
)
from orchestrator.storage.readmodel.history import TaskHistory, read_archived
from orchestrator.storage.readmodel.listing import FILTER_BATCH, FILTER_SCAN
from orchestrator.storage.readmodel.pointer import POINTER_TTL_S, live_layout

__all__ = ["FILTER_BATCH", "FILTER_SCAN", "ReadModel"]


class ReadModel:
    """Reads of one projection under its projection name, or, with `follow_live`, of whichever
    one the live-projection pointer names (what the API and the live projector use), and of the
    log beside it. `where` is a deployment's `Layout` (every partition: a task's reads go to the
    partition its id names, lists and gauges merge them) or one partition's `Keys` (the
    projector's and replay's view: every task is that partition's). Every method raises redis
    errors as they come."""

    def __init__(
        self,
        redis: RedisClient,
        where: Layout | Keys,
        *,
        follow_live: bool = False,
        reader: RedisClient | None = None,
    ) -> None:
        self.redis = redis
        # Blocking reads of the log need a client without a socket timeout (see connections.py);
        # everything else uses `redis`, whose timeout turns an outage into an error, not a hang.
        self.reader = reader or redis
        # A `Keys` reads as the one-partition layout of its prefix that every task belongs to.
        self.whole = isinstance(where, Layout)
        self.layout = where if isinstance(where, Layout) else as_layout(where)
        self.partitions = self.layout.partitions
        # Partition 0's keys (the home of the deployment's own keys), or the one partition's.
        self.keys = self.partitions[0]
        self.follow_live = follow_live
        self._checked_at = float("-inf")

    @property
    def width(self) -> int:
        """How many partitions this reads (1 for a one-partition view)."""
        return len(self.partitions)

    def partition_index(self, task_id: str) -> int | None:
        """The index (in `partitions`) of the partition `task_id` belongs to; None when the id
        is not a UUID or names a partition the deployment lacks (such a task is unknown)."""
        if not self.whole:
            return 0
        try:
            return self.layout.partition_index(task_id)
        except (ValueError, IndexError):
            return None

    def keys_of(self, task_id: str) -> Keys | None:
        """The keys of `task_id`'s partition, or None (see partition_index)."""
        index = self.partition_index(task_id)
        return None if index is None else self.partitions[index]

    async def ping(self) -> None:
        """One PING on the commands client: returns once Redis answers. Raises redis errors
        (ConnectionError, TimeoutError: the client's socket timeout) when it does not."""
        await self.redis.ping()

    async def refresh(self, *, force: bool = False) -> None:
        """Follow the live-projection pointer (at most once per POINTER_TTL_S unless forced)."""
        if not self.follow_live:
            return
        now = time.monotonic()
        if force or now - self._checked_at > POINTER_TTL_S:
            self.layout = await live_layout(self.redis, self.layout)
            self.partitions = self.layout.partitions
            self.keys = self.partitions[0]
            self._checked_at = now

    async def position(self) -> str | None:
        """The id of the last event folded into partition 0's projection, or the one
        partition's (None: nothing folded yet). `positions` gives every partition's."""
        await self.refresh()
        value = await self.redis.get(self.keys.projection_position)
        return text(value) if value is not None else None

    async def folded(self) -> list[str | None]:
        """The id of the last event folded into each partition's projection, partition 0 first
        (None: nothing folded there yet)."""
        await self.refresh()
        async with self.redis.pipeline(transaction=False) as pipe:
            for keys in self.partitions:
                pipe.get(keys.projection_position)
            replies = await pipe.execute()
        return [text(v) if v is not None else None for v in replies]

    async def positions(self) -> LogCursor:
        """How far the projection has folded each partition's log, as a log cursor (`0-0`
        where nothing is folded yet): where a reader of the log picks up from the projection."""
        return LogCursor([p or START for p in await self.folded()])

    async def load(self, task_ids: list[str]) -> dict[str, TaskState]:
        """{task id: projected state} for those of `task_ids` the projection holds (one round
        trip; each hash read in its task's partition)."""
        return await listing.load(self.redis, self.keys_of, task_ids)

    async def list_tasks(
        self,
        *,
        status: str | None,
        limit: int,
        cursor: str | None,
        symbol: str | None = None,
        strategy: str | None = None,
        scan: int = FILTER_SCAN,
        batch: int = FILTER_BATCH,
    ) -> tuple[list[TaskState], str | None]:
        """Tasks newest first over every partition, and the cursor of the next page (None: no
        next page). `cursor` is the index member of the last task of the previous page.

        `symbol` (case-insensitive) and `strategy` have no index: they filter while paging through
        the status index, reading at most `scan` members per call, `batch` at a time. The cursor
        stays exact (the member of the last task looked at), so a filtered page may hold fewer
        than `limit` tasks, even none, with a `next_cursor` to go on from; None means the index
        is exhausted. See listing.list_tasks."""
        await self.refresh()
        indexes = [keys.projected_index(status) for keys in self.partitions]
        return await listing.list_tasks(
            self.redis,
            indexes,
            self.load,
            limit=limit,
            cursor=cursor,
            symbol=symbol,
            strategy=strategy,
            scan=scan,
            batch=batch,
        )

    async def chunks(self, job_id: str, start: int, stop: int) -> list[TaskState]:
        """The job's chunks of index `start` to `stop` (excluded), in chunk order (index
        ascending), each as the projection holds it or, before the projector folded it, as
        `current` reads it; ids that name no task are left out. Raises ValueError when `job_id`
        is not a UUID. See listing.chunks."""
        await self.refresh()
        return await listing.chunks(self.load, self.current, job_id, start, stop)

    async def chunk_counts(self, job_id: str) -> dict[str, int]:
        """How many of the job's chunks the projection holds in each status ({} for an id naming
        a partition the deployment lacks; zeros for a task that is no job)."""
        await self.refresh()
        keys = self.keys_of(job_id)
        if keys is None:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for status in Status:
                pipe.zcard(keys.projected_chunks(job_id, status))
            counts = await pipe.execute()
        return {status.value: int(n) for status, n in zip(Status, counts, strict=True)}

    async def all_tasks(self, status: Status) -> list[TaskState]:
        """Every task the projection holds under `status`, oldest submit first over every
        partition (for maintenance: it reads the whole indexes)."""
        await self.refresh(force=True)
        indexes = [keys.projected_index(status) for keys in self.partitions]
        return await listing.all_tasks(self.redis, indexes, self.load)

    async def current(self, task_id: str) -> TaskState | None:
        """The task's state including events the projector has not folded yet (read-your-writes):
        the projected hash, plus any later events of the task folded here with the same evolve.
        None if the task does not exist (also when its id names a partition the deployment lacks).

        The control hash's `seq` (the count of the task's events, read in the same round trip)
        says whether the projection is behind; the events it lacks are read by number."""
        await self.refresh()
        keys = self.keys_of(task_id)
        if keys is None:
            return None
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.projected_task(task_id))
            pipe.hget(keys.control(task_id), "seq")
            fields, counted = await pipe.execute()
        state = from_hash(fields) if fields else None
        folded = state.seq if state else 0
        if counted is not None and folded < int(counted):
            for stored in await log.task_events(self.redis, keys, task_id, after_seq=folded, latest_seq=int(counted)):
                state = evolve(state, stored)
        return state

    async def history(self, task_id: str) -> TaskHistory | None:
        """The task's state and its audit trail, from one read so the two agree: the projected
        state with any events the projector has not folded yet, and the task's events still in
        the log. When retention trimmed the first of them, `archived` says where they went.
        None if the task does not exist (neither in the projection nor in the log)."""
        await self.refresh()
        keys = self.keys_of(task_id)
        if keys is None:
            return None
        fields = await self.redis.hgetall(keys.projected_task(task_id))
        state = from_hash(fields) if fields else None
        events = await log.task_events(self.redis, keys, task_id)
        for stored in events:
            if state is None or stored.event.seq > state.seq:
                state = evolve(state, stored)
        if state is None:
            return None
        first_seq = events[0].event.seq if events else state.seq + 1
        archived = await read_archived(self.redis, keys, first_seq - 1) if first_seq > 1 else None
        return TaskHistory(state=state, events=events, archived=archived)

    async def task_events(self, task_id: str) -> list[StoredEvent]:
        """The task's events still in the log, in order (see log.task_events); [] when unknown."""
        keys = self.keys_of(task_id)
        return [] if keys is None else await log.task_events(self.redis, keys, task_id)

    async def task_event_pages(self, task_id: str, after: str, page: int) -> AsyncIterator[list[StoredEvent]]:
        """The task's events after stream id `after` still in the log, `page` ids of its log index
        at a time (see log.task_event_pages); none when the task is unknown."""
        keys = self.keys_of(task_id)
        if keys is not None:
            async for events in log.task_event_pages(self.redis, keys, task_id, after, page):
                yield events

    async def last_task_event_id(self, task_id: str) -> str | None:
        """The id of the task's newest event still in the log (see log.last_task_event_id)."""
        keys = self.keys_of(task_id)
        return None if keys is None else await log.last_task_event_id(self.redis, keys, task_id)

    def log_pages(self, after: str, page: int) -> AsyncIterator[log.LogPage]:
        """Partition 0's log (or the one partition's) after stream id `after`, `page` entries at
        a time (see log.log_pages). `cursor_pages` reads every partition's."""
        return log.log_pages(self.redis, self.keys.events, after, page)

    def cursor_pages(self, cursor: LogCursor, page: int) -> AsyncIterator[tuple[int, log.LogPage]]:
        """Every partition's log after its position in `cursor`, as (partition, page) pairs,
        `page` entries at a time (see log.cursor_pages)."""
        return log.cursor_pages(self.redis, [keys.events for keys in self.partitions], cursor, page)

    async def latest_id(self) -> str | None:
        """The id of the newest entry of partition 0's log, or the one partition's (None: empty)."""
        return await log.latest_id(self.redis, self.keys.events)

    async def latest(self) -> LogCursor:
        """The log cursor at the newest entry of every partition's log (`0-0` where empty)."""
        return await log.latest_cursor(self.redis, [keys.events for keys in self.partitions])

    async def read_log(self, after: str | None, count: int, block_ms: int | None) -> list[StoredEvent]:
        """Events of partition 0's log (or the one partition's) after `after` in log order, on
        the blocking client (see log.read_batch): the projector's read."""
        return await log.read_batch(self.reader, self.keys.events, after, count, block_ms)

    async def dead_letters(self, *, limit: int, before: str | None) -> list[dict[str, Any]]:
        """Dead letters newest first over every partition (see dead_letters.dead_letters)."""
        return await letters.dead_letters(self.redis, self.partitions, limit=limit, before=before)

    async def result(self, task_id: str) -> bytes | None:
        """A full result stored in Redis (before results moved to the results store), or None."""
        keys = self.keys_of(task_id)
        value = None if keys is None else await self.redis.get(keys.result(task_id))
        # Our clients leave replies undecoded (see connections.client): a value is bytes.
        return value.encode() if isinstance(value, str) else value

    async def gauges(self, *, lag_cap: int = LAG_COUNT_CAP) -> Gauges:
        """The ops gauges at this moment, summed over the partitions (see gauges.read_gauges)."""
        return await read_gauges(self.redis, self.partitions, await self.folded(), lag_cap=lag_cap)

    async def readiness(self, *, lag_cap: int = READY_LAG_CAP) -> Readiness:
        """What /readyz needs (see gauges.read_readiness)."""
        return await read_readiness(self.redis, self.partitions, await self.folded(), lag_cap=lag_cap)

    async def workers(self) -> Workers:
        """What the dashboard's workers page shows (see gauges.read_workers)."""
        return await read_workers(self.redis, self.partitions, await self.folded())
