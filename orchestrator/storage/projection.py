"""The read side: current-state hashes folded from the log, and how they are read and stored."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from orchestrator.domain.errors import BackstreamError
from orchestrator.domain.events import StoredEvent
from orchestrator.domain.ids import id_order, iso_ms
from orchestrator.domain.state import TaskState, evolve
from orchestrator.domain.timeline import state_as_of
from orchestrator.storage.codec import decode_entries, decode_entry, text
from orchestrator.storage.hashform import changed_fields, from_hash, index_member, to_hash
from orchestrator.storage.keys import DEFAULT_PROJECTION, Keys
from orchestrator.storage.scripts import Scripts

# How long a reader trusts its knowledge of which projection is live. A rebuild keeps the old
# projection intact for longer than this after switching, so a reader a moment behind still
# sees a whole projection.
POINTER_TTL_S = 1.0
# A filtered list (by symbol or strategy, which have no index) reads the status index in batches of
# FILTER_BATCH and stops after FILTER_SCAN members, so one request's cost stays bounded.
FILTER_BATCH = 200
FILTER_SCAN = 5000


class Projection:
    """One projection under `keys.projection_name`, or, with `follow_live`, whichever one the
    live-projection pointer names (what the API and the live projector use)."""

    def __init__(self, redis: Any, keys: Keys, *, follow_live: bool = False, reader: Any = None) -> None:
        self.redis = redis
        # Blocking reads of the log need a client without a socket timeout (see connections.py);
        # everything else uses `redis`, whose timeout turns an outage into an error, not a hang.
        self.reader = reader or redis
        self.keys = keys
        self.follow_live = follow_live
        self.scripts = Scripts(redis)
        self._checked_at = float("-inf")

    async def refresh(self, *, force: bool = False) -> None:
        """Follow the live-projection pointer (at most once per POINTER_TTL_S unless forced)."""
        if not self.follow_live:
            return
        now = time.monotonic()
        if force or now - self._checked_at > POINTER_TTL_S:
            name = await self.redis.get(self.keys.live_projection)
            self.keys = self.keys.with_projection(text(name) if name else DEFAULT_PROJECTION)
            self._checked_at = now

    async def position(self) -> str | None:
        await self.refresh()
        value = await self.redis.get(self.keys.projection_position)
        return text(value) if value is not None else None

    async def load(self, task_ids: list[str]) -> dict[str, TaskState]:
        if not task_ids:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.hgetall(self.keys.projected_task(task_id))
            replies = await pipe.execute()
        return {task_id: from_hash(fields) for task_id, fields in zip(task_ids, replies, strict=True) if fields}

    async def store(
        self,
        expected_position: str | None,
        new_position: str,
        before: dict[str, TaskState],
        after: dict[str, TaskState],
    ) -> str:
        """Write the changed states and the new position atomically. Returns 'ok'; or 'moved'
        if another projector moved the position since `expected_position` was read, or
        'switched' if a rebuild made another projection live (nothing is written then)."""
        keys: list[str] = [self.keys.projection_position, self.keys.live_projection]
        slots: dict[str, int] = {}

        def slot(key: str) -> bytes:
            if key not in slots:
                keys.append(key)
                slots[key] = len(keys)
            return str(slots[key]).encode()

        ops: list[bytes] = []
        index_ops: dict[tuple[bytes, str], list[bytes]] = {}
        for task_id, state in after.items():
            old = before.get(task_id)
            if old == state:
                continue
            key = self.keys.projected_task(task_id)
            if old is None:
                fields, gone = to_hash(state), list[str]()
            else:
                fields, gone = changed_fields(old, state)
            if gone:
                ops.append(b"HDEL\x01%s\x01%s" % (slot(key), "\0".join(sorted(gone)).encode()))
            if fields:
                payload = b"\0".join(x for name, value in fields.items() for x in (name.encode(), value))
                ops.append(b"HSET\x01%s\x01%s" % (slot(key), payload))
            if old is not None and old.status == state.status:
                continue
            member = index_member(state).encode()
            if old is None:
                index_ops.setdefault((b"ZADD", self.keys.projected_index()), []).append(member)
            else:
                index_ops.setdefault((b"ZREM", self.keys.projected_index(old.status)), []).append(member)
            index_ops.setdefault((b"ZADD", self.keys.projected_index(state.status)), []).append(member)
        for (name, key), members in index_ops.items():
            ops.append(b"%s\x01%s\x01%s" % (name, slot(key), b"\0".join(members)))
        args: list[str | bytes] = [
            expected_position or "",
            new_position,
            self.keys.projection_name if self.follow_live else "",
            DEFAULT_PROJECTION,
            b"\x02".join(ops),
        ]
        reply = await self.scripts.apply(keys=keys, args=args)
        return text(reply[0])

    async def read_log(self, after: str | None, count: int, block_ms: int | None) -> list[StoredEvent]:
        """Events after `after` in log order (XREAD, blocking up to block_ms when given).

        The reply is read as Redis sent it: the command name is passed as bytes, which redis-py's
        response callbacks (looked up by name as text) do not match, so its XREAD callback does
        not turn every entry into a dict; `decode_entries` reads the flat field lists itself."""
        block = (b"BLOCK", block_ms) if block_ms is not None else ()
        reply = await self.reader.execute_command(
            b"XREAD", b"COUNT", count, *block, b"STREAMS", self.keys.events, after or "0-0", NEVER_DECODE=True
        )
        if not reply:
            return []
        # RESP2: [[stream, entries]]; RESP3: {stream: entries}.
        entries = reply[0][1] if isinstance(reply, list) else next(iter(reply.values()))
        return decode_entries(entries)

    async def list_tasks(
        self,
        *,
        status: str | None,
        limit: int,
        cursor: str | None,
        symbol: str | None = None,
        strategy: str | None = None,
        scan: int = FILTER_SCAN,
        batch: int = FILTER_BATCH,
    ) -> tuple[list[TaskState], str | None]:
        """Tasks newest first. `cursor` is the index member of the last task of the previous page.

        `symbol` (case-insensitive) and `strategy` have no index: they filter while paging through
        the status index, reading at most `scan` members per call, `batch` at a time. The cursor stays exact (the
        member of the last task looked at), so a filtered page may hold fewer than `limit` tasks,
        even none, with a `next_cursor` to go on from; None means the index is exhausted."""
        await self.refresh()
        index = self.keys.projected_index(status)
        upper = f"({cursor}" if cursor else "+"
        if symbol is None and strategy is None:
            members = await self.redis.zrevrangebylex(index, upper, "-", start=0, num=limit + 1)
            page = [text(m) for m in members[:limit]]
            states = await self.load([m.split("|", 1)[1] for m in page])
            tasks = [states[m.split("|", 1)[1]] for m in page if m.split("|", 1)[1] in states]
            return tasks, (page[-1] if len(members) > limit else None)
        wanted = symbol.casefold() if symbol is not None else None
        tasks = []
        scanned = 0
        while True:
            want = min(batch, scan - scanned)
            members = [text(m) for m in await self.redis.zrevrangebylex(index, upper, "-", start=0, num=want)]
            states = await self.load([m.split("|", 1)[1] for m in members])
            for member in members:
                scanned += 1
                state = states.get(member.split("|", 1)[1])
                if (
                    state is not None
                    and (wanted is None or state.spec.symbol.casefold() == wanted)
                    and (strategy is None or state.spec.strategy == strategy)
                ):
                    tasks.append(state)
                    if len(tasks) == limit:
                        return tasks, member
                if scanned >= scan:
                    return tasks, member
            if len(members) < want:
                return tasks, None
            upper = f"({members[-1]}"

    async def current(self, task_id: str, store: Any) -> TaskState | None:
        """The task's state including events the projector has not folded yet (read-your-writes):
        the projected hash, plus any later events of the task folded here with the same evolve."""
        await self.refresh()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.projected_task(task_id))
            pipe.llen(self.keys.task_log(task_id))
            fields, logged = await pipe.execute()
        state = from_hash(fields) if fields else None
        if logged and (state is None or state.seq < logged):
            for stored in await store.task_events(task_id, after_seq=state.seq if state else 0):
                state = evolve(state, stored)
        return state

    async def task_event_pages(self, task_id: str, after: str, page: int) -> AsyncIterator[list[StoredEvent]]:
        """The task's events after stream id `after` that are still in the log, in order, read
        lazily `page` ids of its log index at a time (LRANGE, then one pipelined XRANGE per id):
        one page in memory however long the task's history is."""
        start = 0
        while True:
            ids = [text(i) for i in await self.redis.lrange(self.keys.task_log(task_id), start, start + page - 1)]
            start += len(ids)
            wanted = [i for i in ids if id_order(i) > id_order(after)]
            if wanted:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for entry_id in wanted:
                        pipe.xrange(self.keys.events, entry_id, entry_id)
                    replies = await pipe.execute()
                events = [decode_entry(*entries[0]) for entries in replies if entries]
                if events:
                    yield events
            if len(ids) < page:
                return

    async def last_task_event_id(self, task_id: str) -> str | None:
        """The id of the task's newest event still in the log (None once retention trimmed it or
        dropped the task's log index)."""
        last = await self.redis.lindex(self.keys.task_log(task_id), -1)
        if last is None or not await self.redis.xrange(self.keys.events, last, last):
            return None
        return text(last)

    async def history(self, task_id: str, store: Any) -> TaskHistory | None:
        """The task's state and its audit trail, from one read so the two agree: the projected
        state with any events the projector has not folded yet, and the task's events still in
        the log. When retention trimmed the first of them, `archived` says where they went.
        None if the task does not exist (neither in the projection nor in the log)."""
        await self.refresh()
        fields = await self.redis.hgetall(self.keys.projected_task(task_id))
        state = from_hash(fields) if fields else None
        events = await store.task_events(task_id)
        for stored in events:
            if state is None or stored.event.seq > state.seq:
                state = evolve(state, stored)
        if state is None:
            return None
        first_seq = events[0].event.seq if events else state.seq + 1
        archived = None
        if first_seq > 1:
            mark = {text(k): text(v) for k, v in (await self.redis.hgetall(self.keys.retention)).items()}
            archived = Archived(
                events=first_seq - 1,
                log_starts_at=mark.get("log_starts_at"),
                archived_through=mark.get("archived_through"),
                trimmed_at=iso_ms(int(mark["at_ms"])) if "at_ms" in mark else None,
            )
        return TaskHistory(state=state, events=events, archived=archived)


