"""Snapshots of a projection (every key's contents, per partition), their comparison, and the
deletion and retirement of a projection: what `replay --verify/--rebuild` reads and cleans up."""

from __future__ import annotations

import msgspec

from orchestrator.storage.codec import text
from orchestrator.storage.connections import RedisClient, unparsed
from orchestrator.storage.keys import Keys
from orchestrator.storage.partitions import Layout, as_layout
from orchestrator.storage.readmodel.pointer import RETIRED, RETIRED_KEEP_MS
from orchestrator.storage.scripts.projection import ProjectionScripts

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

    key: str  # the projection key, relative to its partition's projection root (e.g. `task:<id>`)
    field: str
    live: str | None
    replayed: str | None
    partition: int = 0


def _glob(literal: str) -> str:
    """`literal` escaped for a SCAN MATCH pattern."""
    return "".join(f"\\{c}" if c in "[]*?\\" else c for c in literal)


def _layout_pattern(layout: Layout) -> str:
    """A SCAN MATCH pattern that every partition's keys of `layout`'s projection match (and a few
    others may: `_Roots` sorts them out): `*` where partition_prefix inserts `:pNN`."""
    prefix = layout.prefix
    opening = prefix.find("{")
    closing = prefix.find("}", opening + 1) if opening >= 0 else -1
    tagged = closing > opening + 1
    shared = _glob(prefix[:closing]) + "*" + _glob(prefix[closing:]) if tagged else _glob(prefix) + "*"
    return f"{shared}:{_glob(layout.projection_name)}:*"


class _Roots:
    """Which partition of a projection a key belongs to, by its projection root."""

    def __init__(self, layout: Layout) -> None:
        self.name = f":{layout.projection_name}:"
        self.roots = {keys.projection_root + ":": i for i, keys in enumerate(layout.partitions)}
        self.length = {i: len(root) for root, i in self.roots.items()}

    def of(self, key: str) -> tuple[int, str] | None:
        """(partition, key relative to its projection root), or None for another's key."""
        cut = key.find(self.name)
        while cut >= 0:
            root = key[: cut + len(self.name)]
            if root in self.roots:
                return self.roots[root], key[len(root) :]
            cut = key.find(self.name, cut + 1)
        return None


async def snapshot(redis: RedisClient, keys: Keys) -> dict[str, dict[str, bytes]]:
    """Every key of one partition's projection (`keys`) as {relative key: {field or member:
    value}}, position excluded. Hashes give their fields and values, sorted sets their members
    (value b""); keys of other types are left out, and a key deleted between the scan and the
    read gives {}. The scan picks the keys of each type (SCAN ... TYPE, Redis 6.0+) and their
    contents are read SNAPSHOT_BATCH keys per pipelined round trip."""
    return (await snapshots(redis, as_layout(keys)))[0]


async def snapshots(redis: RedisClient, layout: Layout) -> list[dict[str, dict[str, bytes]]]:
    """`snapshot` of every partition of `layout`'s projection, partition 0 first, from one SCAN of
    the keyspace (per type); each batch read holds keys of one partition (one slot)."""
    roots = _Roots(layout)
    found: list[dict[str, dict[str, bytes]]] = [{} for _ in range(layout.width)]
    for kind in ("hash", "zset"):
        batches: dict[int, list[str]] = {}
        async for raw in redis.scan_iter(match=_layout_pattern(layout), count=SCAN_COUNT, _type=kind):
            key = text(raw)
            place = roots.of(key)
            if place is None or place[1] == "position":
                continue
            batch = batches.setdefault(place[0], [])
            batch.append(key)
            if len(batch) >= SNAPSHOT_BATCH:
                await _read_keys(redis, kind, batch, roots.length[place[0]], found[place[0]])
                batches[place[0]] = []
        for index, batch in batches.items():
            if batch:
                await _read_keys(redis, kind, batch, roots.length[index], found[index])
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


async def delete_projection(redis: RedisClient, layout: Layout | Keys, *, keep_positions: bool = False) -> int:
    """Delete every key of the projection `layout` names, in every partition (one SCAN; DEL of up
    to 1000 keys of one partition at a time); how many went. `keep_positions`: leave the
    positions (a rebuild retired them first)."""
    layout = as_layout(layout)
    roots = _Roots(layout)
    deleted = 0
    batches: dict[int, list[str]] = {}
    async for raw in redis.scan_iter(match=_layout_pattern(layout), count=SCAN_COUNT):
        key = text(raw)
        place = roots.of(key)
        if place is None or (keep_positions and place[1] == "position"):
            continue
        batch = batches.setdefault(place[0], [])
        batch.append(key)
        if len(batch) >= 1000:
            deleted += await redis.delete(*batch)
            batches[place[0]] = []
    for batch in batches.values():
        if batch:
            deleted += await redis.delete(*batch)
    return deleted


async def retire(redis: RedisClient, layout: Layout) -> None:
    """Mark the projection `layout` names as replaced in every partition: its positions read
    RETIRED (for RETIRED_KEEP_MS), so `apply.lua` refuses any store into it from now on, even one
    a projector that has not seen the switch yet folded from no position."""
    async with redis.pipeline(transaction=False) as pipe:
        for keys in layout.partitions:
            pipe.set(keys.projection_position, RETIRED, px=RETIRED_KEEP_MS)
        await pipe.execute()
