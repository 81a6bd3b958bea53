"""Counters and histograms folded from the event log, exact and the same after a restart."""

from __future__ import annotations

import asyncio

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram

from orchestrator.domain.events import (
    Cancelled,
    Completed,
    Failed,
    Released,
    Requeued,
    RetryScheduled,
    Started,
    StoredEvent,
    Submitted,
)
from orchestrator.domain.status import Status
from orchestrator.storage.readmodel import LogCursor, ReadModel

log = structlog.get_logger("backstream.metrics")

# Log entries read per XRANGE when the follower catches up.
PAGE = 1000
# From sub-second backtests to hour-long sweeps.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800, 3600)
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)


class LogFollower:
    """Folds the event log, from its start, into counters and histograms: exact (each event is
    counted once, each partition's in its log order; a task's events are all in one partition)
    and the same after an API restart (a new follower re-reads the log). Reads incrementally with
    XRANGE after its position in each partition, at each scrape."""

    def __init__(self, registry: CollectorRegistry) -> None:
        # Where it got to in each partition's log (a LogCursor once the first scrape read the layout).
        self.position: LogCursor | None = None
        self.folded = 0
        self._lock = asyncio.Lock()
        self._runnable_at: dict[str, int] = {}  # task -> ms it became runnable (queued)
        self._started_at: dict[str, int] = {}  # task -> ms its current attempt started
        r = registry
        self.submitted = Counter("backstream_tasks_submitted", "Tasks submitted", registry=r)
        self.completed = Counter("backstream_tasks_completed", "Tasks completed", registry=r)
        self.failed = Counter(
            "backstream_tasks_failed", "Tasks failed for good (after their retries)", ["error_type"], registry=r
        )
        self.cancelled = Counter(
            "backstream_tasks_cancelled", "Tasks cancelled, by the status they had", ["previous_status"], registry=r
        )
        self.retries = Counter("backstream_attempts_retried", "Failed attempts scheduled to run again", registry=r)
        self.requeued = Counter("backstream_tasks_requeued", "Failed tasks sent back by a user (retry)", registry=r)
        self.released = Counter(
            "backstream_tasks_released", "Unfinished tasks given back by a stopping worker", registry=r
        )
        self.started = Counter("backstream_attempts_started", "Attempts started (claims)", registry=r)
        self.reclaims = Counter(
            "backstream_reclaims", "Attempts that took a task over from a worker whose lease expired", registry=r
        )
        self.duration = Histogram(
            "backstream_task_duration_seconds",
            "Run time of an attempt, from its `started` to its outcome",
            ["outcome"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "backstream_queue_wait_seconds",
            "From a task becoming runnable (submitted, requeued, released, retry due) to its `started`",
            buckets=WAIT_BUCKETS,
            registry=r,
        )

    async def catch_up(self, reads: ReadModel) -> None:
        """Fold every log entry after `position`, every partition's, a page at a time. Raises
        redis errors."""
        async with self._lock:
            if self.position is None:
                self.position = LogCursor.start(reads.width)
            async for partition, page in reads.cursor_pages(self.position, PAGE):
                for entry, error in page.undecodable:  # newer writer: skip it here, the projector stops
                    log.warning("metrics.undecodable", entry=entry, error=error)
                for stored in page.events:
                    self.fold(stored)
                self.position.advance(partition, page.last_id)

    def fold(self, stored: StoredEvent) -> None:
        """Count one event (in log order) into the counters and histograms."""
        at, event, task_id = stored.at_ms, stored.event, stored.event.task_id
        self.folded += 1
        match event:
            case Submitted():
                self.submitted.inc()
                self._runnable_at[task_id] = at
            case Started(reclaimed=reclaimed):
                self.started.inc()
                if reclaimed:
                    self.reclaims.inc()
                queued = self._runnable_at.pop(task_id, None)
                if queued is not None and not reclaimed:
                    self.queue_wait.observe(max(at - queued, 0) / 1000)
                self._started_at[task_id] = at
            case Completed():
                self.completed.inc()
                self._ended(task_id, at, Status.COMPLETED)
            case Failed(error_type=error_type):
                self.failed.labels(error_type).inc()
                self._ended(task_id, at, Status.FAILED)
            case RetryScheduled(delay_ms=delay_ms):
                self.retries.inc()
                self._attempt_done(task_id, at, "retry")
                self._runnable_at[task_id] = at + delay_ms
            case Released():
                self.released.inc()
                self._attempt_done(task_id, at, "released")
                self._runnable_at[task_id] = at
            case Requeued():
                self.requeued.inc()
                self._runnable_at[task_id] = at
            case Cancelled(previous_status=previous):
                self.cancelled.labels(previous or "unknown").inc()
                self._ended(task_id, at, Status.CANCELLED)

    def _attempt_done(self, task_id: str, at: int, outcome: str) -> None:
        started = self._started_at.pop(task_id, None)
        if started is not None:
            self.duration.labels(outcome).observe(max(at - started, 0) / 1000)

    def _ended(self, task_id: str, at: int, outcome: str) -> None:
        self._attempt_done(task_id, at, outcome)
        self._runnable_at.pop(task_id, None)
