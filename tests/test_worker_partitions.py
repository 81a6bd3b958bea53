"""Workers over many partitions: every partition is read, none starves, an idle worker wakes for
any of them, and reclaim and release work in each as they do in partition 0."""

from __future__ import annotations

import asyncio
import functools
import threading
from typing import Any

import pytest

from consumers.engine.datasets import Catalog
from consumers.engine.runner import start_run
from consumers.worker.intake import Intake
from consumers.worker.loop import Worker
from orchestrator.domain.events import Completed, Released, Started
from orchestrator.domain.spec import BacktestSpec
from orchestrator.settings import Settings
from orchestrator.storage.commands import Commands
from orchestrator.storage.keys import WORKER_GROUP
from orchestrator.storage.partitions import Layout, task_id_in
from orchestrator.storage.readmodel.log import task_events
from orchestrator.storage.workqueue import WorkQueue
from tests.conftest import Backend
from tests.processes import eventually

# On real Redis with four partitions, and on the real Redis Cluster with sixteen (conftest).
pytestmark = [pytest.mark.redis, pytest.mark.also_on_cluster]

SPEC = BacktestSpec(strategy="sma_cross", symbol="GOOG", params={"fast": 10, "slow": 20})


def _layout(backend: Backend) -> Layout:
    """The backend's layout when it has several partitions (the cluster's 16), else four."""
    return backend.layout if backend.layout.width > 1 else Layout(prefix=backend.keys.prefix, count=4)


class _Parts:
    """One test's deployment over several partitions: commands, the worker queue, workers."""

    def __init__(self, backend: Backend, **settings: Any) -> None:
        self.backend = backend
        self.layout = _layout(backend)
        self.commands = Commands(backend.redis, self.layout)
        self.queue = WorkQueue(backend.redis, self.layout, reader=backend.blocking)
        self.settings = Settings(prefix=self.layout.prefix, **settings)

    def worker(self, name: str, concurrency: int = 2, start: Any = None) -> Worker:
        run = start or functools.partial(start_run, catalog=Catalog.from_env_dir(None))
        return Worker(self.queue, run, self.settings, name=name, concurrency=concurrency)

    async def events(self, task_id: str) -> list[Any]:
        return [e.event for e in await task_events(self.backend.redis, self.layout.of(task_id), task_id)]

    async def status(self, task_id: str) -> str:
        raw = await self.backend.redis.hget(self.layout.of(task_id).control(task_id), "status")
        return raw.decode() if raw else "missing"


