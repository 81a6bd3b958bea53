"""Running one claimed task: compute in chunks, heartbeat, honour cancels, record the outcome."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol

import msgspec
import structlog

from consumers.first_chunks import FirstChunks, finished
from consumers.retry import TaskTimeout, backoff_ms, is_retryable
from orchestrator.connections import REDIS_UNAVAILABLE, until_reachable
from orchestrator.events import Completed, Failed, RetryScheduled
from orchestrator.settings import Settings
from orchestrator.spec import BacktestSpec
from orchestrator.store import EventStore

log = structlog.get_logger("backstream.worker")

# How much computing one chunk of a backtest may do before the worker looks up again: the
# bound on how long a cancel waits for the running task to notice it.
CHUNK_SECONDS = 0.01


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
        on_computed: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        # Called when the computing is over and only the outcome remains to be stored.
        self.on_computed = on_computed
        self.first_chunks = first_chunks
        self.settings = settings
        self.worker = worker
        self.job = job
        # Set by the worker when it shuts down: give the task back after the current chunk.
        self.release_requested = asyncio.Event()

    async def run(self) -> str:
        """Returns how the attempt ended: completed, failed, retry_scheduled, released or stopped."""
        job = self.job
        started = time.monotonic()
        try:
            if job.spec is None:
                raise UnreadableSpec(job.unreadable)
            limit = min(self.settings.task_timeout_s, job.spec.timeout_s or self.settings.task_timeout_s)
            first = await self.first_chunks.compute(job.spec)
            run = first.run
            await self._compute(run, started + limit, limit)
            if self.release_requested.is_set() and not run.done:
                return await self._release()
            if first.outcome is not None:
                outcome, result = first.outcome, first.result
            else:
                # A long run's outcome (a sweep's table, say) can take a while to build and encode.
                outcome, result = await asyncio.to_thread(finished, run)
            event: Completed | Failed | RetryScheduled = Completed(
                task_id=job.task_id, attempt=job.attempt, result=outcome.summary
            )
        except Stop:
            return "stopped"
        except Exception as error:
            event, result = self._failure(error), b""
        self.on_computed()
        # An outcome must not be lost to a Redis restart: it is re-sent until stored.
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

    async def _compute(self, run: Any, deadline: float, limit: float) -> None:
        heartbeat_s = self.settings.heartbeat_ms / 1000
        progress_s = self.settings.progress_interval_ms / 1000
        last_beat = last_progress = time.monotonic()
        reported = 0.0
        while not run.done:
            if self.release_requested.is_set():
                return
            now = time.monotonic()
            if now > deadline:
                raise TaskTimeout(f"the task ran past its time limit of {limit:g} s")
            await self._check_still_mine()
            report = now - last_progress >= progress_s and run.progress > reported
            if report or now - last_beat >= heartbeat_s:
                await self._heartbeat(run.progress if report else None)
                last_beat = now
                if report:
                    last_progress, reported = now, run.progress
            await asyncio.to_thread(run.advance, CHUNK_SECONDS)

    async def _check_still_mine(self) -> None:
        """Between chunks: is the task still running under this attempt? A cancel or a takeover
        stops the run here; nothing more is written for it."""
        job = self.job
        try:
            status, current = await self.store.redis.hmget(self.store.keys.control(job.task_id), "status", "attempt")
        except REDIS_UNAVAILABLE:
            return  # keep computing; the fenced writes decide later
        status = status.decode() if status else "missing"
        if status == "running" and int(current or 0) == job.attempt:
            return
        log.info("task.stopped", reason="cancelled" if status == "cancelled" else "lost_claim", status=status)
        raise Stop

    async def _heartbeat(self, progress: float | None) -> None:
        job = self.job
        try:
            fenced = await self.store.heartbeat(
                job.task_id, job.attempt, worker=self.worker, message_id=job.message_id, progress=progress
            )
        except REDIS_UNAVAILABLE as e:
            log.warning("store.unavailable", write="heartbeat", error=str(e))
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
