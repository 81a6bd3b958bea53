"""Running one claimed task: compute in chunks, keep its lease, honour cancels; the outcome is
stored by report.py."""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import Callable
from typing import Any

import msgspec
import redis.exceptions
import structlog

from consumers.worker.assignment import Assignment, Stop, UnreadableSpec
from consumers.worker.checkpoints import Checkpoints
from consumers.worker.chunks import chunk_end
from consumers.worker.compute import ComputeThreads
from consumers.worker.first_chunks import FirstChunks, finished
from consumers.worker.lease import LeaseTimer
from consumers.worker.report import Reporter
from consumers.worker.retry import TaskTimeout, failure_event
from orchestrator.domain.events import Completed, Failed, RetryScheduled
from orchestrator.domain.jobs import FanOut, may_fan_out
from orchestrator.domain.ports import JobPlanner
from orchestrator.domain.status import Status
from orchestrator.settings import Settings
from orchestrator.storage.connections import store_unavailable
from orchestrator.storage.results.encoding import EncodedResult, encode_result
from orchestrator.storage.results.shape import with_top_rows
from orchestrator.storage.results.store import ResultStore
from orchestrator.storage.workqueue import WorkQueue

log = structlog.get_logger("backstream.worker")

# How much computing one chunk of a backtest may do before the worker looks up again.
CHUNK_SECONDS = 0.01
# How often a computing task checks that it is still its attempt's (a cancel, a takeover): the
# bound, with one chunk, on how long a cancel waits for it to notice. Checked between chunks once
# this much time has passed since its first chunk or the last check, so a short task costs none.
RUNNING_CHECK_SECONDS = 0.02
# How often a task waiting for its turn on a compute thread checks for a cancel: the bound on
# how late a queued task notices one (a computing one notices it within a chunk). Each check is
# a round trip the event loop makes, taking the GIL from the computing thread: at every chunk, a
# worker at concurrency 8 would make 700 a second while it computes one task at a time.
WAITING_CHECK_SECONDS = 0.05


class Computed(msgspec.Struct):
    """What the computing of an attempt produced: a completion (`outcome`, with the full result
    JSON-encoded in `result` for Redis or `encoded` for the results store), a run the worker's
    shutdown interrupted (`releasing`), or a job's chunks (`fan_out`)."""

    releasing: bool = False
    fan_out: FanOut | None = None
    outcome: Any = None
    result: bytes = b""
    encoded: EncodedResult | None = None


