"""Ops gauges read at one moment: tasks by status, queues, the projector's lag, consumer groups
and heartbeats (for /metrics, /readyz and the dashboard's workers page)."""

from __future__ import annotations

from typing import Any

import msgspec
import redis.exceptions

from orchestrator.domain.ids import id_order
from orchestrator.domain.status import Status
from orchestrator.storage.codec import stream_entries, text
from orchestrator.storage.connections import RedisClient
from orchestrator.storage.keys import Keys
from orchestrator.storage.presence import Beats, read_beats

# Counting the log entries the projector has not applied stops here (XRANGE cost is bounded).
LAG_COUNT_CAP = 10_000
# A readiness probe runs often: it reads at most this many entries to say how far behind it is.
READY_LAG_CAP = 100


class Gauges(msgspec.Struct, frozen=True):
    """What /metrics reports at a scrape. Counts are entries or members; seconds are floats."""

    tasks: dict[Status, int]  # tasks by status (the projection's indexes)
    dead_letters: int
    retries_waiting: int  # tasks waiting out a retry delay
    log_entries: int
    work_entries: int
    lag_events: int  # log entries the projector has not applied, counted up to the cap
    lag_seconds: float  # from the projector's position to the newest entry it has not applied
    groups: list[dict[str, Any]]  # XINFO GROUPS of the work stream, as redis-py gives it
    consumers: dict[str, list[dict[str, Any]]]  # group name -> its XINFO CONSUMERS
    workers: Beats
    projectors: Beats


class Readiness(msgspec.Struct, frozen=True):
    """What /readyz judges by: the log entries not yet projected (counted up to a cap), the
    Redis time in ms of the oldest of them (None: none), and the heartbeats."""

    behind: int
    oldest_ms: int | None
    projectors: Beats
    workers: Beats


async def consumer_groups(
    client: RedisClient, stream: str
) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """The consumer groups of `stream` (XINFO GROUPS) and each group's consumers (XINFO CONSUMERS),
    as redis-py gives them; ([], {}) when the stream does not exist yet. Raises redis errors."""
    try:
        groups = await client.xinfo_groups(stream)
    except redis.exceptions.ResponseError as e:  # no such key: no worker has started yet
        if "no such key" in str(e).lower():
            return [], {}
        raise
    consumers = {}
    for group in groups:
        name = text(group["name"])
        consumers[name] = await client.xinfo_consumers(stream, name)
    return groups, consumers


async def projector_lag(
    redis: RedisClient, stream: str, position: str | None, *, cap: int = LAG_COUNT_CAP
) -> tuple[int, float]:
    """Log entries after the projector's position (counted up to `cap`), and the age in
    seconds of the newest entry it has not applied relative to its position."""
    after = position or "0-0"
    pending = await redis.xrange(stream, f"({after}", "+", count=cap)
    if not pending:
        return 0, 0.0
    newest = id_order(text(pending[-1][0]))[0]
    return len(pending), max(newest - id_order(after)[0], 0) / 1000 if position else 0.0


async def read_gauges(redis: RedisClient, keys: Keys, position: str | None, *, lag_cap: int = LAG_COUNT_CAP) -> Gauges:
    """The gauges of the projection `keys` names, whose position is `position`. Raises redis errors."""
    statuses = list(Status)
    async with redis.pipeline(transaction=False) as pipe:
        for status in statuses:
            pipe.zcard(keys.projected_index(status))
        pipe.xlen(keys.dead_letters)
        pipe.zcard(keys.delayed)
        pipe.xlen(keys.events)
        pipe.xlen(keys.work)
        replies = await pipe.execute()
    counts, (dead, delayed, log_len, work_len) = replies[: len(statuses)], replies[len(statuses) :]
    lag_events, lag_seconds = await projector_lag(redis, keys.events, position, cap=lag_cap)
    groups, consumers = await consumer_groups(redis, keys.work)
    return Gauges(
        tasks={s: int(c) for s, c in zip(statuses, counts, strict=True)},
        dead_letters=int(dead),
        retries_waiting=int(delayed),
        log_entries=int(log_len),
        work_entries=int(work_len),
        lag_events=lag_events,
        lag_seconds=lag_seconds,
        groups=groups,
        consumers=consumers,
        workers=await read_beats(redis, keys.worker_heartbeats),
        projectors=await read_beats(redis, keys.projector_heartbeats),
    )


async def read_readiness(
    redis: RedisClient, keys: Keys, position: str | None, *, lag_cap: int = READY_LAG_CAP
) -> Readiness:
    """The entries after `position` not yet projected (up to `lag_cap`) and the heartbeats.
    Raises redis errors."""
    behind = stream_entries(await redis.xrange(keys.events, f"({position or '0-0'}", "+", count=lag_cap))
    projectors = await read_beats(redis, keys.projector_heartbeats)
    workers = await read_beats(redis, keys.worker_heartbeats)
    oldest = id_order(text(behind[0][0]))[0] if behind else None
    return Readiness(behind=len(behind), oldest_ms=oldest, projectors=projectors, workers=workers)


async def worker_strategies(redis: RedisClient, keys: Keys) -> dict[str, str]:
    """{worker name: what it can run} as each worker announced it (the dashboard's workers page)."""
    return {text(k): text(v) for k, v in (await redis.hgetall(keys.worker_strategies)).items()}


class Workers(msgspec.Struct, frozen=True):
    """What the dashboard's workers page shows: the work stream's consumer groups and their
    consumers (as `consumer_groups` gives them), the projector's lag (entries, seconds), the
    dead letters, what each worker can run, and the workers' heartbeats."""

    groups: list[dict[str, Any]]
    consumers: dict[str, list[dict[str, Any]]]
    lag_events: int
    lag_seconds: float
    dead_letters: int
    strategies: dict[str, str]
    beats: Beats


async def read_workers(redis: RedisClient, keys: Keys, position: str | None) -> Workers:
    """The workers page's reads, for the projection at `position`. Raises redis errors."""
    groups, consumers = await consumer_groups(redis, keys.work)
    lag_events, lag_seconds = await projector_lag(redis, keys.events, position)
    return Workers(
        groups=groups,
        consumers=consumers,
        lag_events=lag_events,
        lag_seconds=lag_seconds,
        dead_letters=int(await redis.xlen(keys.dead_letters)),
        strategies=await worker_strategies(redis, keys),
        beats=await read_beats(redis, keys.worker_heartbeats),
    )
