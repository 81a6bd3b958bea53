"""The command scripts on fakeredis and real Redis: what each command stores, and what it refuses."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import NamedTuple

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from consumers.projector import Projector
from orchestrator.domain.errors import IdempotencyConflict, TaskConflict, TaskNotFound
from orchestrator.domain.events import Cancelled, Completed, Failed, Progress, RetryScheduled, Started, Submitted
from orchestrator.domain.spec import BacktestSpec
from orchestrator.storage.batching import ScriptBatcher
from orchestrator.storage.commands import Commands
from orchestrator.storage.connections import store_unavailable
from orchestrator.storage.keys import WORKER_GROUP
from orchestrator.storage.partitions import Layout
from orchestrator.storage.readmodel import Projection, ReadModel
from orchestrator.storage.scripts.attempts import AttemptScripts
from orchestrator.storage.workqueue import WorkQueue
from tests.conftest import Backend
from tests.processes import RedisServer

# The store tests here run on fakeredis, real Redis and a real Redis Cluster (conftest).
pytestmark = pytest.mark.also_on_cluster

SPEC = BacktestSpec(strategy="sma_cross", symbol="GOOG", params={"fast": 10, "slow": 20})


def new_id() -> str:
    return str(uuid.uuid4())


async def control(b: Backend, task_id: str) -> dict[str, str]:
    raw = await b.redis.hgetall(b.keys.control(task_id))
    return {k.decode(): v.decode() for k, v in raw.items()}


async def take(store: Stores, b: Backend, worker: str = "w1") -> tuple[str, str]:
    """Read one work item as `worker` the way a worker does; returns (message id, task id)."""
    reply = await b.redis.xreadgroup(WORKER_GROUP, worker, {b.keys.work: ">"}, count=1)
    message_id, fields = reply[0][1][0]
    return message_id.decode(), fields[b"task_id"].decode()


async def types(store: Stores, task_id: str) -> list[str]:
    return [type(e.event).__name__ for e in await store.log.task_events(task_id)]


class Stores(NamedTuple):
    """The write side's two halves, and the reads of the log, on one test's keys."""

    commands: Commands
    queue: WorkQueue
    log: ReadModel


@pytest.fixture
async def store(backend: Backend) -> Stores:
    s = Stores(
        Commands(backend.redis, backend.layout),
        WorkQueue(backend.redis, backend.layout, reader=backend.blocking),
        ReadModel(backend.redis, backend.keys),
    )
    await s.queue.ensure_group()
    return s


async def test_submit_appends_one_event_and_one_work_item(store: Stores, backend: Backend) -> None:
    task_id = new_id()
    result = await store.commands.submit(task_id, SPEC)
    assert result.created and result.task_id == task_id
    events = await store.log.task_events(task_id)
    assert [e.event for e in events] == [Submitted(task_id=task_id, seq=1, spec=SPEC)]
    assert await backend.redis.xlen(backend.keys.work) == 1
    assert (await control(backend, task_id))["status"] == "queued"


async def test_idempotency_key_same_body_returns_same_task_and_appends_nothing(store: Stores, backend: Backend) -> None:
    first = await store.commands.submit(new_id(), SPEC, idempotency_key="k1", body=b"{a}")
    again = await store.commands.submit(new_id(), SPEC, idempotency_key="k1", body=b"{a}")
    assert again.task_id == first.task_id and not again.created
    assert await backend.redis.xlen(backend.keys.events) == 1
    with pytest.raises(IdempotencyConflict):
        await store.commands.submit(new_id(), SPEC, idempotency_key="k1", body=b"{b}")
    assert await backend.redis.xlen(backend.keys.events) == 1


async def test_resent_submit_is_applied_once(store: Stores, backend: Backend) -> None:
    task_id = new_id()
    await store.commands.submit(task_id, SPEC)
    again = await store.commands.submit(task_id, SPEC)
    assert not again.created
    assert await backend.redis.xlen(backend.keys.events) == 1


async def test_claim_heartbeat_finish_and_fencing(store: Stores, backend: Backend) -> None:
    task_id = new_id()
    await store.commands.submit(task_id, SPEC)
    message_id, taken = await take(store, backend)
    assert taken == task_id
    claim = await store.queue.claim(
        task_id, worker="w1", token="t1", message_id=message_id, reclaim=False, max_attempts=3
    )
    assert (claim.outcome, claim.attempt) == ("ok", 1)
    # A re-sent claim (client retry) is the same claim, not a second attempt.
    assert (
        await store.queue.claim(task_id, worker="w1", token="t1", message_id=message_id, reclaim=False, max_attempts=3)
    ).attempt == 1
    # Another worker cannot start it without a reclaim...
    busy = await store.queue.claim(
        task_id, worker="w2", token="t2", message_id=message_id, reclaim=False, max_attempts=3
    )
    assert busy.outcome == "busy"
    assert await store.queue.heartbeat(task_id, 1, worker="w1", message_id=message_id, progress=0.5) is None
    # ...but can take it over once the lease expired; then attempt 1 is fenced off.
    takeover = await store.queue.claim(
        task_id, worker="w2", token="t2", message_id=message_id, reclaim=True, max_attempts=3
    )
    assert takeover.attempt == 2
    fenced = await store.queue.heartbeat(task_id, 1, worker="w1", message_id=message_id, progress=0.9)
    assert fenced is not None and fenced.attempt == 2
    late = await store.queue.finish(
        Completed(task_id=task_id, attempt=1, result={"x": 1}), message_id=message_id, result=b'{"late": true}'
    )
    assert late is not None
    assert await store.log.result(task_id) is None
    done = await store.queue.finish(
        Completed(task_id=task_id, attempt=2, result={"x": 2}), message_id=message_id, result=b'{"full": true}'
    )
    assert done is None
    # Re-sending the accepted outcome changes nothing.
    resent = await store.queue.finish(
        Completed(task_id=task_id, attempt=2, result={"x": 2}), message_id=message_id, result=b'{"again": true}'
    )
    assert resent is None
    assert await types(store, task_id) == ["Submitted", "Started", "Progress", "Started", "Completed"]
    assert (await control(backend, task_id))["status"] == "completed"
    assert await store.log.result(task_id) == b'{"full": true}'
    assert await backend.redis.ttl(backend.keys.result(task_id)) == -1  # kept for the task's lifetime
    # The results staged by the refused, the accepted and the re-sent outcome are all gone.
    staged = [backend.keys.staged_result(task_id, attempt) for attempt in (1, 2)]
    assert await backend.redis.exists(*staged) == 0
    pending = await backend.redis.xpending(backend.keys.work, WORKER_GROUP)
    assert pending["pending"] == 0
    assert await backend.redis.xlen(backend.keys.work) == 0


async def test_a_claim_that_cannot_start_retires_its_work_item(store: Stores, backend: Backend) -> None:
    orphan, queued = new_id(), new_id()
    await backend.redis.xadd(backend.keys.work, {"task_id": orphan})  # its task is gone
    await store.commands.submit(queued, SPEC)
    await backend.redis.xadd(backend.keys.work, {"task_id": queued})  # not the task's own item
    reply = await backend.redis.xreadgroup(WORKER_GROUP, "w1", {backend.keys.work: ">"}, count=10)
    items = [(m.decode(), f[b"task_id"].decode()) for m, f in reply[0][1]]
    outcomes = [
        (await store.queue.claim(t, worker="w1", token=m, message_id=m, reclaim=False, max_attempts=3)).outcome
        for m, t in items
    ]
    assert outcomes == ["missing", "ok", "stale"]
    # Only the claimed item is left, pending; the other two are acknowledged and deleted.
    assert [
        p["message_id"].decode()
        for p in await backend.redis.xpending_range(backend.keys.work, WORKER_GROUP, "-", "+", 10)
    ] == [items[1][0]]
    assert await backend.redis.xlen(backend.keys.work) == 1


async def test_a_completion_whose_staged_result_is_gone_writes_nothing(store: Stores, backend: Backend) -> None:
    task_id = new_id()
    await store.commands.submit(task_id, SPEC)
    message_id, _ = await take(store, backend)
    await store.queue.claim(task_id, worker="w1", token="t1", message_id=message_id, reclaim=False, max_attempts=3)
    keys = backend.keys
    # finish.lua called as the store would, but without the SET that stages the result.
    with pytest.raises(ResponseError, match="staged result"):
        await AttemptScripts(backend.redis, keys, ScriptBatcher(backend.redis)).finish(
            task_id=task_id,
            attempt=1,
            message_id=message_id,
            outcome="completed",
            data=b"{}",
            version=1,
            result_staged=True,
            delay_ms=0,
            reason="",
            history=b"[]",
        )
    assert (await control(backend, task_id))["status"] == "running"
    assert await types(store, task_id) == ["Submitted", "Started"]
    assert await store.log.result(task_id) is None


async def test_take_reads_and_claims_in_one_call(store: Stores, backend: Backend) -> None:
    first, second, orphan = new_id(), new_id(), new_id()
    await store.commands.submit(first, SPEC)
    # A work item whose task is gone (say, removed by retention) is retired, not started.
    await backend.redis.xadd(backend.keys.work, {"task_id": orphan})
    await store.commands.submit(second, SPEC)

    taken = await store.queue.take(worker="w1", count=10)
    assert [(t.task_id, t.claim.outcome) for t in taken] == [(first, "ok"), (orphan, "skipped"), (second, "ok")]
    claimed = [t for t in taken if t.claim.outcome == "ok"]
    assert all(t.claim.attempt == 1 and t.claim.spec == SPEC for t in claimed)
    started = (await store.log.task_events(first))[-1].event
    assert started == Started(task_id=first, seq=2, attempt=1, worker="w1")
    assert (await control(backend, second))["status"] == "running"
    pending = await backend.redis.xpending_range(backend.keys.work, WORKER_GROUP, "-", "+", 10)
    assert sorted(p["message_id"].decode() for p in pending) == sorted(t.message_id for t in claimed)
    assert await backend.redis.xlen(backend.keys.work) == 2
    assert await store.queue.take(worker="w1", count=10) == []

    # A task claimed this way is fenced and finished like any other.
    assert await store.queue.finish(Completed(task_id=first, attempt=2, result={}), message_id=claimed[0].message_id)
    assert (
        await store.queue.finish(Completed(task_id=first, attempt=1, result={}), message_id=claimed[0].message_id)
        is None
    )
    assert await types(store, first) == ["Submitted", "Started", "Completed"]


async def test_cancel_rules(store: Stores, backend: Backend) -> None:
    queued, running, done, failed = new_id(), new_id(), new_id(), new_id()
    for task_id in (queued, running, done, failed):
        await store.commands.submit(task_id, SPEC)
    assert await store.commands.cancel(queued)
    assert not await store.commands.cancel(queued)  # harmless the second time
    assert await types(store, queued) == ["Submitted", "Cancelled"]

    items = [await take(store, backend) for _ in range(3)]
    by_task = {task_id: message_id for message_id, task_id in items}
    for task_id in (running, done, failed):
        await store.queue.claim(
            task_id, worker="w1", token=task_id, message_id=by_task[task_id], reclaim=False, max_attempts=3
        )
    await store.queue.finish(Completed(task_id=done, attempt=1, result={}), message_id=by_task[done])
    await store.queue.finish(Failed(task_id=failed, attempt=1, error="boom"), message_id=by_task[failed])

    assert await store.commands.cancel(running)
    fenced = await store.queue.heartbeat(running, 1, worker="w1", message_id=by_task[running], progress=0.3)
    assert fenced is not None and fenced.status == "cancelled"
    cancelled = (await store.log.task_events(running))[-1].event
    assert isinstance(cancelled, Cancelled) and cancelled.previous_status == "running"

    for task_id, status in ((done, "completed"), (failed, "failed")):
        before = await store.log.task_events(task_id)
        with pytest.raises(TaskConflict):
            await store.commands.cancel(task_id)
        assert await store.log.task_events(task_id) == before
        assert (await control(backend, task_id))["status"] == status
    unknown = new_id()
    with pytest.raises(TaskNotFound):
        await store.commands.cancel(unknown)
    assert await backend.redis.exists(backend.keys.control(unknown)) == 0
    # Nothing is left pending or queued for the cancelled tasks.
    assert (await backend.redis.xpending(backend.keys.work, WORKER_GROUP))["pending"] == 0
    assert await backend.redis.xlen(backend.keys.work) == 0


async def test_read_your_writes_before_the_projector_runs(store: Stores, backend: Backend) -> None:
    projection = Projection(backend.redis, backend.keys)
    task_id = new_id()
    await store.commands.submit(task_id, SPEC)
    assert (await projection.current(task_id)).status == "queued"  # type: ignore[union-attr]
    await Projector(projection).run(burst=True)
    await store.commands.cancel(task_id)
    state = await projection.current(task_id)
    assert state is not None and state.status == "cancelled" and state.seq == 2
    # The projected hash itself is still behind until the projector runs.
    behind = (await projection.load([task_id]))[task_id]
    assert behind.status == "queued"
    await Projector(projection).run(burst=True)
    assert (await projection.load([task_id]))[task_id] == state


async def test_events_carry_attempts(store: Stores, backend: Backend) -> None:
    task_id = new_id()
    await store.commands.submit(task_id, SPEC)
    message_id, _ = await take(store, backend)
    await store.queue.claim(task_id, worker="w9", token="x", message_id=message_id, reclaim=False, max_attempts=3)
    events = [e.event for e in await store.log.task_events(task_id)]
    assert events[1] == Started(task_id=task_id, seq=2, attempt=1, worker="w9")
    await store.queue.heartbeat(task_id, 1, worker="w9", message_id=message_id, progress=0.25)
    assert (await store.log.task_events(task_id))[-1].event == Progress(
        task_id=task_id, seq=3, attempt=1, progress=0.25
    )


async def test_releases_and_lost_workers_are_not_charged_and_isolate_the_task(store: Stores, backend: Backend) -> None:
    """Releases are never charged; a lost worker is not charged either, but from then on the task
    runs isolated (in a process of its own), also when it is taken again after a retry."""
    task_id = new_id()
    await store.commands.submit(task_id, SPEC)
    for attempt in (1, 2):  # two rolling deploys: released twice
        message_id, _ = await take(store, backend)
        claim = await store.queue.claim(
            task_id, worker="w1", token=f"t{attempt}", message_id=message_id, reclaim=False, max_attempts=3
        )
        assert (claim.outcome, claim.attempt, claim.isolated) == ("ok", attempt, False)
        assert await store.queue.release(task_id, attempt, worker="w1", message_id=message_id) is None
    message_id, _ = await take(store, backend)
    await store.queue.claim(task_id, worker="w1", token="t3", message_id=message_id, reclaim=False, max_attempts=3)
    # Attempt 3's worker dies: before, the third attempt was the last of the budget and the
    # reclaim failed the task; now nothing is charged and attempt 4 runs isolated.
    claim = await store.queue.claim(
        task_id, worker="w2", token="t4", message_id=message_id, reclaim=True, max_attempts=3
    )
    assert (claim.outcome, claim.attempt, claim.failures, claim.isolated) == ("ok", 4, 0, True)
    assert (await control(backend, task_id))["losses"] == "1"
    # Its isolated process dies (a retryable failure, charged); the retry runs isolated too.
    event = RetryScheduled(task_id=task_id, attempt=4, error="killed", error_type="TaskProcessDied", delay_ms=0)
    assert await store.queue.finish(event, message_id=message_id) is None
    assert await store.queue.promote_due_retries() == 1
    [taken] = await store.queue.take(worker="w3", count=1)
    assert (taken.claim.attempt, taken.claim.failures, taken.claim.isolated) == (5, 1, True)
    started = [e.event for e in await store.log.task_events(task_id) if isinstance(e.event, Started)]
    assert [(s.attempt, s.reclaimed, s.isolated) for s in started] == [
        (1, False, False),
        (2, False, False),
        (3, False, False),
        (4, True, True),
        (5, False, True),
    ]


async def test_a_task_that_keeps_losing_its_worker_fails_with_every_attempt_in_its_dead_letter(
    store: Stores, backend: Backend
) -> None:
    """The backstop: 10 lost workers per allowed attempt fail the task (WorkerLost); its dead
    letter gives every attempt's true outcome, the last lost one included (it was null)."""
    task_id = new_id()
    await store.commands.submit(task_id, SPEC)
    message_id, _ = await take(store, backend)
    await store.queue.claim(task_id, worker="w0", token="t0", message_id=message_id, reclaim=False, max_attempts=1)
    for n in range(1, 10):
        claim = await store.queue.claim(
            task_id, worker=f"w{n}", token=f"t{n}", message_id=message_id, reclaim=True, max_attempts=1
        )
        assert (claim.outcome, claim.attempt, claim.isolated) == ("ok", n + 1, True)
    final = await store.queue.claim(
        task_id, worker="w10", token="t10", message_id=message_id, reclaim=True, max_attempts=1
    )
    assert final.outcome == "terminal"
    failed = (await store.log.task_events(task_id))[-1].event
    assert isinstance(failed, Failed) and failed.error_type == "WorkerLost" and failed.attempt == 10
    [letter] = await store.log.dead_letters(limit=10, before=None)
    assert letter["reason"] == "worker_lost"
    assert [(a["attempt"], a["outcome"], a["isolated"]) for a in letter["history"]] == [
        (1, "lost", False),
        *((n, "lost", True) for n in range(2, 11)),
    ]
    assert await backend.redis.xlen(backend.keys.work) == 0
    # A user's requeue starts over with nothing charged; the task stays isolated.
    await store.commands.requeue(task_id)
    [taken] = await store.queue.take(worker="w1", count=1)
    assert (taken.claim.attempt, taken.claim.failures, taken.claim.isolated) == (11, 0, True)
    assert (await control(backend, task_id))["losses"] == "0"


