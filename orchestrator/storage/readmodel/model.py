"""The one read path: a task, a list, read-your-writes, the audit trail, dead letters, stored
results and the ops gauges, all from the live projection (or a named one) and the log."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from orchestrator.domain.events import StoredEvent
from orchestrator.domain.ids import id_order
from orchestrator.domain.state import TaskState, evolve
from orchestrator.domain.status import Status
from orchestrator.storage.codec import decode_json, text
from orchestrator.storage.connections import RedisClient
from orchestrator.storage.hashform import from_hash, index_position
from orchestrator.storage.keys import Keys
from orchestrator.storage.readmodel import dead_letters as letters
from orchestrator.storage.readmodel import log
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
from orchestrator.storage.readmodel.pointer import POINTER_TTL_S, live_keys

# A filtered list (by symbol or strategy, which have no index) reads the status index in batches of
# FILTER_BATCH and stops after FILTER_SCAN members, so one request's cost stays bounded.
FILTER_BATCH = 200
FILTER_SCAN = 5000
# Task hashes loaded per pipelined round trip when a whole status index is read.
LOAD_BATCH = 500


def _task_id(member: str) -> str:
    """The task id of an index member (`<position>|<task id>`)."""
    return member.split("|", 1)[1]


class ReadModel:
    """Reads of one projection under `keys.projection_name`, or, with `follow_live`, of whichever
    one the live-projection pointer names (what the API and the live projector use), and of the
    log beside it. Every method raises redis errors as they come."""

    def __init__(
        self, redis: RedisClient, keys: Keys, *, follow_live: bool = False, reader: RedisClient | None = None
    ) -> None:
        self.redis = redis
        # Blocking reads of the log need a client without a socket timeout (see connections.py);
        # everything else uses `redis`, whose timeout turns an outage into an error, not a hang.
        self.reader = reader or redis
        self.keys = keys
        self.follow_live = follow_live
        self._checked_at = float("-inf")

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
            self.keys = await live_keys(self.redis, self.keys)
            self._checked_at = now

    async def position(self) -> str | None:
        """The id of the last event folded into the projection (None: nothing folded yet)."""
        await self.refresh()
        value = await self.redis.get(self.keys.projection_position)
        return text(value) if value is not None else None

    async def load(self, task_ids: list[str]) -> dict[str, TaskState]:
        """{task id: projected state} for those of `task_ids` the projection holds (one round trip)."""
        if not task_ids:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.hgetall(self.keys.projected_task(task_id))
            replies = await pipe.execute()
        return {task_id: from_hash(fields) for task_id, fields in zip(task_ids, replies, strict=True) if fields}

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
        """Tasks newest first, and the cursor of the next page (None: no next page). `cursor` is
        the index member of the last task of the previous page.

        `symbol` (case-insensitive) and `strategy` have no index: they filter while paging through
        the status index, reading at most `scan` members per call, `batch` at a time. The cursor stays exact (the
        member of the last task looked at), so a filtered page may hold fewer than `limit` tasks,
        even none, with a `next_cursor` to go on from; None means the index is exhausted."""
        await self.refresh()
        index = self.keys.projected_index(status)
        upper = f"({cursor}" if cursor else "+"
        if symbol is None and strategy is None:
            found = await self.redis.zrevrangebylex(index, upper, "-", start=0, num=limit + 1)
            page = [text(m) for m in found[:limit]]
            states = await self.load([_task_id(m) for m in page])
            tasks = [states[_task_id(m)] for m in page if _task_id(m) in states]
            return tasks, (page[-1] if len(found) > limit else None)
        wanted = symbol.casefold() if symbol is not None else None
        tasks = []
        scanned = 0
        while True:
            want = min(batch, scan - scanned)
            members = [text(m) for m in await self.redis.zrevrangebylex(index, upper, "-", start=0, num=want)]
            states = await self.load([_task_id(m) for m in members])
            for member in members:
                scanned += 1
                state = states.get(_task_id(member))
                if (
                    state is not None
                    and (wanted is None or state.spec.symbol.casefold() == wanted)
                    and (strategy is None or state.spec.strategy == strategy)
                ):
                    tasks.append(state)
                    if len(tasks) == limit:
                        return tasks, member
                if scanned >= scan:
                    return tasks, member
            if len(members) < want:
                return tasks, None
            upper = f"({members[-1]}"

    async def all_tasks(self, status: Status) -> list[TaskState]:
        """Every task the projection holds under `status`, oldest submit first, loaded
        LOAD_BATCH hashes per round trip (for maintenance: it reads the whole index)."""
        await self.refresh(force=True)
        members = [text(m) for m in await self.redis.zrangebylex(self.keys.projected_index(status), "-", "+")]
        ids = [_task_id(m) for m in members]
        states: list[TaskState] = []
        for start in range(0, len(ids), LOAD_BATCH):
            loaded = await self.load(ids[start : start + LOAD_BATCH])
            states += [loaded[t] for t in ids[start : start + LOAD_BATCH] if t in loaded]
        return states

    async def finished_before(self, stream_id: str) -> list[str]:
        """Completed or cancelled tasks of the live projection, submitted and last changed before
        `stream_id` (what retention may compact). Failed tasks are left out: a user may still
        retry them."""
        projection = await live_keys(self.redis, self.keys)
        found = []
        for status in (Status.COMPLETED, Status.CANCELLED):
            index = projection.projected_index(status)
            members = [text(m) for m in await self.redis.zrangebylex(index, "-", f"({index_position(stream_id)}")]
            task_ids = [_task_id(m) for m in members]
            async with self.redis.pipeline(transaction=False) as pipe:
                for task_id in task_ids:
                    pipe.hget(projection.projected_task(task_id), "last_event_id")
                lasts = await pipe.execute()
            found += [
                t
                for t, last in zip(task_ids, lasts, strict=True)
                if last and id_order(decode_json(last)) < id_order(stream_id)
            ]
        return found

    async def current(self, task_id: str) -> TaskState | None:
        """The task's state including events the projector has not folded yet (read-your-writes):
        the projected hash, plus any later events of the task folded here with the same evolve.
        None if the task does not exist.

        The log index holds the task's events from its first on, except after retention dropped
        a finished task's index and a later event (`result_deleted`) started a new one: the
        control hash's `seq` (the count of the task's events) says how many the index lacks."""
        await self.refresh()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.projected_task(task_id))
            pipe.llen(self.keys.task_log(task_id))
            pipe.hget(self.keys.control(task_id), "seq")
            fields, logged, counted = await pipe.execute()
        state = from_hash(fields) if fields else None
        missing = max(int(counted) - logged, 0) if counted is not None else 0
        folded = state.seq if state else 0
        if logged and folded < missing + logged:
            for stored in await log.task_events(self.redis, self.keys, task_id, start=max(folded - missing, 0)):
                if stored.event.seq > folded:
                    state = evolve(state, stored)
        return state

    async def history(self, task_id: str) -> TaskHistory | None:
        """The task's state and its audit trail, from one read so the two agree: the projected
        state with any events the projector has not folded yet, and the task's events still in
        the log. When retention trimmed the first of them, `archived` says where they went.
        None if the task does not exist (neither in the projection nor in the log)."""
        await self.refresh()
        fields = await self.redis.hgetall(self.keys.projected_task(task_id))
        state = from_hash(fields) if fields else None
        events = await self.task_events(task_id)
        for stored in events:
            if state is None or stored.event.seq > state.seq:
                state = evolve(state, stored)
        if state is None:
            return None
        first_seq = events[0].event.seq if events else state.seq + 1
        archived = await read_archived(self.redis, self.keys, first_seq - 1) if first_seq > 1 else None
        return TaskHistory(state=state, events=events, archived=archived)

    async def task_events(self, task_id: str) -> list[StoredEvent]:
        """The task's events still in the log, in order (see log.task_events)."""
        return await log.task_events(self.redis, self.keys, task_id)

    def task_event_pages(self, task_id: str, after: str, page: int) -> AsyncIterator[list[StoredEvent]]:
        """The task's events after stream id `after` still in the log, `page` ids of its log index
        at a time (see log.task_event_pages)."""
        return log.task_event_pages(self.redis, self.keys, task_id, after, page)

    async def last_task_event_id(self, task_id: str) -> str | None:
        """The id of the task's newest event still in the log (see log.last_task_event_id)."""
        return await log.last_task_event_id(self.redis, self.keys, task_id)

    def log_pages(self, after: str, page: int) -> AsyncIterator[log.LogPage]:
        """The whole log after stream id `after`, `page` entries at a time (see log.log_pages)."""
        return log.log_pages(self.redis, self.keys.events, after, page)

    async def latest_id(self) -> str | None:
        """The id of the newest entry of the log (None: it is empty)."""
        return await log.latest_id(self.redis, self.keys.events)

    async def read_log(self, after: str | None, count: int, block_ms: int | None) -> list[StoredEvent]:
        """Events after `after` in log order, on the blocking client (see log.read_batch)."""
        return await log.read_batch(self.reader, self.keys.events, after, count, block_ms)

    async def dead_letters(self, *, limit: int, before: str | None) -> list[dict[str, Any]]:
        """Dead letters newest first (see dead_letters.dead_letters for their shape)."""
        return await letters.dead_letters(self.redis, self.keys, limit=limit, before=before)

    async def result(self, task_id: str) -> bytes | None:
        """A full result stored in Redis (before results moved to the results store), or None."""
        value = await self.redis.get(self.keys.result(task_id))
        # Our clients leave replies undecoded (see connections.client): a value is bytes.
        return value.encode() if isinstance(value, str) else value

    async def gauges(self, *, lag_cap: int = LAG_COUNT_CAP) -> Gauges:
        """The ops gauges at this moment (see gauges.read_gauges)."""
        return await read_gauges(self.redis, self.keys, await self.position(), lag_cap=lag_cap)

    async def readiness(self, *, lag_cap: int = READY_LAG_CAP) -> Readiness:
        """What /readyz needs (see gauges.read_readiness)."""
        return await read_readiness(self.redis, self.keys, await self.position(), lag_cap=lag_cap)

    async def workers(self) -> Workers:
        """What the dashboard's workers page shows (see gauges.read_workers)."""
        return await read_workers(self.redis, self.keys, await self.position())
