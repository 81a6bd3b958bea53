"""Partitions: how a deployment's tasks are spread over hash tags, so that a Redis Cluster carries
them on all its shards while every script stays in one slot.

A deployment has `count` partitions that new tasks go to, and `span` partitions that hold tasks
(more than `count` after the count was lowered, until the old partitions drain). Partition 0 is
named by the deployment's prefix itself (`{bs}`), partition i > 0 by the prefix with `:pNN` (and
a suffix that places the slots evenly) in its hash tag (`{bs:p07.776}`): a deployment written
before partitions existed is partition 0 of a one-partition deployment, unchanged. A task
belongs to one partition for life, and its id says which (`partition_of`), so every command
routes without a lookup."""

from __future__ import annotations

import functools
import hashlib
import itertools
import secrets
import uuid
from typing import Any

import msgspec
from redis.crc import key_slot

from orchestrator.settings import DEFAULT_PREFIX, MAX_PARTITIONS
from orchestrator.storage.codec import text
from orchestrator.storage.connections import Connections, RedisClient
from orchestrator.storage.keys import Keys

# The default on a Redis Cluster: enough for 16 shards, few enough that an idle process's reads of
# every partition stay cheap. A standalone server and the embedded default have one.
CLUSTER_PARTITIONS = 16


class LayoutMismatch(Exception):
    """The partition count asked for (BACKSTREAM_PARTITIONS) is not the deployment's."""


# Hash slots of a Redis Cluster (CLUSTER KEYSLOT is crc16(hash tag) mod this).
CLUSTER_SLOTS = 16384

# How far from its target slot a partition's tag may land (see `partition_prefix`).
SLOT_WINDOW = 32


def _spread(index: int) -> float:
    """The van der Corput sequence in base 2 (0, 1/2, 1/4, 3/4, 1/8, …): any first n of its
    values split [0, 1) into gaps that differ by at most a factor of two."""
    position, scale = 0.0, 1.0
    while index:
        scale /= 2
        position += scale * (index & 1)
        index >>= 1
    return position


@functools.lru_cache(maxsize=4096)
def partition_prefix(prefix: str, index: int) -> str:
    """The key prefix of partition `index` of a deployment under `prefix`: the prefix itself for
    partition 0; else `:pNN` inserted at the end of its hash tag (`{bs}` -> `{bs:p07.776}`), or
    appended when the prefix has none (a standalone server only).

    The `.n` suffix places the partitions' slots evenly round the ring of CLUSTER_SLOTS, so that
    the equal slot ranges a cluster gives its masters each get an equal share of the partitions
    (16 over three masters: 5, 5 and 6, where plain `{bs:pNN}` tags land 3, 7 and 6, and a random
    prefix leaves a master none about once in 200). Partition i's target is partition 0's slot
    plus `_spread(i)` of the ring, so adding partitions never moves the existing ones; the
    suffix is the first n (none for n = 0) whose slot lies within SLOT_WINDOW of it. Deterministic:
    every process names the same keys."""
    if index == 0:
        return prefix
    opening = prefix.find("{")
    closing = prefix.find("}", opening + 1) if opening >= 0 else -1
    if closing <= opening + 1:
        return f"{prefix}:p{index:02d}"
    target = key_slot(prefix.encode()) + round(_spread(index) * CLUSTER_SLOTS)
    tags = (f":p{index:02d}" + (f".{n}" if n else "") for n in itertools.count())
    candidates = (prefix[:closing] + tag + prefix[closing:] for tag in tags)
    return next(c for c in candidates if _ring_distance(key_slot(c.encode()), target) <= SLOT_WINDOW)


def _ring_distance(slot: int, target: int) -> int:
    off = (slot - target) % CLUSTER_SLOTS
    return min(off, CLUSTER_SLOTS - off)


def partition_of(task_id: str) -> int:
    """The partition a task id names: the first two bytes of a version-8 UUID (the ids
    `Layout.new_task_id` makes); 0 for any other UUID (ids made before partitions existed).
    Raises ValueError when `task_id` is not a UUID."""
    parsed = uuid.UUID(task_id)
    return int.from_bytes(parsed.bytes[:2], "big") if parsed.version == 8 else 0


def task_id_in(partition: int) -> str:
    """A new random task id in `partition`: an RFC 9562 version-8 UUID whose first two bytes are
    the partition and whose other 106 free bits are random."""
    raw = bytearray(partition.to_bytes(2, "big") + secrets.token_bytes(14))
    raw[6] = (raw[6] & 0x0F) | 0x80  # version 8
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 9562 variant
    return str(uuid.UUID(bytes=bytes(raw)))


def chunk_id(parent: str, index: int) -> str:
    """The task id of chunk `index` of the job `parent`: a version-8 UUID in the parent's
    partition (so every key of a job shares one slot), its other bits from SHA-256 of both, so
    every process names the same chunks: a re-sent fan-out creates nothing twice, and a reader
    lists a job's chunks with no lookup. Raises ValueError when `parent` is not a UUID."""
    digest = hashlib.sha256(f"{parent}/{index}".encode()).digest()
    raw = bytearray(partition_of(parent).to_bytes(2, "big") + digest[:14])
    raw[6] = (raw[6] & 0x0F) | 0x80  # version 8
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 9562 variant
    return str(uuid.UUID(bytes=bytes(raw)))


