"""Storing an attempt's outcome: the full result uploaded, then the fenced `finish` or `release`,
each re-sent until the store takes it (an outcome must not be lost to an outage)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import obstore.exceptions
import structlog

from consumers.worker.assignment import Assignment
from orchestrator.domain.events import Completed, Failed, ResultRef, RetryScheduled
from orchestrator.domain.jobs import ChunkEnd, FanOut
from orchestrator.settings import Settings
from orchestrator.storage.connections import until_reachable
from orchestrator.storage.results.encoding import EncodedResult
from orchestrator.storage.results.store import ResultStore
from orchestrator.storage.workqueue import WorkQueue

log = structlog.get_logger("backstream.worker")

# How long the upload of a full result waits before it tries again, at first and at most (s).
UPLOAD_RETRY_FIRST_S = 0.1
UPLOAD_RETRY_MAX_S = 5.0


class Reporter:
    """Writes the outcome of one attempt (`job`) of this worker (`worker`) to `queue`, and its
    full result to `results` (None: into Redis beside the task). `stopped_by()` says why the
    attempt was stopped meanwhile (None while it was not): an upload waiting on the results
    store gives up then."""

    def __init__(
        self,
        queue: WorkQueue,
        job: Assignment,
        *,
        worker: str,
        settings: Settings,
        results: ResultStore | None,
        stopped_by: Callable[[], str | None],
    ) -> None:
        self.queue = queue
        self.job = job
        self.worker = worker
        self.settings = settings
        self.results = results
        self._stopped_by = stopped_by

    async def finish(
        self, event: Completed | Failed | RetryScheduled, result: bytes = b"", *, end: ChunkEnd | None = None
    ) -> str:
        """Store `event` (with a completion's full `result`, JSON bytes, when it goes to Redis),
        re-sent until stored; for a chunk of a job, `end` is what its completion tells the job.
        Returns the outcome's name, or 'stopped' if the write was refused (the task was
        cancelled or taken over). Raises store errors that do not pass."""
        job = self.job
        fenced = await until_reachable(
            lambda: self.queue.finish(
                event,
                message_id=job.message_id,
                result=result,
                reason=getattr(event, "error_type", ""),
                spec=job.spec,
                end=end,
            ),
            doing="storing the outcome",
        )
        outcome_name = str(type(event).__struct_config__.tag)
        if fenced is not None:
            log.warning("task.write_refused", write=outcome_name, status=fenced.status, current_attempt=fenced.attempt)
            return "stopped"
        return outcome_name

    async def fan_out(self, plan: FanOut) -> str:
        """Hand the job over to its chunks (`plan`), re-sent until stored. Returns 'fanned_out',
        or 'stopped' if refused (the job was cancelled or taken over)."""
        job = self.job
        assert job.spec is not None
        tolerance = job.spec.failure_tolerance
        fenced = await until_reachable(
            lambda: self.queue.fan_out(
                job.task_id, job.attempt, message_id=job.message_id, plan=plan, tolerance=tolerance
            ),
            doing="fanning the job out",
        )
        if fenced is not None:
            log.warning("task.write_refused", write="fanned_out", status=fenced.status)
            return "stopped"
        log.info("job.fanned_out", chunks=len(plan.chunks), combinations=plan.combinations)
        return "fanned_out"

    async def release(self) -> str:
        """Give the task back to the queue (the worker is shutting down). Returns 'released', or
        'stopped' if refused."""
        job = self.job
        fenced = await until_reachable(
            lambda: self.queue.release(job.task_id, job.attempt, worker=self.worker, message_id=job.message_id),
            doing="releasing the task",
        )
        if fenced is not None:
            log.warning("task.write_refused", write="released", status=fenced.status)
            return "stopped"
        log.info("task.released")
        return "released"

    async def upload(self, encoded: EncodedResult) -> ResultRef | None:
        """Upload the full result to the results store, retrying (with backoff) until it is
        stored: an object store that is down or slow delays the outcome, never loses it, and the
        computed result is kept in memory meanwhile. None if the attempt was stopped while
        waiting (cancelled or taken over): what was uploaded is an orphan, collected later."""
        assert self.results is not None
        delay = UPLOAD_RETRY_FIRST_S
        failures = 0
        started = time.monotonic()
        while True:
            try:
                # A timeout scope, not wait_for: no task of its own to create and schedule.
                async with asyncio.timeout(self.settings.results_timeout_s):
                    ref = await self.results.upload(encoded)
            except (OSError, TimeoutError, obstore.exceptions.BaseError) as e:
                failures += 1
                log.warning("result.upload_failed", error=str(e)[:500], error_type=type(e).__name__, failures=failures)
                stopped_by = self._stopped_by()
                if stopped_by is not None:
                    log.info("task.stopped", reason=stopped_by)
                    return None
                await asyncio.sleep(delay)
                delay = min(delay * 2, UPLOAD_RETRY_MAX_S)
                continue
            log.info("result.uploaded", key=ref.key, bytes=ref.bytes, seconds=round(time.monotonic() - started, 4))
            return ref
