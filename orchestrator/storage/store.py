"""The write side: every command appends its event through one atomic, idempotent script."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from typing import Any

import msgspec

from orchestrator.domain.errors import IdempotencyConflict, TaskConflict, TaskNotFound
from orchestrator.domain.events import (
    Cancelled,
    Completed,
    Failed,
    Progress,
    Released,
    Requeued,
    ResultDeleted,
    RetryScheduled,
    Started,
    StoredEvent,
    Submitted,
)
from orchestrator.domain.history import attempt_history
from orchestrator.domain.spec import BacktestSpec
from orchestrator.storage.batching import ScriptBatcher
from orchestrator.storage.codec import encode_json, event_data, text
from orchestrator.storage.keys import IDEMPOTENCY_TTL_SECONDS, STAGED_RESULT_TTL_MS, WORKER_GROUP, Keys
from orchestrator.storage.readmodel.log import task_events
from orchestrator.storage.scripts import Scripts

# A lost worker is not charged to a task; a task that loses its worker this many times its
# `max_attempts` anyway (it runs isolated after the first loss, so only its worker's own deaths
# can do that) is failed with `WorkerLost`, so that no task is taken over forever. Far above
# what chaos does to a healthy task: with one of three workers killed every 0.5-2 s for 25 s,
# the most any task lost in 15 seeded runs was 8 (tests/test_faults.py).
LOST_WORKERS_PER_ATTEMPT = 10


class SubmitResult(msgspec.Struct, frozen=True):
    task_id: str
    # False when an earlier identical submit (same Idempotency-Key, or a re-sent call) made it.
    created: bool


class Claim(msgspec.Struct, frozen=True):
    # 'ok' (attempt and spec are set), or why not: 'terminal', 'missing', 'stale' or 'busy';
    # or 'unreadable': claimed, but its spec does not decode here (`error` says why).
    outcome: str
    attempt: int = 0
    spec: BacktestSpec | None = None
    # Attempts that ended in a retryable error since the task was submitted or requeued: the
    # ones charged to its budget of `max_attempts` (releases and lost workers are not).
    failures: int = 0
    # True when this attempt must run in a process of its own (the task once lost its worker).
    isolated: bool = False
    error: str = ""


def _claimed(attempt: Any, spec: bytes, failures: Any, isolated: Any) -> Claim:
    number, charged, solo = int(attempt), int(failures or 0), text(isolated or b"0") == "1"
    try:
        decoded = msgspec.json.decode(spec, type=BacktestSpec)
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        # Written by a newer version (a field this one does not know), or damaged: this worker
        # cannot run it, and must not crash on it with other claimed tasks in hand.
        return Claim(outcome="unreadable", attempt=number, failures=charged, isolated=solo, error=str(e))
    return Claim(outcome="ok", attempt=number, spec=decoded, failures=charged, isolated=solo)


class Taken(msgspec.Struct, frozen=True):
    """A work item read by `take`, with what became of its claim."""

    message_id: str
    task_id: str
    # outcome 'ok' (claimed), 'busy' (running elsewhere, left pending) or 'skipped' (retired)
    claim: Claim


class Fenced(msgspec.Struct, frozen=True):
    """A worker's write was refused: the task is no longer running under its attempt."""

    status: str
    attempt: int


