"""Reading the work streams of every partition as a member of the workers' group: new items, a
restarted worker's own pending items, and items whose lease expired (XAUTOCLAIM). `WorkQueue`
(workqueue.py) adds the claims and the fenced writes of an attempt."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, cast

import structlog

from orchestrator.storage.codec import text
from orchestrator.storage.connections import RedisClient, ready_for_concurrent_calls, routed_to
from orchestrator.storage.keys import WORKER_GROUP, Keys
from orchestrator.storage.partitions import Layout

log = structlog.get_logger("backstream.reclaim")

# A restarted worker takes back at most this many of its own pending items at once.
OWN_PENDING_MAX = 10_000


class WorkItem(NamedTuple):
    """A work item read from a work stream: its message id and the task it is an attempt of (the
    task's id names its partition, so everything done with the item routes by it)."""

    message_id: str
    task_id: str


def _items(reply: Any) -> list[WorkItem]:
    """The items of an XREADGROUP reply; entries whose fields are gone (deleted) are skipped."""
    return [WorkItem(text(m), text(f[b"task_id"])) for _, entries in reply or [] for m, f in entries if f]


class WorkItems:
    """The work streams of the partitions of `layout`, read through `redis` (commands) and
    `reader` (a client without a socket timeout, for blocking reads; default `redis`). Each
    command names one partition's stream (on a cluster, no command may name two). Every method
    raises redis errors."""

    def __init__(self, redis: RedisClient, layout: Layout, *, reader: RedisClient | None = None) -> None:
        self.redis = redis
        self.reader = reader or redis
        self.layout = layout
        self.partitions: list[Keys] = layout.partitions
        # Where the next round over the partitions starts: one further each round, so that a
        # worker that fills its slots early in a round still visits every partition first in turn.
        self._turn = itertools.count()

    @property
    def width(self) -> int:
        """How many partitions are read (every one that holds tasks)."""
        return len(self.partitions)

    def rotation(self) -> list[int]:
        """Every partition once, starting from the one after where the last rotation started."""
        start = next(self._turn) % self.width
        return [*range(start, self.width), *range(start)]

    async def ensure_group(self) -> None:
        """Create the workers' group on every partition's work stream (and the stream) unless it exists."""
        await ready_for_concurrent_calls(self.redis)
        await asyncio.gather(*(self._ensure_group(keys) for keys in self.partitions))

    async def _ensure_group(self, keys: Keys) -> None:
        try:
            await self.redis.xgroup_create(keys.work, WORKER_GROUP, id="0", mkstream=True)
        except Exception as e:  # BUSYGROUP: it exists, which is what we want
            if "BUSYGROUP" not in str(e):
                raise

    async def read_new(self, *, worker: str, count: int, block_ms: int | None, partition: int = 0) -> list[WorkItem]:
        """Up to `count` new items of `partition` for `worker`, waiting up to `block_ms` ms for one
        (None: not at all). They become pending under `worker` until retired or reclaimed. Raises
        IndexError for a partition the layout lacks."""
        stream = self.partitions[partition].work
        block = ("BLOCK", block_ms) if block_ms is not None else ()
        reply = await self._read_group(worker, stream, ">", "COUNT", count, *block)
        # RESP2 (see connections.client): [[stream, [(id, {field: value})]]], None when none came.
        streams = cast(list[list[Any]] | None, reply)
        return [WorkItem(text(m), text(f[b"task_id"])) for _, entries in streams or [] for m, f in entries]

    async def _read_group(self, worker: str, stream: str, after: str, *options: Any) -> Any:
        """XREADGROUP of `stream` as `worker` on the reader, sent to the node holding `stream`:
        redis-py's cluster client would otherwise ask `COMMAND GETKEYS` where its keys are (they
        move with the options), a round trip to the node it started from on every read."""
        send: Callable[..., Awaitable[Any]] = self.reader.execute_command  # redis-py leaves it untyped
        route = await routed_to(self.reader, stream)
        return await send("XREADGROUP", "GROUP", WORKER_GROUP, worker, *options, "STREAMS", stream, after, **route)

    async def read_own_pending(self, *, worker: str) -> list[WorkItem]:
        """The items still pending under `worker` in every partition (a worker restarted under the
        same name holds them), up to OWN_PENDING_MAX per partition; deleted entries are skipped.
        One read per partition."""
        taken: list[WorkItem] = []
        for keys in self.partitions:
            reply = await self._read_group(worker, keys.work, "0", "COUNT", OWN_PENDING_MAX)
            taken += _items(reply)
        return taken

    async def reclaim_expired(self, *, worker: str, min_idle_ms: int, count: int) -> list[WorkItem]:
        """Claim up to `count` pending work items idle for `min_idle_ms` or more, as `worker`,
        from the partitions in turn (`rotation`: a worker that fills `count` early in a round
        starts the next one further on, so no partition's expired leases wait behind another's).
        Costs at least one round trip per partition visited."""
        taken: list[WorkItem] = []
        for partition in self.rotation():
            if len(taken) >= count:
                break
            taken += await self._reclaim_in(self.partitions[partition], worker, min_idle_ms, count - len(taken))
        return taken

    async def _reclaim_in(self, keys: Keys, worker: str, min_idle_ms: int, count: int) -> list[WorkItem]:
        """XAUTOCLAIM on one partition's stream.

        XAUTOCLAIM scans at most COUNT*10 pending entries per call, so an empty page with a
        non-zero cursor means "go on", not "done": this pages until the cursor wraps to 0-0.
        Pending ids whose entries were deleted come back in the reply's third element, already
        dropped from the pending list by Redis."""
        taken: list[WorkItem] = []
        cursor = "0-0"
        while len(taken) < count:
            reply = await self.redis.xautoclaim(
                keys.work, WORKER_GROUP, worker, min_idle_time=min_idle_ms, start_id=cursor, count=count - len(taken)
            )
            cursor = text(reply[0])
            taken += [WorkItem(text(mid), text(fields[b"task_id"])) for mid, fields in reply[1] if fields]
            deleted = reply[2] if len(reply) > 2 else []
            if deleted:
                # XAUTOCLAIM (Redis 7) has already dropped them from the pending list.
                log.info("work.deleted_entries_dropped", count=len(deleted))
            if cursor == "0-0":
                break
        return taken
