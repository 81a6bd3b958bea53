"""A worker computes on its compute threads only, however many tasks it holds (issue 21)."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
import uuid
from collections.abc import MutableMapping
from typing import Any

import msgspec
import pytest
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from consumers.engine.datasets import Catalog
from consumers.engine.runner import start_run
from consumers.worker.compute import THREAD_NAME
from consumers.worker.loop import Worker
from orchestrator.domain.spec import BacktestSpec
from orchestrator.settings import Settings
from orchestrator.storage.commands import Commands
from orchestrator.storage.readmodel import ReadModel
from orchestrator.storage.workqueue import WorkQueue
from tests.conftest import Backend
from tests.processes import eventually

# A sweep of 600 backtests: a few hundred milliseconds, many 10 ms chunks.
SWEEP = msgspec.convert(
    {"strategy": "sma_cross", "symbol": "GOOG", "params": {"fast": list(range(2, 22)), "slow": list(range(30, 60))}},
    BacktestSpec,
)


class Watched:
    """The engine's real runs (a `StartRun`), recording the threads they compute on and how many
    compute at the same moment."""

    def __init__(self, start: Any) -> None:
        self.start = start
        self.lock = threading.Lock()
        self.computing = 0
        self.most_at_once = 0
        self.threads: set[str] = set()
        self.chunks = 0

    def __call__(self, spec: BacktestSpec) -> Any:
        return _WatchedRun(self, self.watch(self.start, spec))

    def watch(self, fn: Any, *args: Any) -> Any:
        with self.lock:
            self.computing += 1
            self.most_at_once = max(self.most_at_once, self.computing)
            self.threads.add(threading.current_thread().name)
            self.chunks += 1
        try:
            return fn(*args)
        finally:
            with self.lock:
                self.computing -= 1


class _WatchedRun:
    def __init__(self, watched: Watched, run: Any) -> None:
        self._watched = watched
        self._run = run

    @property
    def done(self) -> bool:
        return bool(self._run.done)

    @property
    def progress(self) -> float:
        return float(self._run.progress)

    def advance(self, max_seconds: float) -> None:
        self._watched.watch(self._run.advance, max_seconds)

    def outcome(self) -> Any:
        return self._watched.watch(self._run.outcome)


@pytest.mark.redis
@pytest.mark.parametrize(("threads", "concurrency"), [(1, 4), (2, 8)])
async def test_a_worker_computes_on_at_most_its_compute_threads(
    real_backend: Backend, threads: int, concurrency: int
) -> None:
    commands = Commands(real_backend.redis, real_backend.layout)
    queue = WorkQueue(real_backend.redis, real_backend.layout, reader=real_backend.blocking)
    watched = Watched(functools.partial(start_run, catalog=Catalog.from_env_dir(None)))
    settings = Settings(prefix=real_backend.keys.prefix, compute_threads=threads)
    worker = Worker(queue, watched, settings, name="w1", concurrency=concurrency)
    task_ids = [str(uuid.uuid4()) for _ in range(concurrency)]
    for task_id in task_ids:
        await commands.submit(task_id, SWEEP)
    with capture_logs(processors=[merge_contextvars]) as logs:
        await asyncio.wait_for(worker.run(burst=True), 120)
    finished = {e["task_id"]: e["outcome"] for e in logs if e["event"] == "task.finished"}
    assert finished == dict.fromkeys(task_ids, "completed")
    # Every task was computing at once on the event loop's side; the engine never was.
    assert watched.chunks > 4 * concurrency
    assert watched.most_at_once <= threads
    assert watched.threads and all(name.startswith(THREAD_NAME) for name in watched.threads)
    assert len(watched.threads) <= threads
    started = next(e for e in logs if e["event"] == "worker.started")
    assert started["compute_threads"] == threads


class Gated(Watched):
    """Real runs; the first spec's run holds its compute thread at its third chunk until `go`."""

    def __init__(self, start: Any, gated: BacktestSpec) -> None:
        super().__init__(start)
        self.gated = gated
        self.holding = threading.Event()
        self.go = threading.Event()

    def __call__(self, spec: BacktestSpec) -> Any:
        run = super().__call__(spec)
        if spec == self.gated:
            advance, calls = run.advance, [0]

            def held(max_seconds: float) -> None:
                calls[0] += 1
                if calls[0] == 3:
                    self.holding.set()
                    self.go.wait(60)
                advance(max_seconds)

            run.advance = held
        return run


