"""Replay: fold the whole log into a fresh projection and compare it with the live one."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec

from consumers.projector import fold_log
from orchestrator.keys import Keys
from orchestrator.projection import Projection


class Difference(msgspec.Struct, frozen=True):
    key: str  # the projection key, relative to the projection root (e.g. `task:<id>`)
    field: str
    live: str | None
    replayed: str | None


async def snapshot(redis: Any, keys: Keys) -> dict[str, dict[str, bytes]]:
    """Every key of a projection as {relative key: {field or member: value}}, position excluded."""
    root = keys.projection_root + ":"
    found: dict[str, dict[str, bytes]] = {}
    async for raw in redis.scan_iter(match=root.replace("[", "\\[") + "*", count=1000):
        key = raw.decode() if isinstance(raw, bytes) else raw
        name = key[len(root):]
        if name == "position":
            continue
        kind = await redis.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind == "hash":
            found[name] = {k.decode(): bytes(v) for k, v in (await redis.hgetall(key)).items()}
        elif kind == "zset":
            found[name] = {m.decode(): b"" for m in await redis.zrange(key, 0, -1)}
    return found


def compare(live: dict[str, dict[str, bytes]], replayed: dict[str, dict[str, bytes]]) -> list[Difference]:
    differences = []
    for name in sorted(live.keys() | replayed.keys()):
        a, b = live.get(name, {}), replayed.get(name, {})
        for field in sorted(a.keys() | b.keys()):
            if a.get(field) != b.get(field):
                differences.append(Difference(
                    key=name, field=field,
                    live=a[field].decode() if field in a else None,
                    replayed=b[field].decode() if field in b else None,
                ))
    return differences


async def delete_projection(redis: Any, keys: Keys) -> None:
    async for key in redis.scan_iter(match=keys.projection_root.replace("[", "\\[") + ":*", count=1000):
        await redis.delete(key)


async def verify(redis: Any, keys: Keys) -> list[Difference]:
    """Fold the whole log into fresh keys, compare with the live projection, drop the fresh keys.

    The live projector must have caught up with the log (its position at the log's end) for the
    comparison to mean anything; callers check that first."""
    fresh = keys.with_projection(f"verify-{uuid.uuid4().hex[:8]}")
    try:
        await fold_log(Projection(redis, fresh))
        return compare(await snapshot(redis, keys), await snapshot(redis, fresh))
    finally:
        await delete_projection(redis, fresh)
