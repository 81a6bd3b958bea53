"""Retention of full results: delete the oldest beyond an age, a count or a total size, each
recorded as a `result_deleted` event first; and collect orphans (uploads no outcome names).
The results of every partition are ranked together; each deletion is recorded in its task's
partition."""

from __future__ import annotations

import time
from datetime import datetime

import msgspec
import structlog

from orchestrator.domain.events import Completed, ResultDeleted
from orchestrator.domain.state import TaskState
from orchestrator.domain.status import Status
from orchestrator.storage.codec import text
from orchestrator.storage.commands import Commands
from orchestrator.storage.connections import RedisClient
from orchestrator.storage.hashform import from_hash
from orchestrator.storage.keys import Keys
from orchestrator.storage.partitions import Layout
from orchestrator.storage.readmodel import ReadModel
from orchestrator.storage.readmodel.log import task_events
from orchestrator.storage.readmodel.pointer import live_layout
from orchestrator.storage.results.store import ResultStore

log = structlog.get_logger("backstream.retention")

# An upload whose outcome is being recorded right now is not an orphan: only prefixes whose
# newest object is older than this are collected (far above the time from upload to outcome,
# which waits out a Redis outage with the lease kept, and above the projector's lag).
DEFAULT_ORPHAN_GRACE_MS = 6 * 3600 * 1000
# Projected states loaded per pipelined round trip when a partition's completed tasks are read.
LOAD_BATCH = 500


class ResultPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """What to keep (None: no limit). Results are ranked newest first by completion time; a
    result goes when it is older than `max_age_ms`, or beyond the newest `max_count`, or when
    the newer ones and it together pass `max_bytes` (sizes from the completed events)."""

    max_age_ms: int | None = None
    max_count: int | None = None
    max_bytes: int | None = None
    orphan_grace_ms: int = DEFAULT_ORPHAN_GRACE_MS


class DeletedResult(msgspec.Struct, frozen=True):
    """A full result retention deleted (or would, in a dry run): its object prefix and size in bytes."""

    task_id: str
    key: str
    reason: str  # age, count or size
    bytes: int


class ResultRetentionReport(msgspec.Struct):
    """What a run of results retention kept (count, bytes), deleted, and collected as orphans."""

    kept: int
    kept_bytes: int
    deleted: list[DeletedResult]
    orphans_deleted: list[str]
    dry_run: bool


def _ms(iso: str | None) -> int:
    if iso is None:
        return 0
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


async def _completed(redis: RedisClient, projection: Keys) -> list[TaskState]:
    """Every completed task of one partition's projection `projection`, LOAD_BATCH states per
    round trip."""
    members = await redis.zrangebylex(projection.projected_index(Status.COMPLETED), "-", "+")
    ids = [text(m).split("|", 1)[1] for m in members]
    states: list[TaskState] = []
    for start in range(0, len(ids), LOAD_BATCH):
        async with redis.pipeline(transaction=False) as pipe:
            for task_id in ids[start : start + LOAD_BATCH]:
                pipe.hgetall(projection.projected_task(task_id))
            states += [from_hash(fields) for fields in await pipe.execute() if fields]
    return states


async def _stored_results(redis: RedisClient, live: Layout) -> list[TaskState]:
    """Completed tasks of every partition whose full result is in the store, newest completion
    first (`live`: the layout naming the live projection)."""
    states = [s for keys in live.partitions for s in await _completed(redis, keys)]
    states = [s for s in states if s.result_ref is not None and s.result_deleted_at is None]
    return sorted(states, key=lambda s: (s.finished_at or "", s.task_id), reverse=True)


def _reason(policy: ResultPolicy, age_ms: int, rank: int, total_bytes: int) -> str | None:
    if policy.max_age_ms is not None and age_ms > policy.max_age_ms:
        return "age"
    if policy.max_count is not None and rank > policy.max_count:
        return "count"
    if policy.max_bytes is not None and total_bytes > policy.max_bytes:
        return "size"
    return None


