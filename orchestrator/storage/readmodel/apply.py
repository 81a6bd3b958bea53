"""The projection's one write: the projector's (and replay's) changed states and new position,
stored atomically through `apply.lua`."""

from __future__ import annotations

from orchestrator.domain.state import TaskState
from orchestrator.storage.connections import RedisClient
from orchestrator.storage.hashform import changed_fields, index_member, to_hash
from orchestrator.storage.keys import Keys
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


class Projection(ReadModel):
    """A read model that the projector (or a replay) also writes: one projection, or with
    `follow_live` whichever one the live-projection pointer names."""

    def __init__(
        self, redis: RedisClient, keys: Keys, *, follow_live: bool = False, reader: RedisClient | None = None
    ) -> None:
        super().__init__(redis, keys, follow_live=follow_live, reader=reader)
        self.scripts = ProjectionScripts(redis)

    async def store(
        self,
        expected_position: str | None,
        new_position: str,
        before: dict[str, TaskState],
        after: dict[str, TaskState],
    ) -> str:
        """Write the changed states and the new position atomically. Returns 'ok'; or 'moved'
        if another projector moved the position since `expected_position` was read, or
        'switched' if a rebuild made another projection live (nothing is written then).
        Raises redis errors."""
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
            if old is None:
                index_ops.setdefault((b"ZADD", self.keys.projected_index()), []).append(member)
            else:
                index_ops.setdefault((b"ZREM", self.keys.projected_index(old.status)), []).append(member)
            index_ops.setdefault((b"ZADD", self.keys.projected_index(state.status)), []).append(member)
        for (name, key), members in index_ops.items():
            ops.add(name, key, b"\0".join(members))
        verdict = await self.scripts.apply(
            keys=self.keys,
            op_keys=ops.keys[2:],
            expected=expected_position,
            position=new_position,
            live=self.follow_live,
            ops=b"\x02".join(ops.ops),
        )
        return verdict.outcome
