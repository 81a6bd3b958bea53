"""Running one claimed task: compute in chunks, keep its lease, honour cancels, record the outcome."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import msgspec
import obstore.exceptions
import redis.exceptions
import structlog

from consumers.worker.compute import ComputeThreads
from consumers.worker.first_chunks import FirstChunks, finished
from consumers.worker.retry import TaskTimeout, backoff_ms, is_retryable
from orchestrator.domain.events import Completed, Failed, ResultRef, RetryScheduled
from orchestrator.domain.spec import BacktestSpec
from orchestrator.settings import Settings
from orchestrator.storage.connections import store_unavailable, until_reachable
from orchestrator.storage.results import EncodedResult, ResultStore, encode_result, with_top_rows
from orchestrator.storage.store import EventStore

log = structlog.get_logger("backstream.worker")

# How much computing one chunk of a backtest may do before the worker looks up again: the
# bound on how long a cancel waits for the running task to notice it.
CHUNK_SECONDS = 0.01
# How often a task waiting for its turn on a compute thread checks for a cancel: the bound on
# how late a queued task notices one (a computing one notices it within a chunk). Each check is
# a round trip the event loop makes, taking the GIL from the computing thread: at every chunk, a
# worker at concurrency 8 would make 700 a second while it computes one task at a time.
WAITING_CHECK_SECONDS = 0.05


class Run(Protocol):
    """A backtest (or any task) that computes in chunks: what a worker needs of the engine."""

    @property
    def done(self) -> bool: ...
    @property
    def progress(self) -> float: ...
    def advance(self, max_seconds: float) -> None: ...
    def outcome(self) -> Any: ...  # with .summary (dict) and .detail (dict)


# Starts the run of a spec; `consumers.engine.runner.start_run` bound to a data catalog.
StartRun = Callable[[BacktestSpec], Run]


class Assignment(msgspec.Struct, frozen=True):
    """A claimed attempt of a task."""

    task_id: str
    attempt: int
    message_id: str
    spec: BacktestSpec | None  # None: claimed, but unreadable here (`unreadable` says why)
    # Attempts charged to the task before this one (retryable errors since submit or requeue).
    failures: int = 0
    unreadable: str = ""


class Stop(Exception):
    """The attempt must stop here without writing anything more (cancelled, or claim lost)."""


class UnreadableSpec(Exception):
    """The task's spec does not decode in this worker (a newer version wrote it, say). Retried
    like a crash: another attempt may land on a worker that reads it."""

    retryable = True


class LeaseTimer:
    """Calls `renew` whenever `interval` seconds have passed since `last_renewal()`, on the event
    loop, until stopped (`async with`) or `renew` returns False; past `deadline` plus one
    interval it calls `time_out` instead, once. Times are seconds of `time.monotonic()`. A timer
    handle, not a task, between renewals: a task done within one interval costs a heap push and
    a cancel. An unexpected error in `renew` is logged and renewing goes on."""

    def __init__(
        self,
        interval: float,
        deadline: float,
        *,
        last_renewal: Callable[[], float],
        renew: Callable[[], Awaitable[bool]],
        time_out: Callable[[], Awaitable[None]],
    ) -> None:
        self.interval = interval
        self.deadline = deadline
        self._last_renewal = last_renewal
        self._renew = renew
        self._time_out = time_out
        self._handle: asyncio.TimerHandle | None = None
        self._busy: asyncio.Future[None] | None = None
        self._stopped = False

    async def __aenter__(self) -> LeaseTimer:
        self._schedule()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stopped = True
        if self._handle is not None:
            self._handle.cancel()
        if self._busy is not None:
            await asyncio.wait([self._busy])

    def _schedule(self) -> None:
        if not self._stopped:
            delay = max(0.0, self._last_renewal() + self.interval - time.monotonic())
            self._handle = asyncio.get_running_loop().call_later(delay, self._due)

    def _due(self) -> None:
        self._handle = None
        if self._stopped:
            return
        now = time.monotonic()
        if now > self.deadline + self.interval:
            self._busy = asyncio.ensure_future(self._time_out())
        elif now < self._last_renewal() + self.interval:
            self._schedule()  # renewed meanwhile (a progress report)
        else:
            self._busy = asyncio.ensure_future(self._renew_then_schedule())

    async def _renew_then_schedule(self) -> None:
        try:
            renewed = await self._renew()
        except Exception:  # a bug, not a refusal: say so, and keep the lease rather than lose it
            log.exception("task.lease_renewal_failed")
            renewed = True
        if renewed:
            self._schedule()


class Execution:
    """One attempt of one task on this worker."""

    def __init__(
        self,
        store: EventStore,
        first_chunks: FirstChunks,
        settings: Settings,
        worker: str,
        job: Assignment,
        *,
        compute: ComputeThreads,
        on_computed: Callable[[], None] = lambda: None,
        results: ResultStore | None = None,
    ) -> None:
        self.store = store
        # Where the full result goes; None: into Redis beside the task (the way before).
        self.results = results
        # The worker's compute threads, which this attempt's chunks take turns on.
        self.compute = compute
        # Called when the computing is over and only the outcome remains to be stored.
        self.on_computed = on_computed
        self.first_chunks = first_chunks
        self.settings = settings
        self.worker = worker
        self.job = job
        # Set by the worker when it shuts down: give the task back after the current chunk.
        self.release_requested = asyncio.Event()
        self._last_beat = time.monotonic()  # the last lease renewal sent (the claim renewed it)
        # Set by the lease keeper when this attempt must stop, writing nothing more: "lost_claim"
        # (a renewal was refused) or "timed_out" (the keeper recorded TaskTimeout itself).
        self._stopped_by: str | None = None

    async def run(self) -> str:
        """Returns how the attempt ended: completed, failed, retry_scheduled, released or stopped."""
        job = self.job
        started = time.monotonic()
        try:
            if job.spec is None:
                raise UnreadableSpec(job.unreadable)
            limit = min(self.settings.task_timeout_s, job.spec.timeout_s or self.settings.task_timeout_s)
            async with self._lease_kept(started + limit, limit):
                first = await self.first_chunks.compute(job.spec)
                run = first.run
                await self._compute(run, started + limit, limit)
                releasing = self.release_requested.is_set() and not run.done
                if first.outcome is not None:
                    outcome, result = first.outcome, first.result
                elif not releasing:
                    # A long run's outcome (a sweep's table, say) can take a while to build and encode.
                    async with self.compute.turn():
                        outcome, result = await self.compute.call(finished, run, self.results is None)
                if self.results is not None and not releasing:
                    # Encoded once, here: an error is the attempt's; retried uploads reuse it.
                    async with self.compute.turn():
                        encoded = await self.compute.call(encode_result, job.task_id, job.attempt, outcome.detail)
            self._stop_if_told()
            if releasing:
                return await self._release()
            event: Completed | Failed | RetryScheduled = Completed(
                task_id=job.task_id, attempt=job.attempt, result=with_top_rows(outcome.summary, outcome.detail)
            )
        except Stop:
            return "stopped"
        except Exception as error:
            if self._stopped_by is not None:  # the step failed after this attempt was stopped
                log.info("task.stopped", reason=self._stopped_by, error_type=type(error).__name__)
                return "stopped"
            event, result = self._failure(error), b""
        uploading = self.results is not None and isinstance(event, Completed)
        if not uploading:
            self.on_computed()
        # An outcome must not be lost to a Redis restart or a full memory: it is re-sent until
        # stored, and the lease is renewed meanwhile (a renewal is not refused for lack of
        # memory), so no worker takes the task over to compute it again.
        async with self._lease_kept(math.inf, 0.0):
            if uploading:
                ref = await self._upload(encoded)
                if ref is None:
                    return "stopped"
                # Only now is the slot given up: while the results store is down, a worker holds
                # its computed results and takes no more work, rather than pile up results it
                # cannot store (the work waits in the stream for the store, or another worker).
                self.on_computed()
                event, result = msgspec.structs.replace(event, result_ref=ref), b""
            fenced = await until_reachable(
                lambda: self.store.finish(
                    event, message_id=job.message_id, result=result, reason=getattr(event, "error_type", "")
                ),
                doing="storing the outcome",
            )
        outcome_name = type(event).__struct_config__.tag
        if fenced is not None:
            log.warning("task.write_refused", write=outcome_name, status=fenced.status, current_attempt=fenced.attempt)
            return "stopped"
        log.info("task.finished", outcome=outcome_name, seconds=round(time.monotonic() - started, 4))
        return str(outcome_name)

    async def _upload(self, encoded: EncodedResult) -> ResultRef | None:
        """Upload the full result to the results store, retrying (with backoff, the lease kept)
        until it is stored: an object store that is down or slow delays the outcome, never loses
        it, and the computed result is kept in memory meanwhile. None if the attempt was stopped
        while waiting (cancelled or taken over): what was uploaded is an orphan, collected later."""
        assert self.results is not None
        delay = 0.1
        failures = 0
        started = time.monotonic()
        while True:
            try:
                ref = await asyncio.wait_for(self.results.upload(encoded), self.settings.results_timeout_s)
            except (OSError, TimeoutError, obstore.exceptions.BaseError) as e:
                failures += 1
                log.warning("result.upload_failed", error=str(e)[:500], error_type=type(e).__name__, failures=failures)
                if self._stopped_by is not None:
                    log.info("task.stopped", reason=self._stopped_by)
                    return None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            log.info("result.uploaded", key=ref.key, bytes=ref.bytes, seconds=round(time.monotonic() - started, 4))
            return ref

    def _lease_kept(self, deadline: float, limit: float) -> LeaseTimer:
        """While the body runs, a timer renews the lease every heartbeat interval, whatever the
        computation is doing: it runs in a thread, so one step taking longer than the lease (a
        large data file loading, indicators over a long series) does not look like a dead worker.

        Fenced like every write: a refused renewal (the task was cancelled or taken over) stops
        the attempt at its next chunk without writing. A step still running one heartbeat
        interval past the task's time limit (a chunk boundary would have raised TaskTimeout by
        then) is not waited for: the task fails with TaskTimeout at once, so a step that never
        returns cannot hold the task for ever. The timer is stopped, and a renewal in flight
        awaited, before the body's outcome is written."""
        return LeaseTimer(
            self.settings.heartbeat_ms / 1000,
            deadline,
            last_renewal=lambda: self._last_beat,
            renew=self._renew_once,
            time_out=lambda: self._time_out_within_step(limit),
        )

    async def _renew_once(self) -> bool:
        try:
            await self._heartbeat(None)
        except Stop:
            self._stopped_by = "lost_claim"
            return False
        return True

    async def _time_out_within_step(self, limit: float) -> None:
        """Record TaskTimeout while a step is still computing; whatever that step returns, the
        attempt writes nothing more (its thread cannot be stopped, only ignored)."""
        job = self.job
        self._stopped_by = "timed_out"
        event = self._failure(TaskTimeout(f"the task ran past its time limit of {limit:g} s (within one step)"))
        fenced = await until_reachable(
            lambda: self.store.finish(event, message_id=job.message_id, reason=getattr(event, "error_type", "")),
            doing="storing the outcome",
        )
        if fenced is not None:
            log.warning("task.write_refused", write="failed", status=fenced.status, current_attempt=fenced.attempt)

    def _stop_if_told(self) -> None:
        if self._stopped_by is not None:
            log.info("task.stopped", reason=self._stopped_by)
            raise Stop

    async def _compute(self, run: Any, deadline: float, limit: float) -> None:
        progress_s = self.settings.progress_interval_ms / 1000
        last_progress = time.monotonic()
        reported = 0.0
        while not run.done:
            if self.release_requested.is_set():
                return
            self._stop_if_told()
            now = time.monotonic()
            if now > deadline:
                raise TaskTimeout(f"the task ran past its time limit of {limit:g} s")
            await self._check_still_mine()
            if now - last_progress >= progress_s and run.progress > reported:
                # A progress report renews the lease too; the timer renews it in between.
                await self._heartbeat(run.progress)
                last_progress, reported = now, run.progress
            # Waiting for its turn on a compute thread, the attempt checks for a cancel now and
            # then, so a queued task stops on a cancel without waiting for its turn.
            async with self.compute.turn(self._check_still_mine, WAITING_CHECK_SECONDS):
                await self.compute.call(run.advance, CHUNK_SECONDS)

    async def _check_still_mine(self) -> None:
        """Between chunks: is the task still running under this attempt? A cancel or a takeover
        stops the run here; nothing more is written for it."""
        job = self.job
        try:
            status, current = await self.store.redis.hmget(self.store.keys.control(job.task_id), "status", "attempt")
        except redis.exceptions.RedisError as e:
            if not store_unavailable(e):
                raise
            return  # keep computing; the fenced writes decide later
        status = status.decode() if status else "missing"
        if status == "running" and int(current or 0) == job.attempt:
            return
        log.info("task.stopped", reason="cancelled" if status == "cancelled" else "lost_claim", status=status)
        raise Stop

    async def _heartbeat(self, progress: float | None) -> None:
        job = self.job
        self._last_beat = time.monotonic()
        try:
            fenced = await self.store.heartbeat(
                job.task_id, job.attempt, worker=self.worker, message_id=job.message_id, progress=progress
            )
        except redis.exceptions.RedisError as e:
            if not store_unavailable(e):
                raise
            # Out of memory or unreachable: keep computing, the outcome is stored once it passes.
            log.warning("store.unavailable", write="heartbeat", error=str(e), error_type=type(e).__name__)
            return
        if fenced is not None:
            log.warning("task.write_refused", write="heartbeat", status=fenced.status, current_attempt=fenced.attempt)
            raise Stop

    async def _release(self) -> str:
        job = self.job
        fenced = await until_reachable(
            lambda: self.store.release(job.task_id, job.attempt, worker=self.worker, message_id=job.message_id),
            doing="releasing the task",
        )
        if fenced is not None:
            log.warning("task.write_refused", write="released", status=fenced.status)
            return "stopped"
        log.info("task.released")
        return "released"

    def _failure(self, error: Exception) -> Failed | RetryScheduled:
        job = self.job
        message = str(error) or type(error).__name__
        kind = type(error).__name__
        if is_retryable(error) and job.failures + 1 < self.settings.max_attempts:
            delay = backoff_ms(job.attempt, self.settings)
            log.warning("task.attempt_failed", error=message, error_type=kind, retry_in_ms=delay)
            return RetryScheduled(
                task_id=job.task_id, attempt=job.attempt, error=message, error_type=kind, delay_ms=delay
            )
        log.warning("task.failed", error=message, error_type=kind)
        return Failed(
            task_id=job.task_id, attempt=job.attempt, error=message, error_type=kind, retryable=is_retryable(error)
        )
