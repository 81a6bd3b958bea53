"""Replay: fold the whole log into fresh projection keys, to verify the live projection or to
replace it (rebuild) while the API keeps serving the old one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import structlog

from consumers.maintenance.archive import ArchiveThenLive
from consumers.projector import Projector
from orchestrator.storage.codec import text
from orchestrator.storage.connections import RedisClient, unparsed
from orchestrator.storage.keys import Keys
from orchestrator.storage.readmodel import POINTER_TTL_S, Projection, live_keys
from orchestrator.storage.scripts.projection import ProjectionScripts

log = structlog.get_logger("backstream.replay")

# Replays fold in bigger batches than the live projector: fewer round trips per event.
REPLAY_BATCH = 5_000
# Keys read per pipelined round trip when a projection is snapshotted (verify): two round trips
# per key (TYPE, then HGETALL) made the comparison of 200,000 events take ~28 s; a few hundred
# keep a reply small.
SNAPSHOT_BATCH = 500
# Slots of the keyspace each SCAN call walks (snapshot, delete_projection). A projection is a
# small part of a keyspace that holds the log and other projections, so most calls find few of
# its keys: 10,000 slots per call (a few ms of Redis) make 10x fewer round trips than 1,000.
SCAN_COUNT = 10_000


class Difference(msgspec.Struct, frozen=True):
    """One field on which the live projection and a fresh fold differ (None: the field is absent)."""

    key: str  # the projection key, relative to the projection root (e.g. `task:<id>`)
    field: str
    live: str | None
    replayed: str | None


def _pattern(root: str) -> str:
    # `[` is the only glob metacharacter a prefix may plausibly hold.
    return root.replace("[", "\\[") + ":*"


async def snapshot(redis: RedisClient, keys: Keys) -> dict[str, dict[str, bytes]]:
    """Every key of a projection as {relative key: {field or member: value}}, position excluded.
    Hashes give their fields and values, sorted sets their members (value b""); keys of other
    types are left out, and a key deleted between the scan and the read gives {}. The scan picks
    the keys of each type (SCAN ... TYPE, Redis 6.0+; XAUTOCLAIM already needs 6.2) and their
    contents are read SNAPSHOT_BATCH keys per pipelined round trip."""
    root = keys.projection_root + ":"
    found: dict[str, dict[str, bytes]] = {}
    for kind in ("hash", "zset"):
        batch: list[str] = []
        async for raw in redis.scan_iter(match=_pattern(keys.projection_root), count=SCAN_COUNT, _type=kind):
            key = text(raw)
            if key[len(root) :] == "position":
                continue
            batch.append(key)
            if len(batch) >= SNAPSHOT_BATCH:
                await _read_keys(redis, kind, batch, len(root), found)
                batch = []
        if batch:
            await _read_keys(redis, kind, batch, len(root), found)
    return found


async def _read_keys(
    redis: RedisClient, kind: str, batch: list[str], root_len: int, found: dict[str, dict[str, bytes]]
) -> None:
    """Add the contents of `batch` (full key names of hashes or of sorted sets, as `kind` says) to
    `found` under their names relative to the projection root, in one pipelined round trip."""
    if kind == "hash":
        # One script call for the whole batch (hgetall_many.lua): its reply, flat lists of bytes
        # in either protocol, is parsed in C; each hash's dict is built by C-level maps.
        contents = await ProjectionScripts(redis).hgetall_many(hashes=batch)
        for key, content in zip(batch, contents, strict=True):
            found[key[root_len:]] = dict(zip(map(bytes.decode, content[0::2]), content[1::2], strict=True))
        return
    # The few index keys: replies read as Redis sent them (the command name spelled so that it
    # matches none of redis-py's callbacks).
    async with redis.pipeline(transaction=False) as pipe:
        for key in batch:
            pipe.execute_command(unparsed(pipe, "ZRANGE"), key, 0, -1, NEVER_DECODE=True)
        contents = await pipe.execute()
    for key, content in zip(batch, contents, strict=True):
        found[key[root_len:]] = dict.fromkeys(map(bytes.decode, content), b"")


def compare(live: dict[str, dict[str, bytes]], replayed: dict[str, dict[str, bytes]]) -> list[Difference]:
    """Every field that differs between two snapshots (as `snapshot` gives them), sorted by key
    then field."""
    differences = []
    for name in sorted(live.keys() | replayed.keys()):
        a, b = live.get(name, {}), replayed.get(name, {})
        if a == b:  # nearly every key: one comparison in C instead of one per field
            continue
        for field in sorted(a.keys() | b.keys()):
            if a.get(field) != b.get(field):
                differences.append(
                    Difference(
                        key=name,
                        field=field,
                        live=a[field].decode() if field in a else None,
                        replayed=b[field].decode() if field in b else None,
                    )
                )
    return differences


async def delete_projection(redis: RedisClient, keys: Keys) -> int:
    """Delete every key of the projection `keys` names (SCAN, 1000 keys per DEL); how many went."""
    deleted = 0
    batch: list[Any] = []
    async for key in redis.scan_iter(match=_pattern(keys.projection_root), count=SCAN_COUNT):
        batch.append(key)
        if len(batch) >= 1000:
            deleted += await redis.delete(*batch)
            batch = []
    if batch:
        deleted += await redis.delete(*batch)
    return deleted


class Replay(msgspec.Struct):
    """What a replay did: events folded, seconds taken, and (for verify) the differences."""

    events: int
    seconds: float
    differences: list[Difference] = []
    projection: str = ""

    @property
    def rate(self) -> float:
        """Events folded per second (0.0 when no time was measured)."""
        return self.events / self.seconds if self.seconds > 0 else 0.0


async def _fold(redis: RedisClient, keys: Keys, archives: list[Path], on_batch: Callable[[int], None] | None) -> int:
    projection = Projection(redis, keys)
    source = ArchiveThenLive(archives, projection.read_log) if archives else None
    projector = Projector(projection, batch_size=REPLAY_BATCH, source=source, on_batch=on_batch)
    await projector.run(burst=True)
    return projector.applied


async def verify_replay(
    redis: RedisClient, keys: Keys, *, archives: list[Path] | None = None, on_batch: Callable[[int], None] | None = None
) -> Replay:
    """Fold the whole log into fresh keys, compare them field by field with the live projection,
    and drop the fresh keys. The live projector should have caught up with the log first (the
    CLI checks); differences in tasks it has not reached yet are real differences then."""
    fresh = keys.with_projection(f"verify-{time.time_ns()}")
    started = time.perf_counter()
    try:
        folded = await _fold(redis, fresh, archives or [], on_batch)
        seconds = time.perf_counter() - started
        live = await live_keys(redis, keys)
        # Both read at once: Redis serves one's reads while this process builds the other's.
        differences = compare(*await asyncio.gather(snapshot(redis, live), snapshot(redis, fresh)))
        return Replay(events=folded, seconds=seconds, differences=differences, projection=live.projection_name)
    finally:
        await delete_projection(redis, fresh)


async def rebuild(
    redis: RedisClient, keys: Keys, *, archives: list[Path] | None = None, on_batch: Callable[[int], None] | None = None
) -> Replay:
    """Fold the log into a new projection while the old one keeps serving, catch up with what
    was written meanwhile, switch the live pointer atomically (only when fully caught up), and
    delete the old projection once no reader can still be using it."""
    old = await live_keys(redis, keys)
    new = keys.with_projection(f"proj-{time.time_ns()}")
    scripts = ProjectionScripts(redis)
    started = time.perf_counter()
    await redis.sadd(keys.projections, new.projection_name)
    folded = 0
    try:
        while True:
            folded += await _fold(redis, new, archives or [], on_batch)
            verdict = await scripts.switch(keys=keys, new=new)
            if verdict.outcome == "ok":
                break
            log.info("replay.catching_up", behind_by=verdict.position)
    except BaseException:
        # A rebuild that fails (a gap in the log, say) leaves nothing behind: a half-built
        # projection registered here would hold retention back for good.
        await delete_projection(redis, new)
        await redis.srem(keys.projections, new.projection_name)
        raise
    seconds = time.perf_counter() - started
    log.info("replay.switched", old=old.projection_name, new=new.projection_name, events=folded)
    # Readers re-read the pointer within POINTER_TTL_S; the old projection stays whole until then.
    await asyncio.sleep(POINTER_TTL_S * 2)
    await delete_projection(redis, old)
    await redis.srem(keys.projections, old.projection_name)
    return Replay(events=folded, seconds=seconds, projection=new.projection_name)
