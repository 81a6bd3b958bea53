"""Typed wrappers of the worker's scripts: take, claim, heartbeat, finish, release, promote,
fan_out, checkpoint.

Each method names its script's KEYS from `Keys` and its ARGV by keyword, and reads the reply
into a NamedTuple. The scripts' behaviour is documented in their .lua files beside this one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from orchestrator.storage.batching import ScriptBatcher
from orchestrator.storage.codec import text
from orchestrator.storage.connections import RedisClient
from orchestrator.storage.keys import WORKER_GROUP, Keys
from orchestrator.storage.scripts import ScriptCall


class ClaimReply(NamedTuple):
    """What claim.lua (or take.lua, for one item) made of a claim.

    `outcome`: 'ok' (claimed: `attempt`, `spec`, `failures`, `isolated` are set), or why not:
    claim.lua says 'terminal', 'missing', 'stale' or 'busy'; take.lua 'skipped' or 'busy'.
    `status`: the task's status when refused ('missing' for a task that is gone)."""

    outcome: str
    status: str = ""
    attempt: int = 0
    spec: bytes = b""  # the spec's JSON, as submitted
    failures: int = 0  # attempts charged to the task's budget so far
    isolated: bool = False  # the attempt must run in a process of its own


class TakenItem(NamedTuple):
    """One work item take.lua read, with what became of its claim."""

    message_id: str
    task_id: str
    claim: ClaimReply


class Fenced(NamedTuple):
    """A worker's write was refused: the task is no longer running under its attempt. `status`
    is its status now ('missing' when gone), `attempt` its current attempt number."""

    status: str
    attempt: int


class PromoteReply(NamedTuple):
    """promote.lua's verdict: 'ok' (a new work item `message_id` was added), 'gone' (no longer
    delayed, or not queued) or 'not_due'."""

    outcome: str
    message_id: str = ""


def _claimed(outcome: str, attempt: Any, spec: Any, failures: Any, isolated: Any) -> ClaimReply:
    return ClaimReply(
        outcome=outcome,
        attempt=int(attempt),
        spec=bytes(spec) if isinstance(spec, bytes) else text(spec).encode(),
        failures=int(failures or 0),
        isolated=text(isolated or b"0") == "1",
    )


def _fenced(reply: list[Any]) -> Fenced | None:
    if text(reply[0]) == "ok":
        return None
    return Fenced(status=text(reply[1]), attempt=int(reply[2]))


def _flag(value: bool) -> str:
    return "1" if value else "0"


