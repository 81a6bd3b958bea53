"""The API's commands (and retention's): each appends its event through one atomic, idempotent
script. The worker's writes are in workqueue.py; the reads of the log in store.py."""

from __future__ import annotations

import hashlib

import msgspec

from orchestrator.domain.errors import IdempotencyConflict, TaskConflict, TaskNotFound
from orchestrator.domain.events import Cancelled, Requeued, ResultDeleted, Submitted
from orchestrator.domain.spec import BacktestSpec
from orchestrator.storage.batching import ScriptBatcher
from orchestrator.storage.codec import encode_json, event_data
from orchestrator.storage.connections import RedisClient
from orchestrator.storage.keys import Keys
from orchestrator.storage.partitions import Layout
from orchestrator.storage.scripts.commands import CommandScripts, Verdict


class SubmitResult(msgspec.Struct, frozen=True):
    """The task a submit names: `created` is False when an earlier identical submit (the same
    Idempotency-Key and body, or a re-sent call) made it."""

    task_id: str
    created: bool


def body_fingerprint(body: bytes) -> str:
    """The sha256 of a request body, hex: what an Idempotency-Key is remembered with."""
    return hashlib.sha256(body).hexdigest()


class Commands:
    """Submit, cancel, requeue, and record a deleted result, on the partitions of `layout`: each
    command goes to the partition its task id names. Commands issued concurrently share one round
    trip (see batching.py; on a cluster, one per node). Every method raises redis errors when the
    store cannot be reached or refuses the call.

    `replica_acks` (BACKSTREAM_REPLICA_ACKS): when above 0, a command returns only once that many
    replicas of the node holding its task's partition have its write (WAIT, sent on the
    connection that wrote, after the script); fewer within batching.REPLICA_ACK_TIMEOUT_MS raise
    a NOREPLICAS ResponseError (a 503 from the API: the write is applied on the master, and a
    re-sent submit with the same Idempotency-Key names the same task)."""

    def __init__(self, redis: RedisClient, layout: Layout, *, replica_acks: int = 0) -> None:
        self.layout = layout
        batcher = ScriptBatcher(redis, replica_acks=replica_acks)
        self._partitions = [CommandScripts(redis, keys, batcher) for keys in layout.partitions]

    def _scripts(self, task_id: str) -> CommandScripts:
        """The scripts on `task_id`'s partition. Raises TaskNotFound for an id that names a
        partition this deployment does not have (no such task can exist)."""
        try:
            return self._partitions[self.layout.partition_index(task_id)]
        except IndexError:
            raise TaskNotFound(task_id) from None

    async def submit(
        self,
        task_id: str | None,
        spec: BacktestSpec,
        *,
        by: str | None = None,
        idempotency_key: str | None = None,
        body: bytes = b"",
    ) -> SubmitResult:
        """Append `submitted` and enqueue the task's first work item, once. `task_id`: None for a
        new id in the partition the idempotency key hashes to (a random one without), which is
        how the API submits; `by`: the user; `idempotency_key`: the client's key, scoped to `by`
        (two users may use the same one); `body`: the request body it is remembered with. Raises
        IdempotencyConflict when the key was used with another body."""
        scoped = f"{by or ''}:{idempotency_key}" if idempotency_key else None
        task_id = task_id or self.layout.new_task_id(scoped)
        reply = await self._scripts(task_id).submit(
            task_id=task_id,
            data=event_data(Submitted(task_id=task_id, spec=spec, by=by)),
            version=Submitted.SCHEMA_VERSION,
            spec=encode_json(spec),
            idempotency_key=scoped,
            body_hash=body_fingerprint(body),
        )
        if reply.outcome == "idempotency_conflict":
            raise IdempotencyConflict(idempotency_key or "")
        if reply.outcome == "existing":
            return SubmitResult(task_id=reply.value, created=False)
        return SubmitResult(task_id=task_id, created=True)

    async def cancel(self, task_id: str, *, by: str | None = None) -> bool:
        """Cancel a queued or running task (a job: with every chunk of it that has not ended).
        True if this call cancelled it, False if it already was. Raises TaskNotFound, or
        TaskConflict when the task is completed or failed, or is a chunk of a job."""
        verdict = await self._scripts(task_id).cancel(
            task_id=task_id, data=event_data(Cancelled(task_id=task_id, by=by)), version=Cancelled.SCHEMA_VERSION
        )
        _refuse(task_id, verdict, "only queued or running tasks can be cancelled")
        return verdict.outcome == "ok"

    async def requeue(self, task_id: str, *, by: str | None = None) -> None:
        """Send a failed task back to the queue as a new attempt with a fresh budget; a failed job
        runs again its chunks that did not complete. Raises TaskNotFound, or TaskConflict when
        the task is not failed or is a chunk of a job."""
        verdict = await self._scripts(task_id).requeue(
            task_id=task_id, data=event_data(Requeued(task_id=task_id, by=by)), version=Requeued.SCHEMA_VERSION
        )
        _refuse(task_id, verdict, "only failed tasks can be retried")

    async def record_result_deleted(self, task_id: str, key: str, *, reason: str, live_projection: Keys) -> str:
        """Record that retention deletes the full result at `key` of a completed task (before
        deleting its objects). Returns 'ok' (recorded now), 'done' (recorded before), 'missing'
        or 'conflict' (the task is not completed). `live_projection`: the keys of the live
        projection, which restores a compacted task's control hash."""
        verdict = await self._scripts(task_id).drop_result(
            task_id=task_id,
            data=event_data(ResultDeleted(task_id=task_id, key=key, reason=reason)),
            version=ResultDeleted.SCHEMA_VERSION,
            object_key=key,
            live_projection=live_projection,
        )
        return verdict.outcome


def _refuse(task_id: str, verdict: Verdict, rule: str) -> None:
    """Raise TaskNotFound for a `missing` verdict, TaskConflict (its status, then `rule`) for a
    `conflict`; return for any other."""
    if verdict.outcome == "missing":
        raise TaskNotFound(task_id)
    if verdict.outcome == "conflict":
        raise TaskConflict(task_id, verdict.detail, f"task {task_id} is {verdict.detail}; {rule}")
    if verdict.outcome == "chunk":
        raise TaskConflict(
            task_id, "chunk", f"task {task_id} is a chunk of the job {verdict.detail}: cancel or retry the job"
        )