class Layout(msgspec.Struct, frozen=True):
    """The partitions of the deployment under `prefix`: `count` take new tasks, `span` (>= count)
    hold tasks. `projection_name` names the projection every partition's Keys refer to."""

    prefix: str = DEFAULT_PREFIX
    count: int = 1
    span: int = 0  # 0: the same as count
    projection_name: str = "proj"

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_PARTITIONS or self.span > MAX_PARTITIONS:
            raise ValueError(f"a deployment has 1 to {MAX_PARTITIONS} partitions, not {self.count}")

    @property
    def width(self) -> int:
        """How many partitions hold tasks: every one of them is read, folded and swept."""
        return max(self.count, self.span)

    def partition(self, index: int) -> Keys:
        """The keys of partition `index`. Raises IndexError outside 0..width-1."""
        if not 0 <= index < self.width:
            raise IndexError(f"partition {index} is not one of this deployment's {self.width}")
        return Keys(prefix=partition_prefix(self.prefix, index), projection_name=self.projection_name)

    @property
    def partitions(self) -> list[Keys]:
        """The keys of every partition that holds tasks, partition 0 first."""
        return [self.partition(i) for i in range(self.width)]

    @property
    def home(self) -> Keys:
        """Partition 0's keys, which also name what is the deployment's as a whole: heartbeats,
        the workers' strategies, the live projection's name, the partitions record."""
        return self.partition(0)

    def partition_index(self, task_id: str) -> int:
        """The partition `task_id` belongs to. Raises ValueError when it is not a UUID, IndexError
        when it names a partition this deployment does not have."""
        index = partition_of(task_id)
        if index >= self.width:
            raise IndexError(f"task {task_id} names partition {index}; this deployment has {self.width}")
        return index

    def of(self, task_id: str) -> Keys:
        """The keys of the partition `task_id` belongs to. Raises ValueError when it is not a
        UUID, IndexError when it names a partition this deployment does not have."""
        return self.partition(self.partition_index(task_id))

    def new_task_id(self, scope: str | None = None) -> str:
        """A new task id in one of the `count` partitions: the one `scope` (an owner's
        Idempotency-Key) hashes to, so that a retried submit meets its first one in the same slot;
        a random one without."""
        if scope is None:
            return task_id_in(secrets.randbelow(self.count))
        digest = hashlib.sha256(scope.encode()).digest()
        return task_id_in(int.from_bytes(digest[:8], "big") % self.count)

    def with_projection(self, name: str) -> Layout:
        """The same partitions, their keys naming the projection `name`."""
        return msgspec.structs.replace(self, projection_name=name)

    @property
    def record_key(self) -> str:
        """The hash that records the deployment's partitions (`count`, `span`), in partition 0."""
        return f"{self.prefix}:partitions"


def as_layout(where: Layout | Keys) -> Layout:
    """`where`; a `Keys` as the one-partition layout whose partition 0 it is (its prefix and
    projection): a deployment written before partitions existed, or one partition seen alone."""
    if isinstance(where, Keys):
        return Layout(prefix=where.prefix, projection_name=where.projection_name)
    return where


async def load_layout(redis: RedisClient, prefix: str, *, requested: int | None, cluster: bool) -> Layout:
    """The deployment's layout as recorded in the store, recording it first for a new deployment:
    `requested` partitions (BACKSTREAM_PARTITIONS), else CLUSTER_PARTITIONS on a cluster and 1
    on a standalone server. A deployment that has a log but no record was written before
    partitions existed: it is recorded as one partition. Raises LayoutMismatch when `requested`
    is not the recorded count (changing it is `set_partitions`, a migration)."""
    probe = Layout(prefix=prefix)
    record: dict[Any, Any] = await redis.hgetall(probe.record_key)
    if b"span" not in record:
        # A new deployment, or one another process is recording right now (it may have written
        # `count` and not yet `span`). The first `count` written wins; `span` follows it.
        if b"count" not in record:
            legacy = await redis.exists(probe.home.events)
            count = 1 if legacy else requested or (CLUSTER_PARTITIONS if cluster else 1)
            Layout(prefix=prefix, count=count)  # raises ValueError for an impossible count
            await redis.hsetnx(probe.record_key, "count", count)
        recorded = await redis.hget(probe.record_key, "count")
        await redis.hsetnx(probe.record_key, "span", int(text(recorded)))
        record = await redis.hgetall(probe.record_key)
    layout = Layout(prefix=prefix, count=int(text(record[b"count"])), span=int(text(record[b"span"])))
    if requested is not None and requested != layout.count:
        raise LayoutMismatch(
            f"BACKSTREAM_PARTITIONS={requested}, but this deployment has {layout.count} partitions; "
            f"`backstream partitions {requested}` changes that (a migration: see streams.md, 'Partitions')"
        )
    return layout


async def set_partitions(redis: RedisClient, layout: Layout, count: int) -> Layout:
    """Send new tasks to `count` partitions from now on. Partitions beyond `count` keep being read
    until they drain (`span` never shrinks here). Returns the new layout; processes started
    before read the old one until restarted. Raises ValueError for an impossible count."""
    changed = Layout(prefix=layout.prefix, count=count, span=max(layout.width, count))
    await redis.hset(layout.record_key, mapping={"count": changed.count, "span": changed.span})
    return changed


async def deployment_layout(conns: Connections) -> Layout:
    """The layout of the deployment `conns` reach, as `load_layout` records and reads it for the
    prefix and BACKSTREAM_PARTITIONS of their settings."""
    settings = conns.settings
    return await load_layout(conns.commands, settings.prefix, requested=settings.partitions, cluster=conns.cluster)