class Execution:
    """One attempt of one task on this worker: computes it on `compute` (its first chunk through
    `first_chunks`), renews its lease, stops on a cancel or a lost claim, and has its outcome
    stored. `on_computed` is called once only the outcome remains to be stored."""

    def __init__(
        self,
        queue: WorkQueue,
        first_chunks: FirstChunks,
        settings: Settings,
        worker: str,
        job: Assignment,
        *,
        compute: ComputeThreads,
        on_computed: Callable[[], None] = lambda: None,
        results: ResultStore | None = None,
        planner: JobPlanner | None = None,
    ) -> None:
        self.queue = queue
        # Cuts a job into chunks (None: every request runs as one task).
        self.planner = planner
        # Where the full result goes; None: into Redis beside the task (the way before).
        self.results = results
        # The worker's compute threads, which this attempt's chunks take turns on.
        self.compute = compute
        self.on_computed = on_computed
        self.first_chunks = first_chunks
        self.settings = settings
        self.worker = worker
        self.job = job
        self.report = Reporter(
            queue, job, worker=worker, settings=settings, results=results, stopped_by=lambda: self._stopped_by
        )
        self.checkpoints = Checkpoints(queue, job, compute)
        # Set by the worker when it shuts down: give the task back after the current chunk.
        self.release_requested = asyncio.Event()
        self._last_beat = time.monotonic()  # the last lease renewal sent (the claim renewed it)
        # Set by the lease keeper when this attempt must stop, writing nothing more: "lost_claim"
        # (a renewal was refused) or "timed_out" (the keeper recorded TaskTimeout itself).
        self._stopped_by: str | None = None

    async def run(self) -> str:
        """Returns how the attempt ended: completed, failed, retry_scheduled, released, stopped,
        or fanned_out (a job handed over to its chunks). Raises store errors that do not pass (a
        bug), leaving the work item to be reclaimed."""
        job = self.job
        started = time.monotonic()
        encoded: EncodedResult | None = None
        try:
            if job.spec is None:
                raise UnreadableSpec(job.unreadable)
            computed = await self._computed(started)
            self._stop_if_told()
            if computed.releasing:
                return await self.report.release()
            if computed.fan_out is not None:
                return await self.report.fan_out(computed.fan_out)
            outcome, result, encoded = computed.outcome, computed.result, computed.encoded
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
        written = await self._store(event, result, encoded)
        if written not in ("stopped", ""):
            log.info("task.finished", outcome=written, seconds=round(time.monotonic() - started, 4))
        return written or "stopped"

    async def _computed(self, started: float) -> Computed:
        """Compute the run within the task's time limit, the lease kept meanwhile: its outcome
        built and encoded off the event loop, `releasing` if the worker is shutting down, or a
        job's chunks (`fan_out`)."""
        job = self.job
        assert job.spec is not None
        if self.planner is not None and may_fan_out(job.spec):
            # Planning is the worker's work, not the request's: the request's time limit is each
            # chunk's, and the worker's own bounds the planning.
            most = self.settings.task_timeout_s
            async with self._lease_kept(started + most, most), self.compute.turn():
                plan = await self.compute.call(self.planner.plan, job.spec, job.task_id)
            if plan is not None:
                return Computed(fan_out=plan)
        limit = min(self.settings.task_timeout_s, job.spec.timeout_s or self.settings.task_timeout_s)
        # The full result is encoded once: an error is the attempt's; retried uploads reuse it.
        # A run done within its first chunk (most are) is encoded in that chunk's hop.
        encode = None if self.results is None else functools.partial(encode_result, job.task_id, job.attempt)
        async with self._lease_kept(started + limit, limit):
            first = await self.first_chunks.compute(job.spec, await self.checkpoints.load(), encode)
            run = first.run
            await self._compute(run, started + limit, limit)
            if self.release_requested.is_set() and not run.done:
                return Computed(releasing=True)
            if first.outcome is not None:
                return Computed(outcome=first.outcome, result=first.result, encoded=first.encoded)
            # A long run's outcome (a sweep's table, say) can take a while to build and encode:
            # each gets a turn of its own.
            async with self.compute.turn():
                outcome, result = await self.compute.call(finished, run, self.results is None)
            encoded = None
            if encode is not None:
                async with self.compute.turn():
                    encoded = await self.compute.call(encode, outcome.detail)
        return Computed(outcome=outcome, result=result, encoded=encoded)

    async def _store(
        self, event: Completed | Failed | RetryScheduled, result: bytes, encoded: EncodedResult | None
    ) -> str:
        """Store the outcome: the name of the one stored, 'stopped' if refused, '' if the attempt
        was stopped while its result waited for the results store."""
        uploading = self.results is not None and isinstance(event, Completed)
        if not uploading:
            self.on_computed()
        # An outcome must not be lost to a Redis restart or a full memory: it is re-sent until
        # stored, and the lease is renewed meanwhile (a renewal is not refused for lack of
        # memory), so no worker takes the task over to compute it again.
        async with self._lease_kept(math.inf, 0.0):
            if uploading:
                assert encoded is not None
                ref = await self.report.upload(encoded)
                if ref is None:
                    return ""
                # Only now is the slot given up: while the results store is down, a worker holds
                # its computed results and takes no more work, rather than pile up results it
                # cannot store (the work waits in the stream for the store, or another worker).
                self.on_computed()
                event, result = msgspec.structs.replace(event, result_ref=ref), b""
            return await self.report.finish(event, result, end=chunk_end(self.job.spec, event))

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
        self._stopped_by = "timed_out"
        event = self._failure(TaskTimeout(f"the task ran past its time limit of {limit:g} s (within one step)"))
        await self.report.finish(event)

    def _stop_if_told(self) -> None:
        if self._stopped_by is not None:
            log.info("task.stopped", reason=self._stopped_by)
            raise Stop

    async def _compute(self, run: Any, deadline: float, limit: float) -> None:
        """Advance `run` a chunk at a time until done, a release is requested, or the attempt
        stops. Raises TaskTimeout past `deadline` (`limit` s after the start), Stop."""
        progress_s = self.settings.progress_interval_ms / 1000
        last_progress = last_saved = last_checked = time.monotonic()
        reported = 0.0
        while not run.done:
            if self.release_requested.is_set():
                return
            self._stop_if_told()
            now = time.monotonic()
            if now > deadline:
                raise TaskTimeout(f"the task ran past its time limit of {limit:g} s")
            if now - last_checked >= RUNNING_CHECK_SECONDS:
                await self._check_still_mine()
                last_checked = now
            if now - last_progress >= progress_s and run.progress > reported:
                # A progress report renews the lease too; the timer renews it in between.
                await self._heartbeat(run.progress)
                last_progress, reported = now, run.progress
            # Waiting for its turn on a compute thread, the attempt checks for a cancel now and
            # then, so a queued task stops on a cancel without waiting for its turn.
            async with self.compute.turn(self._check_still_mine, WAITING_CHECK_SECONDS):
                await self.compute.call(run.advance, CHUNK_SECONDS)
            if time.monotonic() - last_saved >= self.settings.checkpoint_s and not run.done:
                await self.checkpoints.save(run)
                last_saved = time.monotonic()

    async def _check_still_mine(self) -> None:
        """Between chunks: is the task still running under this attempt? A cancel or a takeover
        stops the run here (raises Stop); nothing more is written for it."""
        try:
            state = await self.queue.attempt_state(self.job.task_id)
        except redis.exceptions.RedisError as e:
            if not store_unavailable(e):
                raise
            return  # keep computing; the fenced writes decide later
        if state.is_running(self.job.attempt):
            return
        reason = Status.CANCELLED.value if state.status == Status.CANCELLED else "lost_claim"
        log.info("task.stopped", reason=reason, status=state.status)
        raise Stop

    async def _heartbeat(self, progress: float | None) -> None:
        """Renew the lease (with `progress`, 0..1, when given). Raises Stop if refused; an outage
        is logged and computing goes on."""
        job = self.job
        self._last_beat = time.monotonic()
        try:
            fenced = await self.queue.heartbeat(
                job.task_id, job.attempt, worker=self.worker, message_id=job.message_id, progress=progress
            )
        except redis.exceptions.RedisError as e:
            if not store_unavailable(e):
                raise
            # Out of memory or unreachable: keep computing, the outcome is stored once it passes.
            log.warning("store.unavailable", write="heartbeat", error=str(e), error_type=type(e).__name__)
            return
        if fenced is None:
            return
        if fenced.attempt == job.attempt and fenced.status not in (Status.RUNNING, Status.CANCELLED):
            # This attempt's own outcome (finish or release) was stored while the renewal was in
            # flight: the lease is kept until the outcome is, so the two can cross. Nothing is lost.
            log.info("task.renewal_after_outcome", status=fenced.status)
            return
        log.warning("task.write_refused", write="heartbeat", status=fenced.status, current_attempt=fenced.attempt)
        raise Stop

    def _failure(self, error: Exception) -> Failed | RetryScheduled:
        job = self.job
        return failure_event(
            error, task_id=job.task_id, attempt=job.attempt, failures=job.failures, settings=self.settings
        )
