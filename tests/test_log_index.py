"""A task's log index (the stream ids of its events, by number) lives in its control hash, which
the command scripts write anyway; tasks written before it moved there keep a list, still read.
On fakeredis, real Redis and a real Redis Cluster (conftest)."""

from __future__ import annotations

import uuid

import pytest

from orchestrator.domain.events import Completed, Progress, ResultDeleted, Started, Submitted
from orchestrator.domain.spec import BacktestSpec
from orchestrator.storage.commands import Commands
from orchestrator.storage.keys import WORKER_GROUP, event_field
from orchestrator.storage.readmodel import ReadModel
from orchestrator.storage.workqueue import WorkQueue
from tests.conftest import Backend
from tests.log_entries import entry_fields

pytestmark = pytest.mark.also_on_cluster

SPEC = BacktestSpec(strategy="sma_cross", symbol="GOOG", params={"fast": 10, "slow": 20})


async def _run_to_completion(b: Backend, task_id: str) -> None:
    queue = WorkQueue(b.redis, b.layout, reader=b.blocking)
    await queue.ensure_group()
    await Commands(b.redis, b.layout).submit(task_id, SPEC)
    reply = await b.redis.xreadgroup(WORKER_GROUP, "w1", {b.keys.work: ">"}, count=1)
    message_id = reply[0][1][0][0].decode()
    claim = await queue.claim(task_id, worker="w1", token="t1", message_id=message_id, reclaim=False, max_attempts=3)
    assert await queue.heartbeat(task_id, claim.attempt, worker="w1", message_id=message_id, progress=0.5) is None
    done = Completed(task_id=task_id, seq=0, attempt=claim.attempt, result={"total_return_pct": 1.0})
    assert await queue.finish(done, message_id=message_id, result=b'{"full":1}') is None


async def test_every_event_of_a_task_is_indexed_in_its_control_hash_and_no_list_is_written(backend: Backend) -> None:
    task_id = str(uuid.uuid4())
    await _run_to_completion(backend, task_id)
    events = await ReadModel(backend.redis, backend.keys).task_events(task_id)
    assert [type(e.event) for e in events] == [Submitted, Started, Progress, Completed]
    index = await backend.redis.hmget(backend.keys.control(task_id), [event_field(s) for s in range(1, 6)])
    assert [i.decode() if i else None for i in index] == [e.id for e in events] + [None]
    assert await backend.redis.exists(backend.keys.task_log(task_id)) == 0


async def _write_the_old_way(b: Backend, task_id: str, *, indexed_in_hash: int) -> list[str]:
    """A task as a version before the move wrote it: its events' ids in the list `task_log`, its
    control hash counting them; the last `indexed_in_hash` of them indexed the new way (a task
    that was running when the deployment was upgraded)."""
    events = [
        Submitted(task_id=task_id, seq=1, spec=SPEC),
        Started(task_id=task_id, seq=2, attempt=1, worker="w1"),
        Progress(task_id=task_id, seq=3, progress=0.5),
        Completed(task_id=task_id, seq=4, attempt=1, result={"total_return_pct": 1.0}),
    ]
    ids = [(await b.redis.xadd(b.keys.events, entry_fields(e))).decode() for e in events]
    old = len(ids) - indexed_in_hash
    if old:
        await b.redis.rpush(b.keys.task_log(task_id), *ids[:old])
    index = {event_field(s): i for s, i in enumerate(ids, start=1) if s > old}
    await b.redis.hset(b.keys.control(task_id), mapping={"status": "completed", "attempt": 1, "seq": 4, **index})
    return ids


@pytest.mark.parametrize("indexed_in_hash", [0, 2])
async def test_a_task_indexed_the_old_way_reads_as_before(backend: Backend, indexed_in_hash: int) -> None:
    task_id = str(uuid.uuid4())
    ids = await _write_the_old_way(backend, task_id, indexed_in_hash=indexed_in_hash)
    reads = ReadModel(backend.redis, backend.keys)
    assert [e.id for e in await reads.task_events(task_id)] == ids
    assert [[e.id for e in page] async for page in reads.task_event_pages(task_id, "0-0", 3)] == [ids[:3], ids[3:]]
    assert [e.id for page in [p async for p in reads.task_event_pages(task_id, ids[1], 3)] for e in page] == ids[2:]
    assert await reads.last_task_event_id(task_id) == ids[-1]
    # Nothing projected yet: read-your-writes folds all four events.
    state = await reads.current(task_id)
    assert state is not None and (state.status, state.seq, state.last_event_id) == ("completed", 4, ids[-1])


async def test_a_compacted_task_listed_the_old_way_reads_from_its_result_deleted(backend: Backend) -> None:
    """Retention dropped the task's control hash and list; `drop_result.lua` restored the hash
    (seq 4) and an earlier version listed the `result_deleted` (event 5) alone."""
    task_id = str(uuid.uuid4())
    deleted = ResultDeleted(task_id=task_id, seq=5, key=f"{task_id}/1-abc", reason="age")
    entry = (await backend.redis.xadd(backend.keys.events, entry_fields(deleted))).decode()
    await backend.redis.rpush(backend.keys.task_log(task_id), entry)
    await backend.redis.hset(backend.keys.control(task_id), mapping={"status": "completed", "attempt": 1, "seq": 5})
    reads = ReadModel(backend.redis, backend.keys)
    assert [(e.id, e.event) for e in await reads.task_events(task_id)] == [(entry, deleted)]
    assert await reads.last_task_event_id(task_id) == entry
    assert [e.id for page in [p async for p in reads.task_event_pages(task_id, "0-0", 2)] for e in page] == [entry]
