"""Taking over work whose worker stopped renewing its lease (XAUTOCLAIM, paged)."""

from __future__ import annotations

from typing import Any

import structlog

from orchestrator.storage.codec import text
from orchestrator.storage.keys import WORKER_GROUP, Keys

log = structlog.get_logger("backstream.reclaim")


async def reclaim_expired(
    redis: Any, keys: Keys, consumer: str, *, min_idle_ms: int, count: int
) -> list[tuple[str, str]]:
    """Claim up to `count` pending work items idle for `min_idle_ms` or more, as `consumer`.

    XAUTOCLAIM scans at most COUNT*10 pending entries per call, so an empty page with a non-zero
    cursor means "go on", not "done": this pages until the cursor wraps to 0-0. Pending ids whose
    entries were deleted come back in the reply's third element, already dropped from the
    pending list by Redis. Returns (message id, task id) pairs."""
    taken: list[tuple[str, str]] = []
    cursor = "0-0"
    while len(taken) < count:
        reply = await redis.xautoclaim(
            keys.work,
            WORKER_GROUP,
            consumer,
            min_idle_time=min_idle_ms,
            start_id=cursor,
            count=count - len(taken),
        )
        cursor = text(reply[0])
        taken += [(text(mid), text(fields[b"task_id"])) for mid, fields in reply[1] if fields]
        deleted = reply[2] if len(reply) > 2 else []
        if deleted:
            # XAUTOCLAIM (Redis 7) has already dropped them from the pending list.
            log.info("work.deleted_entries_dropped", count=len(deleted))
        if cursor == "0-0":
            break
    return taken
