"""The worker's side of the store: reading work items, claiming them, and the writes of an
attempt (lease renewals, progress, outcome, release), each fenced by the attempt it belongs to.

Everything about one task goes to the partition its id names (`Layout.of`); what is the
deployment's as a whole (heartbeats, the workers' strategies) to the home partition. Reading the
work streams (take, the blocking read, a restarted worker's own pending items, the
reclaim of expired leases) is in work_items.py; this module holds the claim and every write."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence
from typing import Any, NamedTuple, cast

import msgspec

from orchestrator.domain.events import (
    Completed,
    Failed,
    FannedOut,
    Progress,
    Released,
    RetryScheduled,
    Started,
    StoredEvent,
    Submitted,
)
from orchestrator.domain.history import attempt_history
from orchestrator.domain.jobs import ChunkEnd, FanOut
from orchestrator.domain.spec import BacktestSpec
from orchestrator.domain.status import Status
from orchestrator.storage.batching import ScriptBatcher
from orchestrator.storage.codec import encode_json, event_data, text
from orchestrator.storage.connections import RedisClient, ready_for_concurrent_calls, routed_to
from orchestrator.storage.job_args import chunk_args, chunk_failed, chunk_submits, job_args
from orchestrator.storage.keys import CHECKPOINT_TTL_MS, STAGED_RESULT_TTL_MS
from orchestrator.storage.partitions import Layout
from orchestrator.storage.presence import Heartbeat
from orchestrator.storage.readmodel.log import task_events
from orchestrator.storage.scripts.attempts import AttemptScripts, ClaimReply, Fenced
from orchestrator.storage.work_items import WorkItem, WorkItems

__all__ = ["LOST_WORKERS_PER_ATTEMPT", "Claim", "Fenced", "Taken", "WorkItem", "WorkQueue"]

# A lost worker is not charged to a task; a task that loses its worker this many times its
# `max_attempts` anyway (it runs isolated after the first loss, so only its worker's own deaths
# can do that) is failed with `WorkerLost`, so that no task is taken over forever. Far above
# what chaos does to a healthy task: with one of three workers killed every 0.5-2 s for 25 s,
# the most any task lost in 15 seeded runs was 8 (tests/test_faults.py).
LOST_WORKERS_PER_ATTEMPT = 10


class Claim(msgspec.Struct, frozen=True):
    """What became of a claim. `outcome`: 'ok' (`attempt` and `spec` are set), or why not:
    'terminal', 'missing', 'stale' or 'busy' (claim), 'skipped' or 'busy' (take); or
    'unreadable': claimed, but its spec does not decode here (`error` says why)."""

    outcome: str
    attempt: int = 0
    spec: BacktestSpec | None = None
    # Attempts that ended in a retryable error since the task was submitted or requeued: the
    # ones charged to its budget of `max_attempts` (releases and lost workers are not).
    failures: int = 0
    # True when this attempt must run in a process of its own (the task once lost its worker).
    isolated: bool = False
    error: str = ""


def _claim(reply: ClaimReply) -> Claim:
    if reply.outcome != "ok":
        return Claim(outcome=reply.outcome)
    number, charged, solo = reply.attempt, reply.failures, reply.isolated
    try:
        decoded = msgspec.json.decode(reply.spec, type=BacktestSpec)
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        # Written by a newer version (a field this one does not know), or damaged: this worker
        # cannot run it, and must not crash on it with other claimed tasks in hand.
        return Claim(outcome="unreadable", attempt=number, failures=charged, isolated=solo, error=str(e))
    return Claim(outcome="ok", attempt=number, spec=decoded, failures=charged, isolated=solo)


class Taken(msgspec.Struct, frozen=True):
    """A work item read by `take`, with what became of its claim (outcome 'ok', 'busy':
    running elsewhere and left pending, or 'skipped': retired)."""

    message_id: str
    task_id: str
    claim: Claim


class AttemptState(NamedTuple):
    """A task's status and current attempt number, from its control hash ('missing', 0: gone)."""

    status: str
    attempt: int

    def is_running(self, attempt: int) -> bool:
        """Is the task still running under `attempt`?"""
        return self.status == Status.RUNNING and self.attempt == attempt