async def test_retryable_failures_are_counted_in_the_claim(store: Stores, backend: Backend) -> None:
    """A retry_scheduled outcome is charged (`failures`), a release is not: the worker decides
    between a retry and a failure from the count its claim returns."""
    task_id = new_id()
    await store.commands.submit(task_id, SPEC)
    message_id, _ = await take(store, backend)
    await store.queue.claim(task_id, worker="w1", token="a", message_id=message_id, reclaim=False, max_attempts=3)
    event = RetryScheduled(task_id=task_id, attempt=1, error="blip", error_type="OSError", delay_ms=0)
    assert await store.queue.finish(event, message_id=message_id) is None
    assert await store.queue.promote_due_retries() == 1
    message_id, _ = await take(store, backend)
    claim = await store.queue.claim(
        task_id, worker="w1", token="b", message_id=message_id, reclaim=False, max_attempts=3
    )
    assert (claim.attempt, claim.failures, claim.isolated) == (2, 1, False)
    assert await store.queue.release(task_id, 2, worker="w1", message_id=message_id) is None
    [taken] = await store.queue.take(worker="w2", count=1)
    assert (taken.claim.attempt, taken.claim.failures) == (3, 1)


@pytest.mark.redis
async def test_a_completion_refused_by_redis_is_passed_on_as_redis_said_it(tmp_path: Path) -> None:
    """The staged result's RENAME is finish.lua's first write: a refusal of every write (here
    NOREPLICAS, as a primary without its replicas answers; READONLY and MISCONF alike) reaches the
    worker as Redis said it, which waits it out, not as a missing result, which would be a bug."""
    server = RedisServer(tmp_path)
    redis = aioredis.Redis.from_url(server.url)
    try:
        layout = Layout(prefix="{t}")
        queue = WorkQueue(redis, layout, reader=redis)
        await queue.ensure_group()
        task_id = new_id()
        await Commands(redis, layout).submit(task_id, SPEC)
        (taken,) = await queue.take(worker="w1", count=1)
        await redis.config_set("min-replicas-to-write", 1)
        done = Completed(task_id=task_id, attempt=taken.claim.attempt, result={"total_return_pct": 1.0})
        with pytest.raises(ResponseError) as refused:
            await queue.finish(done, message_id=taken.message_id, result=b'{"full": 1}')
        assert str(refused.value).startswith("NOREPLICAS") and store_unavailable(refused.value)
        await redis.config_set("min-replicas-to-write", 0)
        assert await queue.finish(done, message_id=taken.message_id, result=b'{"full": 1}') is None
        assert await redis.get(layout.of(task_id).result(task_id)) == b'{"full": 1}'
    finally:
        await redis.aclose()
        server.stop()