class Archived(msgspec.Struct, frozen=True):
    """Where the first events of a task went once retention trimmed them from the log."""

    # How many of the task's first events the log no longer holds.
    events: int
    # Retention trimmed the log below this stream id (None: no retention run was recorded).
    log_starts_at: str | None
    # `backstream export` had written the log up to this id to an archive file by then: the
    # trimmed events are there (`backstream replay --archive FILE`, or the file itself).
    archived_through: str | None
    # When that retention run happened, ISO 8601 UTC.
    trimmed_at: str | None

    def describe(self) -> str:
        """One sentence for people: what is missing and where it is."""
        where = (
            f"an archive written by `backstream export` (through {self.archived_through})"
            if self.archived_through
            else "no recorded archive"
        )
        when = f" on {self.trimmed_at}" if self.trimmed_at else ""
        below = f" below {self.log_starts_at}" if self.log_starts_at else ""
        trimmed = f"the first {self.events} events were trimmed from the log{below} by retention{when}"
        return f"{trimmed}; they are in {where}"


class HistoryArchived(BackstreamError):
    """A question about a task's past that only its trimmed events could answer."""

    def __init__(self, task_id: str, archived: Archived) -> None:
        super().__init__(f"task {task_id}: {archived.describe()}")
        self.archived = archived


class TaskHistory(msgspec.Struct, frozen=True):
    """A task's current state and the events the log still holds (see Projection.history)."""

    state: TaskState
    events: list[StoredEvent]
    archived: Archived | None = None

    def as_of(self, until: tuple[int, int]) -> TaskState | None:
        """The state after every event at or before `until` (as (ms, seq)); None if the task did
        not exist yet. Raises HistoryArchived when that needs events retention trimmed."""
        if id_order(self.state.last_event_id) <= until:
            return self.state
        if self.archived is not None:
            raise HistoryArchived(self.state.task_id, self.archived)
        return state_as_of(self.events, until)