class AttemptScripts:
    """The worker-side scripts on one client, for the keys under one prefix. Calls go through
    `batcher`, so the calls of many tasks made in one turn of the event loop share a round trip.
    Every method raises redis errors (an outage, a script error as ResponseError)."""

    def __init__(self, redis: RedisClient, keys: Keys, batcher: ScriptBatcher) -> None:
        self.keys = keys
        self._take = ScriptCall(redis, "take", with_lib=True, batcher=batcher)
        self._claim = ScriptCall(redis, "claim", with_lib=True, batcher=batcher)
        self._heartbeat = ScriptCall(redis, "heartbeat", with_lib=True, batcher=batcher)
        self._finish = ScriptCall(redis, "finish", with_lib=True, batcher=batcher)
        self._release = ScriptCall(redis, "release", with_lib=True, batcher=batcher)
        self._promote = ScriptCall(redis, "promote", with_lib=False, batcher=batcher)
        self._fan_out = ScriptCall(redis, "fan_out", with_lib=True, batcher=batcher)
        self._checkpoint = ScriptCall(redis, "checkpoint", with_lib=False, batcher=batcher)

    async def take(
        self, *, worker: str, count: int, started_data: bytes, started_version: int, token_prefix: str
    ) -> list[TakenItem]:
        """take.lua: read up to `count` new work items as `worker` and claim each it can start
        (claim token `token_prefix + message id`); [] when none are waiting. Never blocks."""
        reply = await self._take(
            keys=[self.keys.work, self.keys.events],
            args=[
                WORKER_GROUP,
                worker,
                count,
                self.keys.task_prefix,
                started_data,
                started_version,
                token_prefix,
            ],
        )
        taken = []
        for item in reply:
            outcome = text(item[2])
            claim = _claimed(outcome, *item[3:7]) if outcome == "ok" else ClaimReply(outcome, status=text(item[3]))
            taken.append(TakenItem(message_id=text(item[0]), task_id=text(item[1]), claim=claim))
        return taken

    async def claim(
        self,
        *,
        task_id: str,
        worker: str,
        token: str,
        message_id: str,
        reclaim: bool,
        started_data: bytes,
        started_version: int,
        max_losses: int,
        lost_data: bytes,
        lost_version: int,
        history: bytes,
        job_args: Sequence[Any] = (),
    ) -> ClaimReply:
        """claim.lua: claim the task behind work item `message_id`, idempotently by `token`. A
        `reclaim` takes over a running task whose lease expired; the `max_losses`-th loss fails
        it with the `lost_*` event, dead-lettered with `history` (JSON list of attempts), and,
        for a chunk of a job, tells its job (`job_args`: what claim.lua lists after `history`)."""
        reply = await self._claim(
            keys=[*self.keys.task_scope(task_id), self.keys.work, self.keys.dead_letters, self.keys.delayed],
            args=[
                task_id,
                worker,
                token,
                started_data,
                started_version,
                message_id,
                _flag(reclaim),
                WORKER_GROUP,
                max_losses,
                lost_data,
                lost_version,
                history,
                *job_args,
            ],
        )
        outcome = text(reply[0])
        if outcome != "ok":
            return ClaimReply(outcome, status=text(reply[1]))
        return _claimed(outcome, *reply[1:5])

    async def heartbeat(
        self,
        *,
        task_id: str,
        attempt: int,
        worker: str,
        message_id: str,
        progress_data: bytes | None,
        progress_version: int,
    ) -> Fenced | None:
        """heartbeat.lua: renew the lease of `attempt` and, when `progress_data` is given, append
        that progress event. None if accepted, Fenced if refused."""
        reply = await self._heartbeat(
            keys=[*self.keys.task_scope(task_id), self.keys.work],
            args=[
                task_id,
                attempt,
                WORKER_GROUP,
                worker,
                message_id,
                _flag(progress_data is not None),
                progress_data or b"",
                progress_version,
            ],
        )
        return _fenced(reply)

    async def finish(
        self,
        *,
        task_id: str,
        attempt: int,
        message_id: str,
        outcome: str,
        data: bytes,
        version: int,
        result_staged: bool,
        delay_ms: int,
        reason: str,
        history: bytes,
        before: tuple[tuple[Any, ...], ...] = (),
        job_args: Sequence[Any] = (),
    ) -> Fenced | None:
        """finish.lua: record `outcome` ('completed', 'failed' or 'retry_scheduled', with its event
        `data`) for `attempt` and retire the work item. `result_staged`: a full result was SET under
        `Keys.staged_result(task_id, attempt)` (`before`, in the same round trip: see
        `staged_result_command`). `delay_ms`: a retry's wait; `reason` and `history` (JSON list of
        attempts): a failure's dead letter; `job_args`: for a chunk of a job, what finish.lua lists
        after `history`. None if accepted, Fenced if refused. Raises ResponseError when a
        completion is `result_staged` but the staged key is missing (nothing is written), and
        Redis's own refusals (READONLY, MISCONF, ...) as they are."""
        k = self.keys
        reply = await self._finish(
            keys=[
                *self.keys.task_scope(task_id),
                k.work,
                k.result(task_id),
                k.delayed,
                k.dead_letters,
                k.staged_result(task_id, attempt),
            ],
            args=[
                task_id,
                attempt,
                WORKER_GROUP,
                message_id,
                outcome,
                data,
                version,
                "1" if result_staged else "",
                delay_ms,
                reason,
                history,
                *job_args,
            ],
            before=before,
        )
        return _fenced(reply)

    def staged_result_command(self, task_id: str, attempt: int, result: bytes, ttl_ms: int) -> tuple[Any, ...]:
        """The SET that stages a full result (bytes) for `finish`, expiring after `ttl_ms`."""
        return ("SET", self.keys.staged_result(task_id, attempt), result, "PX", ttl_ms)

    async def release(self, *, task_id: str, attempt: int, message_id: str, data: bytes, version: int) -> Fenced | None:
        """release.lua: give `attempt` back to the queue with a fresh work item, appending the
        `released` event `data`. None if accepted, Fenced if refused."""
        reply = await self._release(
            keys=[*self.keys.task_scope(task_id), self.keys.work],
            args=[task_id, attempt, WORKER_GROUP, message_id, data, version],
        )
        return _fenced(reply)

    async def fan_out(
        self,
        *,
        task_id: str,
        attempt: int,
        message_id: str,
        data: bytes,
        version: int,
        submitted_version: int,
        allowed_failures: int,
        combinations: int,
        chunks: Sequence[tuple[str, bytes, bytes, bytes]],
    ) -> Fenced | None:
        """fan_out.lua: submit the job's `chunks` (each: task id, `submitted` data, spec JSON,
        range JSON) and append its `fanned_out` event `data`, retiring its work item. None if
        accepted (or done before by this attempt), Fenced if refused."""
        k = self.keys
        reply = await self._fan_out(
            keys=[*k.task_scope(task_id), k.work, k.job(task_id), k.job_chunks(task_id)],
            args=[
                task_id,
                attempt,
                WORKER_GROUP,
                message_id,
                data,
                version,
                submitted_version,
                len(chunks),
                allowed_failures,
                combinations,
                *(part for chunk in chunks for part in chunk),
            ],
        )
        return _fenced(reply)

    async def checkpoint(self, *, task_id: str, attempt: int, state: bytes, ttl_ms: int) -> Fenced | None:
        """checkpoint.lua: save `state` (JSON) as the run's checkpoint of `attempt`, expiring after
        `ttl_ms`. None if saved, Fenced if refused."""
        reply = await self._checkpoint(
            keys=[self.keys.control(task_id), self.keys.checkpoint(task_id)], args=[attempt, state, ttl_ms]
        )
        return _fenced(reply)

    async def promote(self, *, task_id: str) -> PromoteReply:
        """promote.lua: if `task_id`'s retry delay has passed, move it from the delayed set to a
        new work item."""
        reply = await self._promote(
            keys=[self.keys.delayed, self.keys.work, self.keys.control(task_id)], args=[task_id]
        )
        return PromoteReply(text(reply[0]), text(reply[1]) if len(reply) > 1 else "")
