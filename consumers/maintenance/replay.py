"""Replay: fold every partition's log into fresh projection keys, to verify the live projection
(partition by partition) or to replace it (rebuild) while the API keeps serving the old one."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import structlog

from consumers.maintenance.archive import ArchiveThenLive
from consumers.maintenance.snapshots import (
    SNAPSHOT_BATCH,
    Difference,
    compare,
    delete_projection,
    retire,
    snapshot,
    snapshots,
)
from consumers.projector import Projector, Source
from orchestrator.storage.connections import RedisClient
from orchestrator.storage.keys import Keys
from orchestrator.storage.partitions import Layout, as_layout
from orchestrator.storage.readmodel import POINTER_TTL_S, Projection
from orchestrator.storage.readmodel.pointer import live_layout
from orchestrator.storage.scripts.projection import ProjectionScripts

__all__ = [
    "REPLAY_BATCH",
    "SNAPSHOT_BATCH",
    "Difference",
    "Replay",
    "compare",
    "delete_projection",
    "rebuild",
    "snapshot",
    "snapshots",
    "verify_replay",
]

log = structlog.get_logger("backstream.replay")

# Replays fold in bigger batches than the live projector: fewer round trips per event.
REPLAY_BATCH = 5_000


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


def _archive_prefix(path: Path) -> str | None:
    """The prefix an archive's first line names (the partition it was exported from), if any."""
    with gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8") as lines:
        first = json.loads(lines.readline() or "{}")
    prefix = first.get("prefix") if isinstance(first, dict) and "archive" in first else None
    return prefix if isinstance(prefix, str) else None


def _sources(projection: Projection, archives: list[Path]) -> Callable[[int], Source] | None:
    """Partition i's source: the archives exported from it (by the prefix their first line
    names; an archive naming no partition of the layout is partition 0's, as before partitions
    existed), then its live log."""
    if not archives:
        return None
    prefixes = {keys.prefix: i for i, keys in enumerate(projection.layout.partitions)}
    mine: dict[int, list[Path]] = {}
    for path in archives:
        mine.setdefault(prefixes.get(_archive_prefix(path) or "", 0), []).append(path)

    def source(index: int) -> Source:
        live = projection.partition(index).read_log
        return ArchiveThenLive(mine[index], live) if index in mine else live

    return source


async def _fold(
    redis: RedisClient, layout: Layout, archives: list[Path], on_batch: Callable[[int], None] | None
) -> int:
    """Fold every partition's log (after its archives) into the projection `layout` names, from
    its stored positions, until each is caught up; returns the events stored."""
    projection = Projection(redis, layout)
    projector = Projector(
        projection, batch_size=REPLAY_BATCH, sources=_sources(projection, archives), on_batch=on_batch
    )
    await projector.run(burst=True)
    return projector.applied


async def verify_replay(
    redis: RedisClient,
    layout: Layout | Keys,
    *,
    archives: list[Path] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> Replay:
    """Fold every partition's log into fresh keys, compare them field by field with the live
    projection, partition by partition, and drop the fresh keys. The live projector should have
    caught up with the log first; differences in tasks it has not reached yet are real
    differences then. A `Keys` stands for the one-partition layout of its prefix."""
    layout = as_layout(layout)
    fresh = layout.with_projection(f"verify-{time.time_ns()}")
    started = time.perf_counter()
    try:
        folded = await _fold(redis, fresh, archives or [], on_batch)
        seconds = time.perf_counter() - started
        live = await live_layout(redis, layout)
        # Both read at once: Redis serves one's reads while this process builds the other's.
        ours, theirs = await asyncio.gather(snapshots(redis, live), snapshots(redis, fresh))
        differences = [
            msgspec.structs.replace(d, partition=i)
            for i, (a, b) in enumerate(zip(ours, theirs, strict=True))
            for d in compare(a, b)
        ]
        return Replay(events=folded, seconds=seconds, differences=differences, projection=live.projection_name)
    finally:
        await delete_projection(redis, fresh)


async def rebuild(
    redis: RedisClient,
    layout: Layout | Keys,
    *,
    archives: list[Path] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> Replay:
    """Fold every partition's log into a new projection while the old one keeps serving, catch
    up with what was written meanwhile, switch the live pointer (in `layout.home`), and delete
    the old projection once no reader or projector can still be using it.

    The switch (`switch.lua`) is atomic with partition 0's position only: the other partitions'
    are in other slots. So each round folds every partition until its log is empty (a burst),
    and the switch is tried only after a round that found little left (the log as of a moment
    ago: what a live projector lags by); the live projector then folds the new projection on
    from its positions, and readers of a task fold its unprojected events themselves. The old
    projection is retired (`retire`) after readers moved on, then deleted."""
    layout = as_layout(layout)
    home = layout.home
    old = await live_layout(redis, layout)
    new = layout.with_projection(f"proj-{time.time_ns()}")
    scripts = ProjectionScripts(redis)
    started = time.perf_counter()
    await redis.sadd(home.projections, new.projection_name)
    folded = 0
    try:
        while True:
            round_folded = await _fold(redis, new, archives or [], on_batch)
            folded += round_folded
            if round_folded > REPLAY_BATCH:
                continue  # what was written during a long round: fold it first
            verdict = await scripts.switch(keys=home, new=new.home)
            if verdict.outcome == "ok":
                break
            log.info("replay.catching_up", behind_by=verdict.position)
    except BaseException:
        # A rebuild that fails (a gap in the log, say) leaves nothing behind: a half-built
        # projection registered here would hold retention back for good.
        await delete_projection(redis, new)
        await redis.srem(home.projections, new.projection_name)
        raise
    seconds = time.perf_counter() - started
    log.info("replay.switched", old=old.projection_name, new=new.projection_name, events=folded)
    # Readers and projectors re-read the pointer within POINTER_TTL_S; the old projection stays
    # whole until then, and refuses every store once retired.
    await asyncio.sleep(POINTER_TTL_S * 2)
    # Unregistered first: retention no longer waits for it (and never reads a retired position).
    await redis.srem(home.projections, old.projection_name)
    await retire(redis, old)
    await delete_projection(redis, old, keep_positions=True)
    return Replay(events=folded, seconds=seconds, projection=new.projection_name)
