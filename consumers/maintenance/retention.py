"""Retention: trim what Redis no longer needs, and never an entry some reader still needs."""

from __future__ import annotations

import msgspec
import structlog
from redis.typing import EncodableT

from orchestrator.domain.ids import id_order
from orchestrator.storage.codec import stream_entries, text
from orchestrator.storage.connections import RedisClient, routed_to
from orchestrator.storage.keys import Keys
from orchestrator.storage.readmodel import ReadModel
from orchestrator.storage.readmodel.pointer import projection_positions

log = structlog.get_logger("backstream.retention")


class RetentionReport(msgspec.Struct):
    """What a retention run trimmed (entries, tasks compacted, dead letters) and Redis's memory
    in bytes before and after (None where INFO is not available)."""

    keep_from: str | None  # the oldest log id kept; None when nothing could be trimmed
    limited_by: str  # what decided keep_from: horizon, archive, or a projection's position
    events_trimmed: int
    tasks_compacted: int  # finished tasks whose control hash and log index were dropped
    dead_letters_trimmed: int
    used_memory_before: int | None
    used_memory_after: int | None


def _after(stream_id: str) -> str:
    ms, seq = id_order(stream_id)
    return f"{ms}-{seq + 1}"


async def _used_memory(redis: RedisClient, keys: Keys) -> int | None:
    """used_memory of the server holding the deployment's keys (on a cluster, that slot's node)."""
    try:
        return int((await redis.info("memory", **await routed_to(redis, keys.events)))["used_memory"])
    except Exception:  # the embedded store has no INFO
        return None


async def apply_retention(redis: RedisClient, keys: Keys, *, horizon_ms: int, dry_run: bool = False) -> RetentionReport:
    """Trim log entries older than the horizon that are archived (`backstream export`) and folded
    into every projection; drop the control hash and log index of tasks that finished before
    that point (their state stays in the projection, their result stays readable); trim dead
    letters older than the horizon. Acknowledged work items need nothing: they are deleted
    when their task ends."""
    memory_before = await _used_memory(redis, keys)
    # Redis's clock where the log is: stream ids are that server's milliseconds.
    seconds, micros = await redis.execute_command("TIME", **await routed_to(redis, keys.events))
    candidates = {"horizon": f"{int(seconds) * 1000 + int(micros) // 1000 - horizon_ms}-0"}
    archived = await redis.get(keys.archived_through)
    candidates["archive"] = _after(text(archived)) if archived else "0-0"
    for name, position in (await projection_positions(redis, keys)).items():
        candidates[f"projection {name}"] = _after(position) if position else "0-0"
    limited_by, keep_from = min(candidates.items(), key=lambda item: id_order(item[1]))
    if keep_from == "0-0":
        return RetentionReport(None, limited_by, 0, 0, 0, memory_before, memory_before)

    finished = await ReadModel(redis, keys).finished_before(keep_from)
    # Leave out what an earlier run compacted already, so the count says what this run did.
    async with redis.pipeline(transaction=False) as pipe:
        for task_id in finished:
            pipe.exists(keys.control(task_id))
        present = await pipe.execute()
    finished = [t for t, here in zip(finished, present, strict=True) if here]
    if dry_run:
        trimmed = len(stream_entries(await redis.xrange(keys.events, "-", f"({keep_from}")))
        return RetentionReport(keep_from, limited_by, trimmed, len(finished), 0, memory_before, memory_before)
    # Recorded before anything is trimmed, so a reader never meets a trimmed task without it.
    mark: dict[EncodableT, EncodableT] = {
        "log_starts_at": keep_from,
        "at_ms": str(int(seconds) * 1000 + int(micros) // 1000),
    }
    if archived:
        mark["archived_through"] = text(archived)
    await redis.hset(keys.retention, mapping=mark)
    trimmed = await redis.xtrim(keys.events, minid=keep_from, approximate=False)
    for start in range(0, len(finished), 500):
        chunk = finished[start : start + 500]
        await redis.delete(*[k for t in chunk for k in (keys.control(t), keys.task_log(t))])
    dead = await redis.xtrim(keys.dead_letters, minid=candidates["horizon"], approximate=False)
    report = RetentionReport(
        keep_from, limited_by, int(trimmed), len(finished), int(dead), memory_before, await _used_memory(redis, keys)
    )
    log.info("retention.applied", **msgspec.to_builtins(report))
    return report
