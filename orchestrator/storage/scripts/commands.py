"""Typed wrappers of the API's (and retention's) command scripts: submit, cancel, requeue,
drop_result.

Each method names its script's KEYS from `Keys` and its ARGV by keyword, and reads the reply
into a NamedTuple. The scripts' behaviour is documented in their .lua files beside this one.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from orchestrator.storage.batching import ScriptBatcher
from orchestrator.storage.codec import text
from orchestrator.storage.connections import RedisClient
from orchestrator.storage.keys import IDEMPOTENCY_TTL_SECONDS, WORKER_GROUP, Keys
from orchestrator.storage.scripts import ScriptCall


class SubmitReply(NamedTuple):
    """submit.lua's verdict: 'ok' (created; `value` is the event id), 'existing' (made before by
    the same call or Idempotency-Key; `value` is its task id) or 'idempotency_conflict' (the key
    was used with another body; `value` is the task it made)."""

    outcome: str
    value: str


class Verdict(NamedTuple):
    """A command script's verdict: `outcome` ('ok', or the script's refusal such as 'missing',
    'conflict', 'already', 'done', 'chunk'); `detail`: the event id appended on 'ok', the task's
    status on 'conflict', the job's id on 'chunk', else ''."""

    outcome: str
    detail: str = ""


def _verdict(reply: list[Any]) -> Verdict:
    return Verdict(text(reply[0]), text(reply[1]) if len(reply) > 1 else "")


class CommandScripts:
    """The API-side scripts on one client, for the keys under one prefix. Calls go through
    `batcher` (concurrent requests share a round trip). Every method raises redis errors."""

    def __init__(self, redis: RedisClient, keys: Keys, batcher: ScriptBatcher) -> None:
        self.keys = keys
        self._submit = ScriptCall(redis, "submit", with_lib=True, batcher=batcher)
        self._cancel = ScriptCall(redis, "cancel", with_lib=True, batcher=batcher)
        self._requeue = ScriptCall(redis, "requeue", with_lib=True, batcher=batcher)
        self._drop_result = ScriptCall(redis, "drop_result", with_lib=True, batcher=batcher)

    async def submit(
        self,
        *,
        task_id: str,
        data: bytes,
        version: int,
        spec: bytes,
        idempotency_key: str | None,
        body_hash: str,
    ) -> SubmitReply:
        """submit.lua: append the `submitted` event `data`, keep the `spec` JSON in the control
        hash, enqueue a work item. `idempotency_key`: the owner-scoped key (None: none given),
        remembered with `body_hash` for IDEMPOTENCY_TTL_SECONDS."""
        reply = await self._submit(
            keys=[*self.keys.task_scope(task_id), self.keys.work, self.keys.idempotency(idempotency_key or "-")],
            args=[
                task_id,
                data,
                version,
                spec,
                "1" if idempotency_key else "0",
                body_hash,
                IDEMPOTENCY_TTL_SECONDS,
            ],
        )
        return SubmitReply(text(reply[0]), text(reply[1]))

    async def cancel(self, *, task_id: str, data: bytes, version: int) -> Verdict:
        """cancel.lua: 'ok', 'already' (cancelled before), 'missing', 'conflict' (finished) or
        'chunk' (a chunk of the job `detail`: its job is cancelled, not it)."""
        reply = await self._cancel(
            keys=[*self.keys.task_scope(task_id), self.keys.work, self.keys.delayed, self.keys.job_chunks(task_id)],
            args=[task_id, data, version, WORKER_GROUP],
        )
        return _verdict(reply)

    async def requeue(self, *, task_id: str, data: bytes, version: int) -> Verdict:
        """requeue.lua: 'ok', 'missing', 'conflict' (the task is not failed) or 'chunk' (a chunk
        of the job `detail`)."""
        k = self.keys
        reply = await self._requeue(
            keys=[*k.task_scope(task_id), k.work, k.job_chunks(task_id), k.job(task_id)], args=[task_id, data, version]
        )
        return _verdict(reply)

    async def drop_result(
        self, *, task_id: str, data: bytes, version: int, object_key: str, live_projection: Keys
    ) -> Verdict:
        """drop_result.lua: record that the full result at `object_key` is deleted: 'ok', 'done'
        (recorded before), 'missing' or 'conflict'. `live_projection`: the keys of the live
        projection, which restore a compacted task's control hash."""
        reply = await self._drop_result(
            keys=[*self.keys.task_scope(task_id), live_projection.projected_task(task_id)],
            args=[task_id, data, version, object_key],
        )
        return _verdict(reply)
