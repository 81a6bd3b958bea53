"""The worker: a member of the consumer group that takes work and runs it, until told to stop."""

from __future__ import annotations

import asyncio
import functools
import json
import time
import uuid
from collections.abc import Sequence
from typing import Any, NamedTuple

import structlog

from consumers.worker.attempt import CHUNK_SECONDS, Assignment, Execution, StartRun
from consumers.worker.compute import ComputeThreads
from consumers.worker.first_chunks import FirstChunks
from consumers.worker.isolation import IsolatedRuns
from consumers.worker.reclaim import reclaim_expired
from orchestrator.settings import Settings
from orchestrator.storage.codec import text
from orchestrator.storage.connections import until_reachable
from orchestrator.storage.keys import WORKER_GROUP
from orchestrator.storage.presence import Heartbeat
from orchestrator.storage.results import ResultStore
from orchestrator.storage.store import Claim, EventStore

log = structlog.get_logger("backstream.worker")


class Item(NamedTuple):
    """A work item to run: read (then claimed by its own task) or already claimed by `take`."""

    message_id: str
    task_id: str
    reclaim: bool = False
    claim: Claim | None = None


# An idle read blocks this long before the loop looks at stop requests, reclaims and retries.
READ_BLOCK_MS = 500


class Worker:
    """Runs up to `concurrency` tasks at once. The backtest kernel computes on the worker's
    compute threads (`settings.compute_threads`, default 1; consumers/worker/compute.py), whatever the
    concurrency, so the event loop keeps heartbeating and noticing cancels while it does, and
    concurrency overlaps round trips rather than splitting a core between threads."""

    def __init__(
        self,
        store: EventStore,
        reader: Any,
        start_run: StartRun,
        settings: Settings,
        *,
        name: str,
        concurrency: int = 1,
        strategies: Sequence[str] = (),
        results: ResultStore | None = None,
    ) -> None:
        self.store = store
        # The results store full results go to (None: Redis, as before it existed).
        self.results = results
        self.reader = reader  # a client without a socket timeout, for blocking reads
        self.compute = ComputeThreads(settings.compute_threads)
        # An isolated run's child process computes; its parent's thread only waits on a pipe.
        self._waiting_threads = ComputeThreads(None)
        self.first_chunks = FirstChunks(start_run, CHUNK_SECONDS, self.compute, encode=results is None)
        self.settings = settings
        self.name = name
        self.concurrency = concurrency
        self.strategies = list(strategies)  # what this worker can run, shown on the workers page
        self._running: dict[asyncio.Task[str], Execution] = {}
        # The tasks holding a slot: a task gives its slot up once it has computed, so the next
        # one is read and claimed while the outcome is being stored (their round trips overlap).
        self._computing: set[asyncio.Task[str]] = set()
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._releasing = False  # the grace period is over: unfinished tasks go back to the queue
        self._next_sweep = 0.0
        self.outcomes: dict[str, int] = {}

    def stop(self) -> None:
        """Stop taking work; running tasks get the grace period, then are released."""
        self._stopping.set()

    async def run(self, *, burst: bool = False) -> None:
        """Take and run work until stopped; in burst mode, until no work is left."""
        log.info(
            "worker.started",
            worker=self.name,
            concurrency=self.concurrency,
            compute_threads=self.settings.compute_threads,
        )
        # Its liveness, for /readyz, the workers page and metrics: beats on a timer, so an idle
        # worker is seen alive too (see orchestrator/storage/presence.py).
        heartbeat = Heartbeat(
            self.store.redis,
            self.store.keys.worker_heartbeats,
            self.name,
            interval_s=min(self.settings.heartbeat_ms, self.settings.lease_ms / 3) / 1000,
        )
        beating = asyncio.create_task(heartbeat.run())
        try:
            await self._run(burst)
        finally:
            beating.cancel()
            self.compute.close()
            await heartbeat.remove()

    async def _run(self, burst: bool) -> None:
        await self._with_reconnect(self.store.ensure_group, "creating the group")
        if self.strategies:
            await self._with_reconnect(self._publish_strategies, "publishing the strategies")
        # A worker restarted under the same name first takes back what it held before.
        backlog = await self._with_reconnect(self._own_pending, "reading own pending work")
        while not self._stopping.is_set():
            free = self.concurrency - len(self._computing)
            if free <= 0:
                await self._wait_for_a_slot()
                continue
            items, backlog = backlog[:free], backlog[free:]
            if not items:
                items = await self._with_reconnect(functools.partial(self._next_items, free, burst), "reading work")
            if not items and burst:
                if not self._running:
                    break
                await asyncio.wait(list(self._running), return_when=asyncio.FIRST_COMPLETED)
            for item in items:
                self._start(item)
        await self._drain()
        if self.strategies:
            await self._with_reconnect(
                lambda: self.store.redis.hdel(self.store.keys.worker_strategies, self.name), "removing the strategies"
            )
        log.info("worker.stopped", worker=self.name, outcomes=self.outcomes)

    async def _publish_strategies(self) -> None:
        await self.store.redis.hset(self.store.keys.worker_strategies, self.name, json.dumps(self.strategies))

    async def _next_items(self, free: int, burst: bool) -> list[Item]:
        now = time.monotonic()
        if now >= self._next_sweep:
            # Reclaims and due retries are looked for a few times per lease, not on every read.
            self._next_sweep = now + min(self.settings.lease_ms / 4000, 1.0)
            await self.store.promote_due_retries()
            reclaimed = await reclaim_expired(
                self.store.redis, self.store.keys, self.name, min_idle_ms=self.settings.lease_ms, count=free
            )
            # Never its own running tasks: their leases lapse only while the store refuses the
            # renewals (out of memory, say), and the outcome they hold is stored once it passes.
            mine = {e.job.message_id for e in self._running.values() if e is not None}
            reclaimed = [(m, t) for m, t in reclaimed if m not in mine]
            if reclaimed:
                log.info("worker.reclaimed", count=len(reclaimed))
                return [Item(m, t, reclaim=True) for m, t in reclaimed]
        # With work waiting, read and claim in one round trip; only an idle worker blocks.
        taken = await self.store.take(worker=self.name, count=free)
        if taken:
            return [Item(t.message_id, t.task_id, claim=t.claim) for t in taken]
        reply = await self.reader.xreadgroup(
            WORKER_GROUP,
            self.name,
            {self.store.keys.work: ">"},
            count=free,
            block=None if burst else READ_BLOCK_MS,
        )
        return [Item(text(m), text(f[b"task_id"])) for _, entries in reply or [] for m, f in entries]

    async def _own_pending(self) -> list[Item]:
        reply = await self.reader.xreadgroup(WORKER_GROUP, self.name, {self.store.keys.work: "0"}, count=10_000)
        return [Item(text(m), text(f[b"task_id"]), reclaim=True) for _, entries in reply or [] for m, f in entries if f]

    async def _wait_for_a_slot(self) -> None:
        self._slot_freed.clear()
        stopping = asyncio.ensure_future(self._stopping.wait())
        freed = asyncio.ensure_future(self._slot_freed.wait())
        await asyncio.wait([freed, stopping], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        freed.cancel()

    def _start(self, item: Item) -> None:
        task = asyncio.create_task(self._handle(item))
        self._running[task] = None  # type: ignore[assignment]  # filled in once claimed
        self._computing.add(task)
        task.add_done_callback(self._finished)

    def _free_slot(self, task: asyncio.Task[str] | None) -> None:
        if task in self._computing:
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
        message_id, task_id = item.message_id, item.task_id
        structlog.contextvars.bind_contextvars(task_id=task_id, worker=self.name)
        claim = item.claim or await self._claim(item)
        if claim.outcome not in ("ok", "unreadable"):
            log.info("task.not_claimed", outcome=claim.outcome)
            return "skipped"
        structlog.contextvars.bind_contextvars(attempt=claim.attempt)
        log.debug("task.claimed", reclaim=item.reclaim, isolated=claim.isolated)
        job = Assignment(
            task_id=task_id,
            attempt=claim.attempt,
            message_id=message_id,
            spec=claim.spec,
            failures=claim.failures,
            unreadable=claim.error,
        )
        current = asyncio.current_task()
        # A task whose worker was lost under it runs in a process of its own: if it kills that
        # process, only it fails (see consumers/worker/isolation.py and streams.md).
        isolated = IsolatedRuns(self.settings.data_dir) if claim.isolated else None
        execution = Execution(
            self.store,
            FirstChunks(isolated, CHUNK_SECONDS, self._waiting_threads, encode=self.results is None)
            if isolated
            else self.first_chunks,
            self.settings,
            self.name,
            job,
            compute=self._waiting_threads if isolated else self.compute,
            on_computed=lambda: self._free_slot(current),
            results=self.results,
        )
        self._running[current] = execution  # type: ignore[index]
        if self._releasing:
            execution.release_requested.set()
        try:
            return await execution.run()
        finally:
            if isolated is not None:
                isolated.close()

    async def _claim(self, item: Item) -> Claim:
        token = uuid.uuid4().hex  # one token for every re-send: the claim is made once
        return await until_reachable(
            lambda: self.store.claim(
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

    async def _with_reconnect(self, call: Any, doing: str) -> Any:
        """Redis restarts and network blips are waited out with backoff, not fatal; a worker
        asked to stop stops waiting."""
        return await until_reachable(call, doing=doing, give_up=self._stopping.is_set, fallback=[])