async def apply_result_retention(
    commands: Commands,
    projection: ReadModel,
    results: ResultStore,
    policy: ResultPolicy,
    *,
    now_ms: int | None = None,
    dry_run: bool = False,
) -> ResultRetentionReport:
    """Delete the results the policy does not keep, then the orphans, over every partition of
    `commands.layout`, reading the live projection (`projection` lends its client). Each deletion
    is recorded (`result_deleted`, in the task's log, through `drop_result.lua` on its partition)
    before its objects are deleted: a crash in between leaves objects that no live result names,
    which the orphan collector deletes on a later run. Idempotent: a second run deletes nothing more."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    deleted: list[DeletedResult] = []
    kept = kept_bytes = total = 0
    redis = projection.redis
    layout = await live_layout(redis, commands.layout)
    live = await _stored_results(redis, layout)
    for rank, state in enumerate(live, start=1):
        ref = state.result_ref
        assert ref is not None
        total += ref.bytes
        reason = _reason(policy, now_ms - _ms(state.finished_at), rank, total)
        if reason is None:
            kept, kept_bytes = kept + 1, kept_bytes + ref.bytes
            continue
        deleted.append(DeletedResult(state.task_id, ref.key, reason, ref.bytes))
        if dry_run:
            continue
        outcome = await commands.record_result_deleted(
            state.task_id, ref.key, reason=reason, live_projection=layout.of(state.task_id)
        )
        if outcome in ("ok", "done"):
            await results.delete(ref.key)
            log.info("results.deleted", task_id=state.task_id, key=ref.key, reason=reason, bytes=ref.bytes)
        else:
            log.warning("results.not_deleted", task_id=state.task_id, key=ref.key, outcome=outcome)
    named = {s.result_ref.key for s in live if s.result_ref is not None}
    if not dry_run:  # a dry run's deletions are not orphans as well (their task's log may be compacted)
        named -= {d.key for d in deleted}
    orphans = await collect_orphans(
        redis, layout, results, named, grace_ms=policy.orphan_grace_ms, now_ms=now_ms, dry_run=dry_run
    )
    report = ResultRetentionReport(kept, kept_bytes, deleted, orphans, dry_run)
    log.info("results.retention_applied", kept=kept, kept_bytes=kept_bytes, deleted=len(deleted), orphans=len(orphans))
    return report


async def _named_in_projection(redis: RedisClient, live: Layout, key: str) -> bool:
    """Does the live projection hold `key` as a task's live result? Asked of every prefix the
    completed index does not name: a job's chunks are in no status index of the task list, and
    their results live as long as their job's."""
    task_id = key.split("/", 1)[0]
    try:
        keys = live.of(task_id)
    except (ValueError, IndexError):
        return False
    fields = await redis.hgetall(keys.projected_task(task_id))
    if not fields:
        return False
    state = from_hash(fields)
    return state.result_ref is not None and state.result_ref.key == key and state.result_deleted_at is None


async def _named_in_log(redis: RedisClient, layout: Layout, key: str) -> bool:
    """Does the task's log (in its partition) name `key` as a live result (completed with it, not
    deleted since)? For a task the projection has not folded yet. False for a prefix that names
    no task of the deployment (not a task id, or a partition it lacks)."""
    task_id = key.split("/", 1)[0]
    try:
        keys = layout.of(task_id)
    except (ValueError, IndexError):
        return False
    named = False
    for stored in await task_events(redis, keys, task_id):
        event = stored.event
        if isinstance(event, Completed) and event.result_ref is not None and event.result_ref.key == key:
            named = True
        elif isinstance(event, ResultDeleted) and event.key == key:
            named = False
    return named


async def collect_orphans(
    redis: RedisClient,
    layout: Layout,
    results: ResultStore,
    named: set[str],
    *,
    grace_ms: int,
    now_ms: int,
    dry_run: bool = False,
) -> list[str]:
    """Delete result prefixes (`<task_id>/<attempt>-<nonce>`) that no live result names, whose
    newest object is older than `grace_ms`: uploads whose outcome was never recorded (the worker
    died or lost its claim between the upload and the outcome; a fenced outcome), and leftovers
    of a deletion a crash interrupted. `named`: the keys the projection calls live; a prefix it
    does not name is checked against the task's projected state (a job's chunk) and its log, in
    its partition of `layout` (the projector may lag). Returns the prefixes deleted."""
    newest: dict[str, int] = {}
    async for obj in results.objects():
        parts = obj.path.split("/")
        if len(parts) >= 3:
            prefix = "/".join(parts[:2])
            newest[prefix] = max(newest.get(prefix, 0), obj.last_modified_ms)
    collected = []
    for prefix, modified in sorted(newest.items()):
        if prefix in named or now_ms - modified <= grace_ms:
            continue
        if await _named_in_projection(redis, layout, prefix) or await _named_in_log(redis, layout, prefix):
            continue
        collected.append(prefix)
        if not dry_run:
            await results.delete(prefix)
            log.info("results.orphan_deleted", key=prefix, age_ms=now_ms - modified)
    return collected
