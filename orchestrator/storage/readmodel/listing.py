"""The task list over partitions: each partition's status index read from the same cursor, merged
newest first. Index members are `<submit position>|<task id>` (see hashform.index_member): they
are unique across partitions and compare as text, so the member of the last task listed is a
cursor that stays exact however the partitions interleave."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from orchestrator.domain.ids import id_order
from orchestrator.domain.state import TaskState
from orchestrator.domain.status import Status
from orchestrator.storage.codec import decode_json, text
from orchestrator.storage.connections import RedisClient
from orchestrator.storage.hashform import from_hash, index_position
from orchestrator.storage.keys import Keys
from orchestrator.storage.partitions import chunk_id

# A filtered list (by symbol or strategy, which have no index) reads the status index in batches of
# FILTER_BATCH and stops after FILTER_SCAN members, so one request's cost stays bounded.
FILTER_BATCH = 200
FILTER_SCAN = 5000
# Task hashes loaded per pipelined round trip when a whole status index is read.
LOAD_BATCH = 500

Loader = Callable[[list[str]], Awaitable[dict[str, TaskState]]]
# One task's state read-your-writes (ReadModel.current), None when it does not exist.
Current = Callable[[str], Awaitable[TaskState | None]]


def task_id(member: str) -> str:
    """The task id of an index member (`<position>|<task id>`)."""
    return member.split("|", 1)[1]


async def load(redis: RedisClient, keys_of: Callable[[str], Keys | None], task_ids: list[str]) -> dict[str, TaskState]:
    """{task id: projected state} for those of `task_ids` the projection holds, each read in the
    partition `keys_of` names (ids it names none for are left out). One pipelined round trip."""
    routed = [(t, k) for t, k in ((t, keys_of(t)) for t in task_ids) if k is not None]
    if not routed:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for task, keys in routed:
            pipe.hgetall(keys.projected_task(task))
        replies = await pipe.execute()
    return {task: from_hash(fields) for (task, _), fields in zip(routed, replies, strict=True) if fields}


async def newest(redis: RedisClient, indexes: list[str], upper: str, count: int) -> list[str]:
    """The `count` greatest members below `upper` (a ZREVRANGEBYLEX bound: `+` or `(member`) of
    all `indexes` together, greatest first: `count` from each (one pipelined round trip, one key
    per command), merged. Exact: a member left unread in one index sorts below every member
    returned, since that index alone gave `count` members above it."""
    async with redis.pipeline(transaction=False) as pipe:
        for index in indexes:
            pipe.zrevrangebylex(index, upper, "-", start=0, num=count)
        replies = await pipe.execute()
    return sorted((text(m) for found in replies for m in found), reverse=True)[:count]


def _matches(state: TaskState | None, symbol: str | None, strategy: str | None) -> bool:
    return (
        state is not None
        and (symbol is None or state.spec.symbol.casefold() == symbol)
        and (strategy is None or state.spec.strategy == strategy)
    )


async def list_tasks(
    redis: RedisClient,
    indexes: list[str],
    loader: Loader,
    *,
    limit: int,
    cursor: str | None,
    symbol: str | None,
    strategy: str | None,
    scan: int,
    batch: int,
) -> tuple[list[TaskState], str | None]:
    """Tasks newest first from the partitions' `indexes` (one per partition), loaded with
    `loader`, and the cursor of the next page (see ReadModel.list_tasks)."""
    upper = f"({cursor}" if cursor else "+"
    if symbol is None and strategy is None:
        found = await newest(redis, indexes, upper, limit + 1)
        page = found[:limit]
        states = await loader([task_id(m) for m in page])
        listed = [states[task_id(m)] for m in page if task_id(m) in states]
        return listed, (page[-1] if len(found) > limit else None)
    wanted = symbol.casefold() if symbol is not None else None
    tasks: list[TaskState] = []
    scanned = 0
    while True:
        want = min(batch, scan - scanned)
        members = await newest(redis, indexes, upper, want)
        states = await loader([task_id(m) for m in members])
        for member in members:
            scanned += 1
            if _matches(states.get(task_id(member)), wanted, strategy):
                tasks.append(states[task_id(member)])
                if len(tasks) == limit:
                    return tasks, member
            if scanned >= scan:
                return tasks, member
        if len(members) < want:
            return tasks, None
        upper = f"({members[-1]}"


async def all_tasks(redis: RedisClient, indexes: list[str], loader: Loader) -> list[TaskState]:
    """Every task of the partitions' `indexes`, oldest submit first, loaded LOAD_BATCH hashes per
    round trip."""
    members: list[str] = []
    for index in indexes:
        members += [text(m) for m in await redis.zrangebylex(index, "-", "+")]
    ids = [task_id(m) for m in sorted(members)]
    states: list[TaskState] = []
    for start in range(0, len(ids), LOAD_BATCH):
        loaded = await loader(ids[start : start + LOAD_BATCH])
        states += [loaded[t] for t in ids[start : start + LOAD_BATCH] if t in loaded]
    return states


async def finished_before(redis: RedisClient, projection: Keys, stream_id: str) -> list[str]:
    """Completed or cancelled tasks of one partition's `projection`, submitted and last changed
    before `stream_id`: what retention may compact. Failed tasks are left out: a user may still
    retry them."""
    found = []
    for status in (Status.COMPLETED, Status.CANCELLED):
        index = projection.projected_index(status)
        members = [text(m) for m in await redis.zrangebylex(index, "-", f"({index_position(stream_id)}")]
        task_ids = [task_id(m) for m in members]
        async with redis.pipeline(transaction=False) as pipe:
            for task in task_ids:
                pipe.hget(projection.projected_task(task), "last_event_id")
            lasts = await pipe.execute()
        cutoff = id_order(stream_id)
        found += [t for t, last in zip(task_ids, lasts, strict=True) if last and id_order(decode_json(last)) < cutoff]
    return found


async def chunks(loader: Loader, current: Current, job_id: str, start: int, stop: int) -> list[TaskState]:
    """The chunks `start` to `stop` (excluded) of the job `job_id`, in chunk order: their ids are
    `chunk_id(job_id, index)`, so no index is read. Each is loaded from the projection in one
    round trip; one the projector has not folded yet is read with `current` (from the log). An
    id that names no task is left out. Raises ValueError when `job_id` is not a UUID."""
    ids = [chunk_id(job_id, index) for index in range(start, stop)]
    states = await loader(ids)
    for unfolded in [i for i in ids if i not in states]:
        state = await current(unfolded)
        if state is not None:
            states[unfolded] = state
    return [states[i] for i in ids if i in states]
