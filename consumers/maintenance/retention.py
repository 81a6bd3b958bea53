"""Retention: trim what Redis no longer needs, and never an entry some reader still needs.

Each partition is trimmed on its own (its log, dead letters, archived-through and retention
mark), below every projection's position in that partition; the projections themselves (the
live pointer and the set of those being built) are the deployment's, in partition 0."""

from __future__ import annotations

import msgspec
import structlog
from redis.typing import EncodableT

from orchestrator.domain.ids import id_order
from orchestrator.storage.codec import decode_json, stream_entries, text
from orchestrator.storage.connections import RedisClient, routed_to
from orchestrator.storage.keys import Keys
from orchestrator.storage.partitions import Layout, chunk_id
from orchestrator.storage.readmodel.listing import finished_before
from orchestrator.storage.readmodel.pointer import live_keys, projection_positions

log = structlog.get_logger("backstream.retention")


class RetentionReport(msgspec.Struct, omit_defaults=True):
    """What a retention run trimmed in one partition (entries, tasks compacted, dead letters) and
    the memory in bytes of the server holding it, before and after (None where INFO is not
    available)."""

    keep_from: str | None  # the oldest log id kept; None when nothing could be trimmed
    limited_by: str  # what decided keep_from: horizon, archive, or a projection's position
    events_trimmed: int
    tasks_compacted: int  # finished tasks whose control hash (with its log index) was dropped
    dead_letters_trimmed: int
    used_memory_before: int | None
    used_memory_after: int | None
    # Which partition, in a deployment of more than one (left out of the report otherwise).
    partition: int | None = None


class DeploymentRetention(msgspec.Struct):
    """A retention run over every partition of a deployment: the totals, and each partition's
    report (partition 0 first)."""

    events_trimmed: int
    tasks_compacted: int
    dead_letters_trimmed: int
    partitions: list[RetentionReport]


def _after(stream_id: str) -> str:
    ms, seq = id_order(stream_id)
    return f"{ms}-{seq + 1}"


async def _used_memory(redis: RedisClient, keys: Keys) -> int | None:
    """used_memory of the server holding the partition's keys (on a cluster, that slot's node)."""
    try:
        return int((await redis.info("memory", **await routed_to(redis, keys.events)))["used_memory"])
    except Exception:  # the embedded store has no INFO
        return None


async def _compactable(redis: RedisClient, keys: Keys, home: Keys, keep_from: str) -> list[str]:
    """The finished tasks below `keep_from` whose control hash is still there (what an earlier run
    compacted already is left out, so the count says what this run does), with the chunks of the
    finished jobs among them: those are in no index of the task list, and ended before their job."""
    live = keys.with_projection((await live_keys(redis, home)).projection_name)
    finished = await finished_before(redis, live, keep_from)
    async with redis.pipeline(transaction=False) as pipe:
        for task_id in finished:
            pipe.hget(live.projected_task(task_id), "job")
        jobs = await pipe.execute()
    for job_id, job in zip(list(finished), jobs, strict=True):
        if job:
            finished += [chunk_id(job_id, i) for i in range(int(decode_json(job)["chunks"]))]
    async with redis.pipeline(transaction=False) as pipe:
        for task_id in finished:
            pipe.exists(keys.control(task_id))
        present = await pipe.execute()
    return [t for t, here in zip(finished, present, strict=True) if here]


async def apply_retention(
    redis: RedisClient,
    keys: Keys,
    *,
    horizon_ms: int,
    dry_run: bool = False,
    home: Keys | None = None,
    partition: int | None = None,
) -> RetentionReport:
    """Trim partition `keys`'s log entries older than the horizon that are archived (`backstream
    export`) and folded into every projection; drop the control hash and log index of tasks that
    finished before that point (their state stays in the projection, their result stays
    readable); trim dead letters older than the horizon. Acknowledged work items need nothing:
    they are deleted when their task ends. `home`: partition 0, where the projections are
    named (default: `keys`, a one-partition deployment); `partition`: the number the report carries."""
    home = home or keys
    memory_before = await _used_memory(redis, keys)
    # Redis's clock where the partition's log is: its stream ids are that server's milliseconds.
    seconds, micros = await redis.execute_command("TIME", **await routed_to(redis, keys.events))
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    candidates = {"horizon": f"{now_ms - horizon_ms}-0"}
    archived = await redis.get(keys.archived_through)
    candidates["archive"] = _after(text(archived)) if archived else "0-0"
    for name, position in (await projection_positions(redis, keys, home)).items():
        candidates[f"projection {name}"] = _after(position) if position else "0-0"
    limited_by, keep_from = min(candidates.items(), key=lambda item: id_order(item[1]))
    if keep_from == "0-0":
        return RetentionReport(None, limited_by, 0, 0, 0, memory_before, memory_before, partition)

    finished = await _compactable(redis, keys, home, keep_from)
    if dry_run:
        trimmed = len(stream_entries(await redis.xrange(keys.events, "-", f"({keep_from}")))
        return RetentionReport(
            keep_from, limited_by, trimmed, len(finished), 0, memory_before, memory_before, partition
        )
    # Recorded before anything is trimmed, so a reader never meets a trimmed task without it.
    mark: dict[EncodableT, EncodableT] = {"log_starts_at": keep_from, "at_ms": str(now_ms)}
    if archived:
        mark["archived_through"] = text(archived)
    await redis.hset(keys.retention, mapping=mark)
    trimmed = await redis.xtrim(keys.events, minid=keep_from, approximate=False)
    for start in range(0, len(finished), 500):
        chunk = finished[start : start + 500]
        # A job's aggregate and chunk list go with it (a task that is no job has neither).
        await redis.delete(
            *[k for t in chunk for k in (keys.control(t), keys.task_log(t), keys.job(t), keys.job_chunks(t))]
        )
    dead = await redis.xtrim(keys.dead_letters, minid=candidates["horizon"], approximate=False)
    memory_after = await _used_memory(redis, keys)
    report = RetentionReport(
        keep_from, limited_by, int(trimmed), len(finished), int(dead), memory_before, memory_after, partition
    )
    log.info("retention.applied", **msgspec.to_builtins(report))
    return report


async def apply_layout_retention(
    redis: RedisClient, layout: Layout, *, horizon_ms: int, dry_run: bool = False
) -> DeploymentRetention:
    """`apply_retention` on every partition of `layout`, one after the other (each below every
    projection's position in it). Each report carries its partition's number when there is more
    than one. Raises redis errors; partitions done before an error stay done."""
    several = layout.width > 1
    reports = [
        await apply_retention(
            redis, keys, horizon_ms=horizon_ms, dry_run=dry_run, home=layout.home, partition=i if several else None
        )
        for i, keys in enumerate(layout.partitions)
    ]
    return DeploymentRetention(
        events_trimmed=sum(r.events_trimmed for r in reports),
        tasks_compacted=sum(r.tasks_compacted for r in reports),
        dead_letters_trimmed=sum(r.dead_letters_trimmed for r in reports),
        partitions=reports,
    )
