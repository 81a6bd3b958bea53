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


def merge_groups(
    found: list[tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]],
) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """The consumer groups of several partitions' work streams (`consumer_groups` of each) as
    one deployment's: per group name, `pending` and `lag` summed (lag None when any partition's
    is unknown), `consumers` counted once per name; per consumer, `pending` summed and `idle` the
    least (its latest touch of any partition). Other fields are partition 0's."""
    groups: dict[str, dict[str, Any]] = {}
    members: dict[str, dict[str, dict[str, Any]]] = {}
    for partition_groups, partition_consumers in found:
        for group in partition_groups:
            name = text(group["name"])
            if name not in groups:
                groups[name] = {**group, "pending": 0, "lag": 0}
            merged = groups[name]
            merged["pending"] += int(group["pending"])
            lag = group.get("lag")
            merged["lag"] = None if lag is None or merged["lag"] is None else merged["lag"] + int(lag)
        for name, consumers in partition_consumers.items():
            held = members.setdefault(name, {})
            for consumer in consumers:
                who = text(consumer["name"])
                if who not in held:
                    held[who] = dict(consumer)
                else:
                    held[who]["pending"] += consumer["pending"]
                    held[who]["idle"] = min(held[who]["idle"], consumer["idle"])
    for name, merged in groups.items():
        merged["consumers"] = len(members.get(name, {}))
    return list(groups.values()), {name: list(held.values()) for name, held in members.items()}


async def all_consumer_groups(
    client: RedisClient, partitions: list[Keys]
) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """Every partition's work-stream groups and consumers, merged (see merge_groups)."""
    if len(partitions) == 1:
        return await consumer_groups(client, partitions[0].work)
    return merge_groups([await consumer_groups(client, keys.work) for keys in partitions])


async def all_lag(
    redis: RedisClient, partitions: list[Keys], positions: list[str | None], *, cap: int = LAG_COUNT_CAP
) -> tuple[int, float]:
    """`projector_lag` of every partition: the entries summed (each partition's counted up to
    its share of `cap`, so a scrape reads at most `cap` entries however many partitions
    there are), the seconds of the partition furthest behind."""
    share = max(cap // len(partitions), 1)
    lags = [
        await projector_lag(redis, keys.events, position, cap=share)
        for keys, position in zip(partitions, positions, strict=True)
    ]
    return sum(n for n, _ in lags), max(s for _, s in lags)


async def read_gauges(
    redis: RedisClient, partitions: list[Keys], positions: list[str | None], *, lag_cap: int = LAG_COUNT_CAP
) -> Gauges:
    """The gauges of the projection the `partitions`' keys name (partition 0 first, which also
    holds the heartbeats), whose positions are `positions` (one per partition), summed over the
    partitions. Raises redis errors."""
    statuses = list(Status)
    async with redis.pipeline(transaction=False) as pipe:
        for keys in partitions:
            for status in statuses:
                pipe.zcard(keys.projected_index(status))
            pipe.xlen(keys.dead_letters)
            pipe.zcard(keys.delayed)
            pipe.xlen(keys.events)
            pipe.xlen(keys.work)
        replies = await pipe.execute()
    step = len(statuses) + 4
    sums = [sum(int(r) for r in replies[i::step]) for i in range(step)]
    counts, (dead, delayed, log_len, work_len) = sums[: len(statuses)], sums[len(statuses) :]
    lag_events, lag_seconds = await all_lag(redis, partitions, positions, cap=lag_cap)
    groups, consumers = await all_consumer_groups(redis, partitions)
    home = partitions[0]
    return Gauges(
        tasks=dict(zip(statuses, counts, strict=True)),
        dead_letters=dead,
        retries_waiting=delayed,
        log_entries=log_len,
        work_entries=work_len,
        lag_events=lag_events,
        lag_seconds=lag_seconds,
        groups=groups,
        consumers=consumers,
        workers=await read_beats(redis, home.worker_heartbeats),
        projectors=await read_beats(redis, home.projector_heartbeats),
    )


async def read_readiness(
    redis: RedisClient, partitions: list[Keys], positions: list[str | None], *, lag_cap: int = READY_LAG_CAP
) -> Readiness:
    """The entries not yet projected after each partition's position (each partition's counted
    up to its share of `lag_cap`, summed; the oldest of them all) and the heartbeats (partition
    0's). Raises redis errors."""
    behind, oldest = 0, None
    share = max(lag_cap // len(partitions), 1)
    for keys, position in zip(partitions, positions, strict=True):
        found = stream_entries(await redis.xrange(keys.events, f"({position or '0-0'}", "+", count=share))
        behind += len(found)
        if found:
            first = id_order(text(found[0][0]))[0]
            oldest = first if oldest is None else min(oldest, first)
    projectors = await read_beats(redis, partitions[0].projector_heartbeats)
    workers = await read_beats(redis, partitions[0].worker_heartbeats)
    return Readiness(behind=behind, oldest_ms=oldest, projectors=projectors, workers=workers)


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


async def read_workers(redis: RedisClient, partitions: list[Keys], positions: list[str | None]) -> Workers:
    """The workers page's reads over the `partitions` (partition 0 first: the heartbeats and the
    strategies are its), for the projection at `positions`. Raises redis errors."""
    groups, consumers = await all_consumer_groups(redis, partitions)
    lag_events, lag_seconds = await all_lag(redis, partitions, positions)
    dead = 0
    for keys in partitions:
        dead += int(await redis.xlen(keys.dead_letters))
    home = partitions[0]
    return Workers(
        groups=groups,
        consumers=consumers,
        lag_events=lag_events,
        lag_seconds=lag_seconds,
        dead_letters=dead,
        strategies=await worker_strategies(redis, home),
        beats=await read_beats(redis, home.worker_heartbeats),
    )
