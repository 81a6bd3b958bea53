"""An attempt's saved state (streams.md, "Checkpoints"): the one an earlier attempt of its task
left, which it resumes from, and its own, saved now and then for an attempt that takes over."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import redis.exceptions
import structlog

from consumers.worker.assignment import Assignment, Stop
from consumers.worker.compute import ComputeThreads
from orchestrator.storage.connections import store_unavailable
from orchestrator.storage.workqueue import WorkQueue

log = structlog.get_logger("backstream.worker")


class Checkpoints:
    """The checkpoints of one attempt (`job`) on `queue`; the state is encoded on `compute`."""

    def __init__(self, queue: WorkQueue, job: Assignment, compute: ComputeThreads) -> None:
        self.queue, self.job, self.compute = queue, job, compute

    async def load(self) -> bytes | None:
        """The state an earlier attempt saved (only a second attempt or later can find one);
        None when there is none or it cannot be read now (the run then starts over)."""
        if self.job.attempt <= 1:
            return None
        try:
            state = await self.queue.checkpoint(self.job.task_id)
        except redis.exceptions.RedisError as e:
            if not store_unavailable(e):
                raise
            log.warning("store.unavailable", read="checkpoint", error=str(e), error_type=type(e).__name__)
            return None
        if state is not None:
            log.info("task.resuming", checkpoint_bytes=len(state))
        return state

    async def save(self, run: Any) -> None:
        """Save the state of `run` (its `checkpoint()`, when it has one). Raises Stop if refused
        (this attempt lost the task); an outage, or a state that cannot be made, is logged and
        computing goes on."""
        saving = getattr(run, "checkpoint", None)
        if saving is None:
            return
        try:
            async with self.compute.turn():
                state = await self.compute.call(_encoded, saving)
        except Exception as e:  # a state that does not encode costs the resume, not the task
            log.warning("task.checkpoint_failed", error=str(e)[:500], error_type=type(e).__name__)
            return
        if state is None:
            return
        try:
            fenced = await self.queue.save_checkpoint(self.job.task_id, self.job.attempt, state)
        except redis.exceptions.RedisError as e:
            if not store_unavailable(e):
                raise
            log.warning("store.unavailable", write="checkpoint", error=str(e), error_type=type(e).__name__)
            return
        if fenced is not None:
            log.info("task.stopped", reason="lost_claim", status=fenced.status)
            raise Stop
        log.debug("task.checkpoint_saved", bytes=len(state))


def _encoded(saving: Callable[[], Any]) -> bytes | None:
    """A run's state (`run.checkpoint()`) as JSON bytes; None when it has none."""
    state = saving()
    if state is None or isinstance(state, bytes):
        return state
    return msgspec.json.encode(state)
