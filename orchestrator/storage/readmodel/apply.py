"""The projection's one write: the projector's (and replay's) changed states and a partition's new
position, stored atomically through `apply.lua` on that partition's slot."""

from __future__ import annotations

from collections.abc import Callable

from orchestrator.domain.events import StoredEvent
from orchestrator.domain.state import TaskState
from orchestrator.storage.codec import text
from orchestrator.storage.connections import RedisClient, ready_for_concurrent_calls
from orchestrator.storage.hashform import changed_fields, from_hash, index_member, to_hash
from orchestrator.storage.keys import Keys
from orchestrator.storage.partitions import Layout
from orchestrator.storage.readmodel import log
from orchestrator.storage.readmodel.model import ReadModel
from orchestrator.storage.scripts.projection import ProjectionScripts


class _Ops:
    """The operations of one `apply.lua` call: keys are numbered in order of first use (after
    the position and the pointer, KEYS[1] and KEYS[2]); each op is `NAME\\x01slot\\x01args`."""

    def __init__(self, keys: Keys) -> None:
        self.keys: list[str] = [keys.projection_position, keys.live_projection]
        self._slots: dict[str, int] = {}
        self.ops: list[bytes] = []

    def slot(self, key: str) -> bytes:
        """The KEYS index of `key` as the script reads it (bytes of a decimal), numbered on first use."""
        if key not in self._slots:
            self.keys.append(key)
            self._slots[key] = len(self.keys)
        return str(self._slots[key]).encode()

    def add(self, name: bytes, key: str, args: bytes) -> None:
        """One operation `name` (HSET, HDEL, ZADD, ZREM) on `key` with its `\0`-joined arguments."""
        self.ops.append(b"%s\x01%s\x01%s" % (name, self.slot(key), args))


class PartitionProjection:
    """One partition of one projection (`keys`: the partition's keys, naming the projection):
    its position, its states, its log and its one write. `live`: stores also check that the
    projection is still the live one (only partition 0 can: the pointer is in its slot). Every
    method raises redis errors."""

    def __init__(
        self, redis: RedisClient, reader: RedisClient, scripts: ProjectionScripts, keys: Keys, *, live: bool
    ) -> None:
        self.redis, self.reader, self.scripts, self.keys, self.live = redis, reader, scripts, keys, live

    async def position(self) -> str | None:
        """The id of the last event of this partition folded into the projection (None: none yet;
        `pointer.RETIRED` once a rebuild replaced it)."""
        value = await self.redis.get(self.keys.projection_position)
        return text(value) if value is not None else None

    async def load(self, task_ids: list[str]) -> dict[str, TaskState]:
        """{task id: projected state} for those of `task_ids` (all of this partition) it holds."""
        if not task_ids:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.hgetall(self.keys.projected_task(task_id))
            replies = await pipe.execute()
        return {task_id: from_hash(fields) for task_id, fields in zip(task_ids, replies, strict=True) if fields}

    async def read_log(self, after: str | None, count: int, block_ms: int | None) -> list[StoredEvent]:
        """This partition's events after `after` in log order, on the blocking client (a projector
        `Source`; see log.read_batch)."""
        return await log.read_batch(self.reader, self.keys.events, after, count, block_ms)

    async def store(
        self,
        expected_position: str | None,
        new_position: str,
        before: dict[str, TaskState],
        after: dict[str, TaskState],
    ) -> str:
        """Write the changed states (tasks of this partition) and the partition's new position
        atomically. Returns 'ok'; or 'moved' if another projector moved the position since
        `expected_position` was read (or a rebuild retired this projection), or 'switched' if a
        rebuild made another projection live (nothing is written then)."""
        ops = _Ops(self.keys)
        index_ops: dict[tuple[bytes, str], list[bytes]] = {}
        for task_id, state in after.items():
            old = before.get(task_id)
            if old == state:
                continue
            key = self.keys.projected_task(task_id)
            fields, gone = (to_hash(state), list[str]()) if old is None else changed_fields(old, state)
            if gone:
                ops.add(b"HDEL", key, "\0".join(sorted(gone)).encode())
            if fields:
                ops.add(b"HSET", key, b"\0".join(x for name, value in fields.items() for x in (name.encode(), value)))
            if old is not None and old.status == state.status:
                continue
            member = index_member(state).encode()
            index = self._index_of(state)
            if old is None:
                if state.spec.chunk is None:  # a job's chunks are indexed by status only
                    index_ops.setdefault((b"ZADD", index(None)), []).append(member)
            else:
                index_ops.setdefault((b"ZREM", index(old.status)), []).append(member)
            index_ops.setdefault((b"ZADD", index(state.status)), []).append(member)
        for (name, key), members in index_ops.items():
            ops.add(name, key, b"\0".join(members))
        verdict = await self.scripts.apply(
            keys=self.keys,
            op_keys=ops.keys[2:],
            expected=expected_position,
            position=new_position,
            live=self.live,
            ops=b"\x02".join(ops.ops),
        )
        return verdict.outcome

    def _index_of(self, state: TaskState) -> Callable[[str | None], str]:
        """The indexes `state` is listed in, by status (None: all): the task list's, or for a
        chunk its job's alone, so that the list and its counts show jobs, not their chunks."""
        if state.spec.chunk is None:
            return self.keys.projected_index
        job_id = state.spec.chunk.parent
        return lambda status: self.keys.projected_chunks(job_id, status or "")


class Projection(ReadModel):
    """A read model that the projector (or a replay) also writes: one projection over every
    partition of `layout`, or with `follow_live` whichever one the live-projection pointer (in
    `layout.home`) names. A `Keys` stands for the one-partition layout of its prefix (a
    deployment written before partitions existed, and tests of partition 0 alone).

    Its read-model methods read partition 0 (`keys`); `partition(i)` is what the projector folds."""

    def __init__(
        self,
        redis: RedisClient,
        layout: Layout | Keys,
        *,
        follow_live: bool = False,
        reader: RedisClient | None = None,
    ) -> None:
        super().__init__(redis, layout, follow_live=follow_live, reader=reader)
        self.scripts = ProjectionScripts(redis)

    async def connect(self) -> None:
        """Make both clients ready for the partitions' folders to use at once (see
        `ready_for_concurrent_calls`). Raises redis errors."""
        for client in (self.redis, self.reader):
            await ready_for_concurrent_calls(client)

    def partition(self, index: int) -> PartitionProjection:
        """Partition `index` of the projection `layout` names now. Raises IndexError outside
        0..width-1."""
        keys = self.layout.partition(index)
        return PartitionProjection(self.redis, self.reader, self.scripts, keys, live=self.follow_live and index == 0)

    async def store(
        self,
        expected_position: str | None,
        new_position: str,
        before: dict[str, TaskState],
        after: dict[str, TaskState],
    ) -> str:
        """`PartitionProjection.store` on partition 0 (a one-partition projection's write)."""
        await self.refresh()
        return await self.partition(0).store(expected_position, new_position, before, after)
