"""The worker: a member of the consumer group that takes work and runs it, until told to stop.

Its parts: intake.py reads the next items, attempt.py runs one claimed task, report.py stores
its outcome, retry.py decides between a retry and a failure."""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog

from consumers.worker.assignment import Assignment, StartRun
from consumers.worker.attempt import CHUNK_SECONDS, Execution
from consumers.worker.compute import ComputeThreads
from consumers.worker.first_chunks import FirstChunks
from consumers.worker.intake import Intake, Item
from consumers.worker.isolation import IsolatedRuns
from orchestrator.domain.ports import JobPlanner
from orchestrator.settings import Settings
from orchestrator.storage.connections import until_reachable
from orchestrator.storage.results.store import ResultStore
from orchestrator.storage.workqueue import Claim, WorkQueue

log = structlog.get_logger("backstream.worker")

# How a handled item ended, counted in `Worker.outcomes`: an item not claimed is 'skipped'.
SKIPPED = "skipped"


class Worker:
    """Runs up to `concurrency` tasks at once, taken from `queue` as worker `name`. The backtest
    kernel computes on the worker's compute threads (`settings.compute_threads`, default 1;
    consumers/worker/compute.py), whatever the concurrency, so the event loop keeps heartbeating
    and noticing cancels while it does, and concurrency overlaps round trips rather than
    splitting a core between threads. `strategies`: the names it can run (the workers page);
    `results`: the results store full results go to (None: Redis); `planner`: cuts a job into
    chunks (None: every request runs as one task)."""

    def __init__(
        self,
        queue: WorkQueue,
        start_run: StartRun,
        settings: Settings,
        *,
        name: str,
        concurrency: int = 1,
        strategies: Sequence[str] = (),
        results: ResultStore | None = None,
        planner: JobPlanner | None = None,
    ) -> None:
        self.queue = queue
        self.planner = planner
        self.results = results
        self.compute = ComputeThreads(settings.compute_threads)
        # An isolated run's child process computes; its parent's thread only waits on a pipe.
        self._waiting_threads = ComputeThreads(None)
        self.first_chunks = FirstChunks(start_run, CHUNK_SECONDS, self.compute)
        self.settings = settings
        self.name = name
        self.concurrency = concurrency
        self.strategies = list(strategies)
        self.intake = Intake(queue, settings, name=name, running=self._running_messages)
        # Every task handling an item, with its attempt once claimed (None until then).
        self._running: dict[asyncio.Task[str], Execution | None] = {}
        # The tasks holding a slot: a task gives its slot up once it has computed, so the next
        # one is read and claimed while the outcome is being stored (their round trips overlap).
        self._computing: set[asyncio.Task[str]] = set()
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._releasing = False  # the grace period is over: unfinished tasks go back to the queue
        self.outcomes: dict[str, int] = {}

    def stop(self) -> None:
        """Stop taking work; running tasks get the grace period, then are released."""
        self._stopping.set()

    async def run(self, *, burst: bool = False) -> None:
        """Take and run work until stopped; in burst mode, until no work is left. Store outages
        are waited out; a bug in handling one task is logged, not raised."""
        log.info(
            "worker.started",
            worker=self.name,
            concurrency=self.concurrency,
            compute_threads=self.settings.compute_threads,
        )
        # Its liveness, for /readyz, the workers page and metrics: beats on a timer, so an idle
        # worker is seen alive too (see orchestrator/storage/presence.py).
        heartbeat = self.queue.liveness(
            self.name, interval_s=min(self.settings.heartbeat_ms, self.settings.lease_ms / 3) / 1000
        )
        beating = asyncio.create_task(heartbeat.run())
        try:
            await self._run(burst)
        finally:
            beating.cancel()
            self.compute.close()
            await heartbeat.remove()

    async def _run(self, burst: bool) -> None:
        await self._with_reconnect(self.queue.ensure_group, "creating the group")
        if self.strategies:
            publish = functools.partial(self.queue.publish_strategies, self.name, self.strategies)
            await self._with_reconnect(publish, "publishing the strategies")
        # A worker restarted under the same name first takes back what it held before.
        backlog: list[Item] = await self._with_reconnect(self.intake.own_pending, "reading own pending work")
        while not self._stopping.is_set():
            free = self.concurrency - len(self._computing)
            if free <= 0:
                await self._wait_for_a_slot()
                continue
            items, backlog = backlog[:free], backlog[free:]
            if not items:
                read = functools.partial(self.intake.next_items, free, burst)
                items = await self._with_reconnect(read, "reading work")
            if not items and burst:
                if not self._running:
                    break
                await asyncio.wait(list(self._running), return_when=asyncio.FIRST_COMPLETED)
            for item in items:
                self._start(item)
        # What the idle reads still outstanding bring is pending under this worker: it runs
        # within the grace period or is released with the rest, as an item read just before a
        # stop always was, rather than wait out a lease for another worker to reclaim it.
        for item in await self.intake.close():
            self._start(item)
        await self._drain()
        if self.strategies:
            withdraw = functools.partial(self.queue.withdraw_strategies, self.name)
            await self._with_reconnect(withdraw, "removing the strategies")
        log.info("worker.stopped", worker=self.name, outcomes=self.outcomes)

    def _running_messages(self) -> set[str]:
        return {e.job.message_id for e in self._running.values() if e is not None}

    async def _wait_for_a_slot(self) -> None:
        self._slot_freed.clear()
        stopping = asyncio.ensure_future(self._stopping.wait())
        freed = asyncio.ensure_future(self._slot_freed.wait())
        await asyncio.wait([freed, stopping], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        freed.cancel()

    def _start(self, item: Item) -> None:
        task = asyncio.create_task(self._handle(item))
        self._running[task] = None  # filled in once claimed
        self._computing.add(task)
        task.add_done_callback(self._finished)

    def _free_slot(self, task: asyncio.Task[Any] | None) -> None:
        if task is not None and task in self._computing:
            self._computing.discard(task)
            self._slot_freed.set()

    def _finished(self, task: asyncio.Task[str]) -> None:
        self._running.pop(task, None)
        self._free_slot(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            # A bug or an unexpected store error: the work item stays pending, so the task is
            # reclaimed after its lease; say so rather than lose the traceback.
            log.error("task.crashed", exc_info=error)
            return
        self.outcomes[task.result()] = self.outcomes.get(task.result(), 0) + 1

    async def _handle(self, item: Item) -> str:
        """Claim `item` (unless `take` did) and run its attempt. Returns how it ended."""
        structlog.contextvars.bind_contextvars(task_id=item.task_id, worker=self.name)
        claim = item.claim or await self._claim(item)
        if claim.outcome not in ("ok", "unreadable"):
            log.info("task.not_claimed", outcome=claim.outcome)
            return SKIPPED
        structlog.contextvars.bind_contextvars(attempt=claim.attempt)
        log.debug("task.claimed", reclaim=item.reclaim, isolated=claim.isolated)
        job = Assignment(
            task_id=item.task_id,
            attempt=claim.attempt,
            message_id=item.message_id,
            spec=claim.spec,
            failures=claim.failures,
            unreadable=claim.error,
        )
        current = asyncio.current_task()
        assert current is not None  # a coroutine run as a task
        # A task whose worker was lost under it runs in a process of its own: if it kills that
        # process, only it fails (see consumers/worker/isolation.py and streams.md).
        isolated = IsolatedRuns(self.settings.data_dir, self.settings.checkpoint_s) if claim.isolated else None
        execution = self._execution(job, isolated, on_computed=lambda: self._free_slot(current))
        self._running[current] = execution
        if self._releasing:
            execution.release_requested.set()
        try:
            return await execution.run()
        finally:
            if isolated is not None:
                isolated.close()

    def _execution(self, job: Assignment, isolated: IsolatedRuns | None, on_computed: Callable[[], None]) -> Execution:
        """The attempt of `job`: on this worker's compute threads, or in a process of its own."""
        first_chunks = self.first_chunks
        if isolated is not None:
            first_chunks = FirstChunks(isolated, CHUNK_SECONDS, self._waiting_threads)
        return Execution(
            self.queue,
            first_chunks,
            self.settings,
            self.name,
            job,
            compute=self._waiting_threads if isolated else self.compute,
            on_computed=on_computed,
            results=self.results,
            planner=self.planner,
        )

    async def _claim(self, item: Item) -> Claim:
        token = uuid.uuid4().hex  # one token for every re-send: the claim is made once
        return await until_reachable(
            lambda: self.queue.claim(
                item.task_id,
                worker=self.name,
                token=token,
                message_id=item.message_id,
                reclaim=item.reclaim,
                max_attempts=self.settings.max_attempts,
            ),
            doing="claiming a task",
        )

    async def _drain(self) -> None:
        """Let running tasks finish within the grace period, then release the rest to the queue."""
        if not self._running:
            return
        log.info("worker.draining", running=len(self._running), grace_s=self.settings.shutdown_grace_s)
        _, unfinished = await asyncio.wait(list(self._running), timeout=self.settings.shutdown_grace_s)
        if unfinished:
            self._releasing = True
            for task in unfinished:
                execution = self._running.get(task)
                if execution is not None:
                    execution.release_requested.set()
            await asyncio.wait(unfinished)

    async def _with_reconnect(self, call: Callable[[], Awaitable[Any]], doing: str) -> Any:
        """Redis restarts and network blips are waited out with backoff, not fatal; a worker
        asked to stop stops waiting."""
        return await until_reachable(call, doing=doing, give_up=self._stopping.is_set, fallback=[])