@pytest.mark.redis
async def test_a_task_waiting_for_its_turn_notices_a_cancel(real_backend: Backend) -> None:
    """Two sweeps on one compute thread; one holds the thread. The other, waiting for its turn,
    is cancelled: it stops there and then, before the thread is free, and writes nothing more."""
    commands = Commands(real_backend.redis, real_backend.layout)
    queue = WorkQueue(real_backend.redis, real_backend.layout, reader=real_backend.blocking)
    keep_spec = msgspec.structs.replace(SWEEP, params={**SWEEP.params, "fast": list(range(3, 22))})
    gated = Gated(functools.partial(start_run, catalog=Catalog.from_env_dir(None)), keep_spec)
    settings = Settings(prefix=real_backend.keys.prefix, compute_threads=1)
    worker = Worker(queue, gated, settings, name="w1", concurrency=2)
    keep, cancel = str(uuid.uuid4()), str(uuid.uuid4())
    stopped = asyncio.Event()

    def on_stop(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if event["event"] == "task.stopped" and event.get("task_id") == cancel:
            stopped.set()
        return event

    await commands.submit(keep, keep_spec)
    await commands.submit(cancel, SWEEP)
    with capture_logs(processors=[merge_contextvars, on_stop]) as logs:
        running = asyncio.create_task(worker.run(burst=True))
        try:
            assert await asyncio.to_thread(gated.holding.wait, 60)
            assert await real_backend.redis.hget(real_backend.keys.control(cancel), "status") == b"running"
            await commands.cancel(cancel)
            await asyncio.wait_for(stopped.wait(), 10)
            assert not gated.go.is_set()  # the only compute thread was held all along
        finally:
            gated.go.set()
        await asyncio.wait_for(running, 120)
    finished = {e["task_id"]: e["outcome"] for e in logs if e["event"] == "task.finished"}
    assert finished == {keep: "completed"}
    assert [e["reason"] for e in logs if e["event"] == "task.stopped"] == ["cancelled"]
    events = [
        type(e.event).__name__.lower()
        for e in await ReadModel(real_backend.redis, real_backend.keys).task_events(cancel)
    ]
    assert events[-1] == "cancelled"


@pytest.mark.redis
async def test_a_task_waiting_for_its_turn_keeps_its_lease(real_backend: Backend) -> None:
    """One sweep holds the only compute thread for three leases; the other, waiting for its
    turn all that time, keeps renewing its lease (its work item's idle time stays under the
    lease, so no other worker would reclaim it), then runs to completion."""
    commands = Commands(real_backend.redis, real_backend.layout)
    queue = WorkQueue(real_backend.redis, real_backend.layout, reader=real_backend.blocking)
    keep_spec = msgspec.structs.replace(SWEEP, params={**SWEEP.params, "fast": list(range(3, 22))})
    gated = Gated(functools.partial(start_run, catalog=Catalog.from_env_dir(None)), keep_spec)
    settings = Settings(prefix=real_backend.keys.prefix, compute_threads=1, lease_ms=300, heartbeat_ms=50)
    worker = Worker(queue, gated, settings, name="w1", concurrency=2)
    holder, waiter = str(uuid.uuid4()), str(uuid.uuid4())
    await commands.submit(holder, keep_spec)
    await commands.submit(waiter, SWEEP)
    with capture_logs(processors=[merge_contextvars]) as logs:
        running = asyncio.create_task(worker.run(burst=True))
        try:
            assert await asyncio.to_thread(gated.holding.wait, 60)
            held_since = time.monotonic()

            async def three_leases_kept() -> bool:
                """Every look while the thread is held: both items pending, neither idle a lease."""
                pending = await real_backend.redis.xpending_range(real_backend.keys.work, "workers", "-", "+", 10)
                assert len(pending) == 2
                assert all(p["time_since_delivered"] < settings.lease_ms for p in pending), pending
                return time.monotonic() - held_since > 3 * settings.lease_ms / 1000

            await eventually(three_leases_kept, timeout=30, what="three leases with the thread held")
            status = await real_backend.redis.hmget(real_backend.keys.control(waiter), "status", "attempt")
            assert status == [b"running", b"1"]
        finally:
            gated.go.set()
        await asyncio.wait_for(running, 120)
    finished = {e["task_id"]: e["outcome"] for e in logs if e["event"] == "task.finished"}
    assert finished == {holder: "completed", waiter: "completed"}
    assert not [e for e in logs if e["event"] == "task.stopped"]