class _Held:
    """Runs that compute until `go` is set (each chunk waits for it up to its length)."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.started = threading.Event()

    def __call__(self, spec: BacktestSpec) -> Any:
        self.started.set()
        return _HeldRun(self.go)


class _HeldRun:
    def __init__(self, go: threading.Event) -> None:
        self.go = go
        self.progress = 0.0

    @property
    def done(self) -> bool:
        return self.go.is_set()

    def advance(self, max_seconds: float) -> None:
        self.go.wait(max_seconds)

    def outcome(self) -> Any:
        raise AssertionError("a held run is never finished in these tests")


async def test_tasks_in_every_partition_complete_exactly_once(real_backend: Backend) -> None:
    parts = _Parts(real_backend)
    await parts.queue.ensure_group()
    width = parts.layout.width
    # Two in every partition, then more at random over them.
    task_ids = [task_id_in(p) for p in range(width) for _ in range(2)]
    task_ids += [parts.layout.new_task_id() for _ in range(2 * width)]
    for task_id in task_ids:
        await parts.commands.submit(task_id, SPEC)
    workers = [parts.worker("w1", concurrency=3), parts.worker("w2", concurrency=2)]
    await asyncio.wait_for(asyncio.gather(*(w.run(burst=True) for w in workers)), 120)
    assert sum(w.outcomes.get("completed", 0) for w in workers) == len(task_ids)
    for task_id in task_ids:
        kinds = [type(e) for e in await parts.events(task_id)]
        assert kinds.count(Started) == 1 and kinds.count(Completed) == 1, (task_id, kinds)
        assert await parts.status(task_id) == "completed"
    for keys in parts.layout.partitions:
        assert await real_backend.redis.xlen(keys.work) == 0
        assert (await real_backend.redis.xpending(keys.work, WORKER_GROUP))["pending"] == 0


async def test_an_idle_worker_blocked_on_every_partition_wakes_for_any_one(real_backend: Backend) -> None:
    parts = _Parts(real_backend)
    worker = parts.worker("w1")
    running = asyncio.create_task(worker.run())
    width = parts.layout.width
    try:
        for partition in (width - 1, 1, 0):
            await eventually(lambda: worker.intake.waiting_on == set(range(width)), timeout=10, what="idle reads")
            task_id = task_id_in(partition)
            await parts.commands.submit(task_id, SPEC)
            await eventually(lambda t=task_id: _is(parts, t, "completed"), timeout=20, what=f"task in p{partition}")
    finally:
        worker.stop()
        await asyncio.wait_for(running, 10)
    assert worker.outcomes == {"completed": 3}
    # Stopped: its reads ended with it, none left holding a connection.
    assert worker.intake.waiting_on == set()


async def _is(parts: _Parts, task_id: str, status: str) -> bool:
    return await parts.status(task_id) == status


async def test_a_worker_with_one_slot_takes_from_every_partition_in_turn(real_backend: Backend) -> None:
    """Partition 0 has far more work than one slot can take, and another partition has one task:
    that task is taken within one round over the partitions, not after partition 0 drains."""
    parts = _Parts(real_backend)
    await parts.queue.ensure_group()
    width = parts.layout.width
    crowded = [task_id_in(0) for _ in range(2 * width)]
    lone = task_id_in(width - 1)
    for task_id in [*crowded, lone]:
        await parts.commands.submit(task_id, SPEC)
    intake = Intake(parts.queue, parts.settings, name="w1", running=lambda: ())
    taken: list[str] = []
    for _ in range(width + 1):
        items = await intake.next_items(1, burst=True)
        assert len(items) == 1 and items[0].claim is not None and items[0].claim.outcome == "ok"
        taken.append(items[0].task_id)
    assert lone in taken
    # And a plain take rotates too: `width` successive takes of one visit every partition in turn.
    for task_id in [task_id_in(p) for p in range(width)]:
        await parts.commands.submit(task_id, SPEC)
    fresh = _Parts(real_backend)  # a queue of its own: its rotation starts at partition 0
    partitions = []
    for _ in range(width):
        [one] = await fresh.queue.take(worker="w2", count=1)
        partitions.append(fresh.layout.partition_index(one.task_id))
    assert partitions == list(range(width))


async def test_a_busy_worker_comes_back_to_a_partition_it_found_drained(real_backend: Backend) -> None:
    """A worker kept busy by one partition (it never waits on its idle reads) still looks at the
    partitions it found empty again, within two rounds over them."""
    parts = _Parts(real_backend)
    await parts.queue.ensure_group()
    width = parts.layout.width
    for task_id in [task_id_in(0) for _ in range(4 * width)]:
        await parts.commands.submit(task_id, SPEC)
    intake = Intake(parts.queue, parts.settings, name="w1", running=lambda: ())
    for _ in range(width + 1):  # every other partition is found drained
        [item] = await intake.next_items(1, burst=False)
        assert parts.layout.partition_index(item.task_id) == 0
    lone = task_id_in(width - 1)
    await parts.commands.submit(lone, SPEC)
    taken = [item.task_id for _ in range(2 * width) for item in await intake.next_items(1, burst=False)]
    assert lone in taken and len(taken) == 2 * width
    [group] = await real_backend.redis.xinfo_groups(parts.layout.home.work)
    assert group["lag"] > 0  # partition 0 never ran dry: items not yet read remain


async def test_an_expired_lease_is_reclaimed_in_a_partition_other_than_0(real_backend: Backend) -> None:
    parts = _Parts(real_backend, lease_ms=300)
    await parts.queue.ensure_group()
    partition = parts.layout.width - 1
    task_id = task_id_in(partition)
    await parts.commands.submit(task_id, SPEC)
    # A worker claims it and dies: no heartbeat, no outcome.
    [taken] = await parts.queue.take_from(partition, worker="dead", count=1)
    assert taken.task_id == task_id and taken.claim.outcome == "ok"
    work = parts.layout.partition(partition).work

    async def lease_expired() -> bool:
        [entry] = await real_backend.redis.xpending_range(work, WORKER_GROUP, "-", "+", 1)
        return bool(entry["time_since_delivered"] > 300)

    await eventually(lease_expired, timeout=10, what="the lease to expire")
    survivor = parts.worker("alive")
    await asyncio.wait_for(survivor.run(burst=True), 60)
    assert survivor.outcomes == {"completed": 1}
    started = [e for e in await parts.events(task_id) if isinstance(e, Started)]
    assert [(e.worker, e.reclaimed) for e in started] == [("dead", False), ("alive", True)]
    # The dead worker's late write is refused: the lease (and the attempt) moved on.
    fenced = await parts.queue.heartbeat(task_id, 1, worker="dead", message_id=taken.message_id, progress=None)
    assert fenced is not None and fenced.status == "completed"


async def test_a_stopping_worker_releases_its_task_to_its_own_partition(real_backend: Backend) -> None:
    parts = _Parts(real_backend, shutdown_grace_s=0.0)
    held = _Held()
    worker = parts.worker("leaving", start=held)
    partition = parts.layout.width - 1
    task_id = task_id_in(partition)
    running = asyncio.create_task(worker.run())
    try:
        await eventually(lambda: worker.intake.waiting_on == set(range(parts.layout.width)), timeout=10, what="idle")
        await parts.commands.submit(task_id, SPEC)
        await eventually(held.started.is_set, timeout=20, what="the run to start")
    finally:
        worker.stop()
        await asyncio.wait_for(running, 20)
        held.go.set()
    events = await parts.events(task_id)
    assert [type(e) for e in events][-2:] == [Started, Released]
    assert await parts.status(task_id) == "queued"
    # Its new work item is in its own partition, for the next worker at once.
    keys = parts.layout.partition(partition)
    assert await real_backend.redis.xlen(keys.work) == 1
    assert (await real_backend.redis.xpending(keys.work, WORKER_GROUP))["pending"] == 0