class WorkQueue(WorkItems):
    """The worker-side store on the partitions of `layout`. `redis`: the command client;
    `reader`: a client without a socket timeout, for blocking reads (default `redis`). Script
    calls made concurrently share one round trip, whatever their partitions (see batching.py).
    Every method raises redis errors when the store cannot be reached or refuses the call; a
    method given a task id raises ValueError when it is not a UUID and IndexError when it names
    a partition the layout lacks."""

    def __init__(self, redis: RedisClient, layout: Layout, *, reader: RedisClient | None = None) -> None:
        super().__init__(redis, layout, reader=reader)
        batcher = ScriptBatcher(redis)
        self._scripts = [AttemptScripts(redis, keys, batcher) for keys in self.partitions]

    def _of(self, task_id: str) -> AttemptScripts:
        """The scripts on the partition `task_id` belongs to."""
        return self._scripts[self.layout.partition_index(task_id)]

    async def take(self, *, worker: str, count: int) -> list[Taken]:
        """Read up to `count` new work items as `worker` and claim them, from the partitions in
        turn (`rotation`) until `count` are read or every partition was tried; [] if none are
        waiting. Never blocks: an idle worker waits in `read_new`, then claims.

        A round costs one round trip per partition visited: one when the first has `count`
        waiting (always, with one partition), `width` when all are idle."""
        taken: list[Taken] = []
        for partition in self.rotation():
            taken += await self.take_from(partition, worker=worker, count=count - len(taken))
            if len(taken) >= count:
                break
        return taken

    async def take_from(self, partition: int, *, worker: str, count: int) -> list[Taken]:
        """`take` on one partition, in one round trip: fewer than `count` back means that
        partition had no more new items when read. Raises IndexError for a partition the layout
        lacks."""
        items = await self._scripts[partition].take(
            worker=worker,
            count=count,
            started_data=event_data(Started(task_id="", worker=worker)),
            started_version=Started.SCHEMA_VERSION,
            token_prefix=f"{uuid.uuid4().hex}:",
        )
        return [Taken(message_id=i.message_id, task_id=i.task_id, claim=_claim(i.claim)) for i in items]

    async def claim(
        self, task_id: str, *, worker: str, token: str, message_id: str, reclaim: bool, max_attempts: int
    ) -> Claim:
        """Claim the task behind work item `message_id` as `worker`; a re-sent claim (the same
        `token`) returns the attempt it made. A `reclaim` takes over a running task whose lease
        expired, and fails it (`WorkerLost`) once it lost `max_attempts` *
        LOST_WORKERS_PER_ATTEMPT workers."""
        # The dead letter of a task that ends here carries every attempt, the lost one included.
        # Reclaims are rare, so reading the task's events for it is cheap.
        max_losses = max_attempts * LOST_WORKERS_PER_ATTEMPT
        lost = Failed(
            task_id=task_id,
            error=f"the task lost its worker {max_losses} times, running in a process of its own after the first",
            error_type="WorkerLost",
            retryable=True,
        )
        history = await self._history(task_id, lost) if reclaim else b"[]"
        reply = await self._of(task_id).claim(
            task_id=task_id,
            worker=worker,
            token=token,
            message_id=message_id,
            reclaim=reclaim,
            started_data=event_data(Started(task_id=task_id, worker=worker, reclaimed=reclaim)),
            started_version=Started.SCHEMA_VERSION,
            max_losses=max_losses,
            lost_data=event_data(lost),
            lost_version=Failed.SCHEMA_VERSION,
            history=history,
            job_args=job_args(chunk_failed(f"a chunk of this job failed for good: {lost.error}", lost)),
        )
        return _claim(reply)

    async def _history(self, task_id: str, failed: Failed) -> bytes:
        """The task's attempts as a dead letter lists them (JSON), `failed` ending the last."""
        events = await task_events(self.redis, self.layout.of(task_id), task_id)
        return encode_json(attempt_history([*events, StoredEvent(id="0-0", event=failed)]))

    async def heartbeat(
        self, task_id: str, attempt: int, *, worker: str, message_id: str, progress: float | None
    ) -> Fenced | None:
        """Renew the lease of `attempt` and, if `progress` (0..1) is given, record it. Returns
        Fenced if refused (the task is no longer running under this attempt)."""
        return await self._of(task_id).heartbeat(
            task_id=task_id,
            attempt=attempt,
            worker=worker,
            message_id=message_id,
            progress_data=None if progress is None else event_data(Progress(task_id=task_id, progress=progress)),
            progress_version=Progress.SCHEMA_VERSION,
        )

    async def finish(
        self,
        event: Completed | Failed | RetryScheduled,
        *,
        message_id: str,
        result: bytes = b"",
        reason: str = "",
        spec: BacktestSpec | None = None,
        end: ChunkEnd | None = None,
    ) -> Fenced | None:
        """Record the attempt's outcome (storing a completion's full `result`, JSON bytes, if
        any; scheduling a retry; or dead-lettering a failure with `reason`) and retire the work
        item. For a chunk of a job (`spec.chunk` set) the same step tells its job (`end`: what
        a completion tells it), and may end the job. Returns Fenced if refused. Idempotent: a
        re-sent outcome returns None (and counts nothing twice)."""
        task_id = event.task_id
        history = await self._history(task_id, event) if isinstance(event, Failed) else b"[]"
        # The full result is SET beside the script, not passed through it: Lua copies an argument
        # (~1.3 µs per KB, blocking Redis), a RENAME of the staged value costs the same at any size.
        scripts = self._of(task_id)
        stage: tuple[tuple[Any, ...], ...] = ()
        if result and isinstance(event, Completed):
            stage = (scripts.staged_result_command(task_id, event.attempt, result, STAGED_RESULT_TTL_MS),)
        return await scripts.finish(
            task_id=task_id,
            attempt=event.attempt,
            message_id=message_id,
            outcome=str(type(event).__struct_config__.tag),
            data=event_data(event),
            version=type(event).SCHEMA_VERSION,
            result_staged=bool(stage),
            delay_ms=event.delay_ms if isinstance(event, RetryScheduled) else 0,
            reason=reason,
            history=history,
            before=stage,
            job_args=chunk_args(spec, event, end),
        )

    async def fan_out(
        self, task_id: str, attempt: int, *, message_id: str, plan: FanOut, tolerance: float
    ) -> Fenced | None:
        """Submit the chunks of the job `task_id` as `plan` gives them (ids `chunk_id(task_id, i)`)
        and hand the job over to them, in one atomic step; `tolerance`: the fraction of chunks
        that may fail for good (`BacktestSpec.failure_tolerance`). Returns Fenced if refused.
        Idempotent: a re-sent call creates nothing twice."""
        fanned_out = FannedOut(
            task_id=task_id,
            chunks=len(plan.chunks),
            combinations=plan.combinations,
            per_chunk=plan.per_chunk,
            symbols=plan.symbols,
        )
        return await self._of(task_id).fan_out(
            task_id=task_id,
            attempt=attempt,
            message_id=message_id,
            data=event_data(fanned_out),
            version=FannedOut.SCHEMA_VERSION,
            submitted_version=Submitted.SCHEMA_VERSION,
            allowed_failures=plan.allowed_failures(tolerance),
            combinations=plan.combinations,
            chunks=chunk_submits(task_id, plan),
        )

    async def save_checkpoint(self, task_id: str, attempt: int, state: bytes) -> Fenced | None:
        """Save the run's state (JSON bytes) for an attempt that takes the task over. Returns
        Fenced if refused (the task is no longer running under `attempt`)."""
        return await self._of(task_id).checkpoint(
            task_id=task_id, attempt=attempt, state=state, ttl_ms=CHECKPOINT_TTL_MS
        )

    async def checkpoint(self, task_id: str) -> bytes | None:
        """The task's last saved state (None: none saved, or the task ended)."""
        return cast(bytes | None, await self.redis.get(self.layout.of(task_id).checkpoint(task_id)))

    async def release(self, task_id: str, attempt: int, *, worker: str, message_id: str) -> Fenced | None:
        """Give an unfinished attempt back to the queue (on shutdown), for another worker at
        once. Returns Fenced if refused."""
        return await self._of(task_id).release(
            task_id=task_id,
            attempt=attempt,
            message_id=message_id,
            data=event_data(Released(task_id=task_id, worker=worker)),
            version=Released.SCHEMA_VERSION,
        )

    async def promote_due_retries(self, limit: int = 100) -> int:
        """Give up to `limit` tasks per partition whose retry delay has passed a new work item,
        in every partition at once. Returns how many."""
        await ready_for_concurrent_calls(self.redis)
        promoted = await asyncio.gather(*(self._promote_in(i, limit) for i in range(self.width)))
        return sum(promoted)

    async def _promote_in(self, partition: int, limit: int) -> int:
        keys = self.partitions[partition]
        # The clock of the node serving the partition, the one its scripts read.
        now_s, now_us = await self.redis.execute_command("TIME", **await routed_to(self.redis, keys.delayed))
        due = await self.redis.zrangebyscore(keys.delayed, "-inf", now_s * 1000 + now_us // 1000, start=0, num=limit)
        # Called together, the promotions share one round trip (see batching.py).
        scripts = self._scripts[partition]
        replies = await asyncio.gather(*(scripts.promote(task_id=text(raw)) for raw in due))
        return sum(reply.outcome == "ok" for reply in replies)

    async def attempt_state(self, task_id: str) -> AttemptState:
        """The task's status and attempt now (one HMGET): a worker's check between chunks."""
        control = self.layout.of(task_id).control(task_id)
        status, attempt = await self.redis.hmget(control, "status", "attempt")
        return AttemptState(text(status) if status else "missing", int(attempt or 0))

    async def publish_strategies(self, worker: str, names: Sequence[str]) -> None:
        """Record the strategies `worker` can run (for the workers page)."""
        await self.redis.hset(self.layout.home.worker_strategies, worker, json.dumps(list(names)))

    async def withdraw_strategies(self, worker: str) -> None:
        """Remove `worker`'s strategies (it stops cleanly)."""
        await self.redis.hdel(self.layout.home.worker_strategies, worker)

    def liveness(self, worker: str, *, interval_s: float) -> Heartbeat:
        """The timer that beats `worker` into the workers' heartbeats every `interval_s` seconds."""
        return Heartbeat(self.redis, self.layout.home.worker_heartbeats, worker, interval_s=interval_s)
