"""Reading the work stream as a member of the workers' group: new items, a restarted worker's own
pending items, and items whose lease expired (XAUTOCLAIM). `WorkQueue` (workqueue.py) adds the
claims and the fenced writes of an attempt."""

from __future__ import annotations

from typing import Any, NamedTuple, cast

import structlog

from orchestrator.storage.codec import text
from orchestrator.storage.connections import RedisClient
from orchestrator.storage.keys import WORKER_GROUP, Keys

log = structlog.get_logger("backstream.reclaim")

# A restarted worker takes back at most this many of its own pending items at once.
OWN_PENDING_MAX = 10_000


class WorkItem(NamedTuple):
    """A work item read from the stream: its message id and the task it is an attempt of."""

    message_id: str
    task_id: str


def _items(reply: Any) -> list[WorkItem]:
    """The items of an XREADGROUP reply; entries whose fields are gone (deleted) are skipped."""
    return [WorkItem(text(m), text(f[b"task_id"])) for _, entries in reply or [] for m, f in entries if f]


class WorkItems:
    """The work stream of the keys under one prefix, read through `redis` (commands) and
    `reader` (a client without a socket timeout, for blocking reads; default `redis`). Every
    method raises redis errors."""

    def __init__(self, redis: RedisClient, keys: Keys, *, reader: RedisClient | None = None) -> None:
        self.redis = redis
        self.reader = reader or redis
        self.keys = keys

    async def ensure_group(self) -> None:
        """Create the workers' group on the work stream (and the stream) unless it exists."""
        try:
            await self.redis.xgroup_create(self.keys.work, WORKER_GROUP, id="0", mkstream=True)
        except Exception as e:  # BUSYGROUP: it exists, which is what we want
            if "BUSYGROUP" not in str(e):
                raise

    async def read_new(self, *, worker: str, count: int, block_ms: int | None) -> list[WorkItem]:
        """Up to `count` new items for `worker`, waiting up to `block_ms` ms for one (None: not
        at all). They become pending under `worker` until retired or reclaimed."""
        reply = await self.reader.xreadgroup(WORKER_GROUP, worker, {self.keys.work: ">"}, count=count, block=block_ms)
        # RESP2 (see connections.client): [[stream, [(id, {field: value})]]], None when none came.
        streams = cast(list[list[Any]] | None, reply)
        return [WorkItem(text(m), text(f[b"task_id"])) for _, entries in streams or [] for m, f in entries]

    async def read_own_pending(self, *, worker: str) -> list[WorkItem]:
        """The items still pending under `worker` (a worker restarted under the same name holds
        them), up to OWN_PENDING_MAX; deleted entries are skipped."""
        reply = await self.reader.xreadgroup(WORKER_GROUP, worker, {self.keys.work: "0"}, count=OWN_PENDING_MAX)
        return _items(reply)

    async def reclaim_expired(self, *, worker: str, min_idle_ms: int, count: int) -> list[WorkItem]:
        """Claim up to `count` pending work items idle for `min_idle_ms` or more, as `worker`.

        XAUTOCLAIM scans at most COUNT*10 pending entries per call, so an empty page with a
        non-zero cursor means "go on", not "done": this pages until the cursor wraps to 0-0.
        Pending ids whose entries were deleted come back in the reply's third element, already
        dropped from the pending list by Redis."""
        taken: list[WorkItem] = []
        cursor = "0-0"
        while len(taken) < count:
            reply = await self.redis.xautoclaim(
                self.keys.work,
                WORKER_GROUP,
                worker,
                min_idle_time=min_idle_ms,
                start_id=cursor,
                count=count - len(taken),
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
