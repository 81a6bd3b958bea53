"""Projectors' leases on partitions: which live projector folds which partition, spread evenly.

A projector holds at most ceil(P / live) of the P partitions, where `live` counts the projectors
whose heartbeat (in `Layout.home`) is younger than the lease, itself included. Each lease is one
key in its partition's slot (`Keys.projector_lease`: the holder's name, with a TTL the holder
renews); a projector that dies stops renewing, its leases expire, its heartbeat ages, and the
others' share grows to take its partitions over. Two projectors may briefly both fold a partition
(a lease lost while a batch was in flight): `apply.lua`'s position check refuses the second store.
"""

from __future__ import annotations

import asyncio
import math
from typing import Literal

import msgspec

from orchestrator.storage.codec import text
from orchestrator.storage.connections import RedisClient
from orchestrator.storage.partitions import Layout
from orchestrator.storage.presence import read_beats
from orchestrator.storage.scripts.projection import ProjectionScripts


class Share(msgspec.Struct, frozen=True):
    """What this projector should hold now: `quota` partitions, preferring them in `order`."""

    quota: int
    order: list[int]


class PartitionLeases:
    """The leases projector `name` takes, renews and gives back on the partitions of `layout`.
    `lease_ms`: how long a lease lasts unless renewed (and how young a heartbeat must be to count
    as alive). Every method raises redis errors."""

    def __init__(self, redis: RedisClient, layout: Layout, name: str, *, lease_ms: int) -> None:
        self.redis = redis
        self.layout = layout
        self.name = name
        self.lease_ms = lease_ms
        self.scripts = ProjectionScripts(redis)

    async def share(self) -> Share:
        """This projector's share: ceil(width / live projectors), and the partitions in the order
        it prefers them (the live projectors sorted by name, the r-th starts at r * quota: each
        prefers a block of its own, so free partitions are not contended for in the same order)."""
        beats = await read_beats(self.redis, self.layout.home.projector_heartbeats)
        live = sorted(set(beats.alive(self.lease_ms)) | {self.name})
        width = self.layout.width
        quota = math.ceil(width / len(live))
        start = live.index(self.name) * quota
        return Share(quota=quota, order=[(start + k) % width for k in range(width)])

    async def holders(self) -> list[str | None]:
        """Every partition's lease holder (None: free), partition 0 first (one round trip)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for keys in self.layout.partitions:
                pipe.get(keys.projector_lease)
            replies = await pipe.execute()
        return [text(r) if r is not None else None for r in replies]

    async def renew(self, held: list[int]) -> list[int]:
        """Renew the leases on `held`; returns those this projector no longer holds (expired and
        taken by another)."""
        kept = await asyncio.gather(*(self._call("renew", i) for i in held))
        return [i for i, ok in zip(held, kept, strict=True) if not ok]

    async def take(self, share: Share, held: set[int]) -> list[int]:
        """Take free leases, in `share.order`, until this projector holds `share.quota` (or none
        is free); returns the partitions taken."""
        holders = await self.holders()
        taken: list[int] = []
        for index in share.order:
            if len(held) + len(taken) >= share.quota:
                break
            if index not in held and holders[index] is None and await self._call("take", index):
                taken.append(index)
        return taken

    def extras(self, share: Share, held: set[int]) -> list[int]:
        """The partitions to give back so that this projector holds no more than its quota: the
        ones latest in its order of preference."""
        ranked = sorted(held, key=share.order.index)
        return ranked[share.quota :]

    async def release(self, indexes: list[int]) -> None:
        """Give the leases on `indexes` back (those this projector still holds)."""
        await asyncio.gather(*(self._call("release", i) for i in indexes))

    async def _call(self, op: Literal["take", "renew", "release"], index: int) -> bool:
        keys = self.layout.partition(index)
        return await self.scripts.lease(keys=keys, op=op, name=self.name, lease_ms=self.lease_ms)