def body_fingerprint(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


class EventStore:
    """Appends events through the command scripts (reads are the read model's: readmodel/)."""

    def __init__(self, redis: Any, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self.scripts = Scripts(redis)
        # Script calls made concurrently share one round trip (see batching.py).
        self._batcher = ScriptBatcher(redis)

    def _task_keys(self, task_id: str) -> list[str]:
        k = self.keys
        return [k.control(task_id), k.task_log(task_id), k.events]

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.keys.work, WORKER_GROUP, id="0", mkstream=True)
        except Exception as e:  # BUSYGROUP: it exists, which is what we want
            if "BUSYGROUP" not in str(e):
                raise

    # --- commands of the API ---

    async def submit(
        self,
        task_id: str,
        spec: BacktestSpec,
        *,
        by: str | None = None,
        idempotency_key: str | None = None,
        body: bytes = b"",
    ) -> SubmitResult:
        event = Submitted(task_id=task_id, spec=spec, by=by)
        # An Idempotency-Key is its owner's: two people may use the same one without colliding.
        scoped = f"{by or ''}:{idempotency_key}" if idempotency_key else "-"
        keys = [*self._task_keys(task_id), self.keys.work, self.keys.idempotency(scoped)]
        reply = await self._batcher.call(
            self.scripts.submit,
            keys=keys,
            args=[
                task_id,
                event_data(event),
                Submitted.SCHEMA_VERSION,
                encode_json(spec),
                "1" if idempotency_key else "0",
                body_fingerprint(body),
                IDEMPOTENCY_TTL_SECONDS,
            ],
        )
        outcome, value = text(reply[0]), text(reply[1])
        if outcome == "idempotency_conflict":
            raise IdempotencyConflict(idempotency_key or "")
        if outcome == "existing":
            return SubmitResult(task_id=value, created=False)
        return SubmitResult(task_id=task_id, created=True)

    async def cancel(self, task_id: str, *, by: str | None = None) -> bool:
        """Cancel a queued or running task. True if this call cancelled it, False if it already was."""
        reply = await self._batcher.call(
            self.scripts.cancel,
            keys=[*self._task_keys(task_id), self.keys.work, self.keys.delayed],
            args=[
                task_id,
                event_data(Cancelled(task_id=task_id, by=by)),
                Cancelled.SCHEMA_VERSION,
                WORKER_GROUP,
            ],
        )
        outcome = text(reply[0])
        if outcome == "missing":
            raise TaskNotFound(task_id)
        if outcome == "conflict":
            status = text(reply[1])
            raise TaskConflict(
                task_id, status, f"task {task_id} is {status}; only queued or running tasks can be cancelled"
            )
        return outcome == "ok"

    async def requeue(self, task_id: str, *, by: str | None = None) -> None:
        """Send a failed task back to the queue as a new attempt."""
        reply = await self._batcher.call(
            self.scripts.requeue,
            keys=[*self._task_keys(task_id), self.keys.work],
            args=[task_id, event_data(Requeued(task_id=task_id, by=by)), Requeued.SCHEMA_VERSION],
        )
        outcome = text(reply[0])
        if outcome == "missing":
            raise TaskNotFound(task_id)
        if outcome == "conflict":
            status = text(reply[1])
            raise TaskConflict(task_id, status, f"task {task_id} is {status}; only failed tasks can be retried")

    async def record_result_deleted(self, task_id: str, key: str, *, reason: str, live_projection: Keys) -> str:
        """Record that retention deletes the full result at `key` of a completed task (before
        deleting its objects). Returns 'ok' (recorded now), 'done' (recorded before), 'missing'
        or 'conflict' (the task is not completed). `live_projection`: the keys of the live
        projection, which restores a compacted task's control hash."""
        reply = await self._batcher.call(
            self.scripts.drop_result,
            keys=[*self._task_keys(task_id), live_projection.projected_task(task_id)],
            args=[
                task_id,
                event_data(ResultDeleted(task_id=task_id, key=key, reason=reason)),
                ResultDeleted.SCHEMA_VERSION,
                key,
            ],
        )
        return text(reply[0])

    # --- commands of the workers; every write after the claim is fenced by the attempt ---

    async def claim(
        self, task_id: str, *, worker: str, token: str, message_id: str, reclaim: bool, max_attempts: int
    ) -> Claim:
        # A reclaim may end the task (it lost its worker too often, even running isolated): the
        # dead letter then carries every attempt, the lost one included. Reclaims are rare, so
        # reading the task's events for it is cheap.
        max_losses = max_attempts * LOST_WORKERS_PER_ATTEMPT
        lost = Failed(
            task_id=task_id,
            error=f"the task lost its worker {max_losses} times, running in a process of its own after the first",
            error_type="WorkerLost",
            retryable=True,
        )
        history = b"[]"
        if reclaim:
            events = await task_events(self.redis, self.keys, task_id)
            history = encode_json(attempt_history([*events, StoredEvent(id="0-0", event=lost)]))
        reply = await self._batcher.call(
            self.scripts.claim,
            keys=[*self._task_keys(task_id), self.keys.work, self.keys.dead_letters],
            args=[
                task_id,
                worker,
                token,
                event_data(Started(task_id=task_id, worker=worker, reclaimed=reclaim)),
                Started.SCHEMA_VERSION,
                message_id,
                "1" if reclaim else "0",
                WORKER_GROUP,
                max_losses,
                event_data(lost),
                Failed.SCHEMA_VERSION,
                history,
            ],
        )
        outcome = text(reply[0])
        if outcome != "ok":
            return Claim(outcome=outcome)
        return _claimed(reply[1], reply[2], reply[3], reply[4])

    async def take(self, *, worker: str, count: int) -> list[Taken]:
        """Read up to `count` new work items and claim them, in one round trip; [] if none are
        waiting. Never blocks: an idle worker waits on a blocking read, then claims one by one."""
        data = event_data(Started(task_id="", worker=worker))
        reply = await self._batcher.call(
            self.scripts.take,
            keys=[self.keys.work, self.keys.events],
            args=[
                WORKER_GROUP,
                worker,
                count,
                self.keys.prefix,
                data,
                Started.SCHEMA_VERSION,
                f"{uuid.uuid4().hex}:",
            ],
        )
        taken = []
        for item in reply:
            message_id, task_id, outcome = text(item[0]), text(item[1]), text(item[2])
            claim = _claimed(item[3], item[4], item[5], item[6]) if outcome == "ok" else Claim(outcome=outcome)
            taken.append(Taken(message_id=message_id, task_id=task_id, claim=claim))
        return taken

    async def heartbeat(
        self, task_id: str, attempt: int, *, worker: str, message_id: str, progress: float | None
    ) -> Fenced | None:
        """Renew the lease and, if `progress` is given, record it. Returns Fenced if refused."""
        data = event_data(Progress(task_id=task_id, progress=progress)) if progress is not None else b""
        reply = await self._batcher.call(
            self.scripts.heartbeat,
            keys=[*self._task_keys(task_id), self.keys.work],
            args=[
                task_id,
                attempt,
                WORKER_GROUP,
                worker,
                message_id,
                "0" if progress is None else "1",
                data,
                Progress.SCHEMA_VERSION,
            ],
        )
        return _fenced(reply)

    async def finish(
        self,
        event: Completed | Failed | RetryScheduled,
        *,
        message_id: str,
        result: bytes = b"",
        reason: str = "",
    ) -> Fenced | None:
        """Record the attempt's outcome (storing the full result of a completion, scheduling a
        retry, or dead-lettering a failure with `reason`) and retire the work item."""
        task_id = event.task_id
        keys = self.keys
        history = b"[]"
        if isinstance(event, Failed):
            events = await task_events(self.redis, self.keys, task_id)
            history = encode_json(attempt_history([*events, StoredEvent(id="0-0", event=event)]))
        # The full result is SET beside the script, not passed through it: Lua copies an argument
        # (~1.3 µs per KB, blocking Redis), a RENAME of the staged value costs the same at any size.
        staged = keys.staged_result(task_id, event.attempt)
        stage: tuple[tuple[Any, ...], ...] = ()
        if result and isinstance(event, Completed):
            stage = (("SET", staged, result, "PX", STAGED_RESULT_TTL_MS),)
        reply = await self._batcher.call(
            self.scripts.finish,
            keys=[
                *self._task_keys(task_id),
                keys.work,
                keys.result(task_id),
                keys.delayed,
                keys.dead_letters,
                staged,
            ],
            args=[
                task_id,
                event.attempt,
                WORKER_GROUP,
                message_id,
                type(event).__struct_config__.tag,
                event_data(event),
                type(event).SCHEMA_VERSION,
                "1" if stage else "",
                event.delay_ms if isinstance(event, RetryScheduled) else 0,
                reason,
                history,
            ],
            before=stage,
        )
        return _fenced(reply)

    async def release(self, task_id: str, attempt: int, *, worker: str, message_id: str) -> Fenced | None:
        """Give an unfinished task back to the queue (on shutdown), for another worker at once."""
        reply = await self._batcher.call(
            self.scripts.release,
            keys=[*self._task_keys(task_id), self.keys.work],
            args=[
                task_id,
                attempt,
                WORKER_GROUP,
                message_id,
                event_data(Released(task_id=task_id, worker=worker)),
                Released.SCHEMA_VERSION,
            ],
        )
        return _fenced(reply)

    async def promote_due_retries(self, limit: int = 100) -> int:
        """Give every task whose retry delay has passed a new work item. Returns how many."""
        now_s, now_us = await self.redis.time()
        due = await self.redis.zrangebyscore(
            self.keys.delayed, "-inf", now_s * 1000 + now_us // 1000, start=0, num=limit
        )
        # Called together, the promotions share one round trip (see batching.py).
        replies = await asyncio.gather(
            *(
                self._batcher.call(
                    self.scripts.promote,
                    keys=[self.keys.delayed, self.keys.work, self.keys.control(text(raw))],
                    args=[text(raw)],
                )
                for raw in due
            )
        )
        return sum(text(reply[0]) == "ok" for reply in replies)


def _fenced(reply: list[Any]) -> Fenced | None:
    if text(reply[0]) == "ok":
        return None
    return Fenced(status=text(reply[1]), attempt=int(reply[2]))
