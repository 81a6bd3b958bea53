"""Results retention over every partition: four partitions on a standalone server (and
fakeredis), sixteen on the real cluster. The results of all partitions are ranked together; each
deletion is recorded in its task's partition (also for a task log retention compacted there);
orphans are told from results a partition's log still names."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from consumers.maintenance.archive import export_layout
from consumers.maintenance.result_retention import ResultPolicy, apply_result_retention
from consumers.maintenance.retention import apply_layout_retention
from orchestrator.domain.events import Completed
from orchestrator.domain.jobs import ChunkEnd, FanOut
from orchestrator.domain.spec import Chunk
from orchestrator.domain.state import TaskState
from orchestrator.settings import Settings
from orchestrator.storage.commands import Commands
from orchestrator.storage.hashform import from_hash
from orchestrator.storage.partitions import Layout, load_layout, task_id_in
from orchestrator.storage.readmodel import ReadModel
from orchestrator.storage.readmodel.log import task_events
from orchestrator.storage.results.location import results_for
from orchestrator.storage.results.store import ResultStore
from orchestrator.storage.workqueue import WorkQueue
from tests.conftest import Backend
from tests.test_results import SINGLE, engine_detail
from tests.test_retention_partitions import AHEAD_MS, SPEC, backstream, fold_every_partition, partitioned, spread

pytestmark = pytest.mark.also_on_cluster


async def complete_queued(redis: Any, layout: Layout, results: ResultStore, detail: dict[str, Any]) -> list[str]:
    """Run every queued task of every partition as a worker would: upload its result, then record
    `completed` naming it (a job's chunk telling its job it holds a best row). The result keys."""
    queue = WorkQueue(redis, layout)
    await queue.ensure_group()
    keys = []
    while taken_now := await queue.take(worker="w1", count=1000):
        for taken in taken_now:
            ref = await results.put(taken.task_id, taken.claim.attempt, detail)
            keys.append(ref.key)
            event = Completed(task_id=taken.task_id, attempt=taken.claim.attempt, result={}, result_ref=ref)
            end = ChunkEnd(score=1.0, bankrupt=False, best={"metrics": {}})
            assert await queue.finish(event, message_id=taken.message_id, spec=taken.claim.spec, end=end) is None
    return keys


async def projected(redis: Any, layout: Layout, task_id: str) -> TaskState:
    return from_hash(await redis.hgetall(layout.of(task_id).projected_task(task_id)))


async def stored_keys(results: ResultStore, key: str) -> list[str]:
    return [o.path async for o in results.objects(f"{key}/")]


async def test_results_of_every_partition_are_ranked_together_and_deleted_in_their_partition(
    backend: Backend, tmp_path: Path
) -> None:
    redis, layout = backend.redis, partitioned(backend)
    results = results_for(Settings(results_url=f"file://{tmp_path}/results"))
    assert results is not None
    detail = engine_detail(SINGLE)
    tasks = [t for ids in (await spread(backend, layout, 2)).values() for t in ids]
    await complete_queued(redis, layout, results, detail)
    await fold_every_partition(redis, layout)
    states = [await projected(redis, layout, t) for t in tasks]
    ranked = [s.task_id for s in sorted(states, key=lambda s: (s.finished_at or "", s.task_id), reverse=True)]
    keep = layout.width
    # Retention compacts every finished task of every partition first: recording a deletion must
    # restore the control hash from the live projection of the task's own partition.
    for part in await export_layout(redis, layout, tmp_path / "log.ndjson"):
        await redis.set(layout.partition(part.partition).archived_through, part.last)
    assert (await apply_layout_retention(redis, layout, horizon_ms=AHEAD_MS)).tasks_compacted == len(tasks)
    # A completed task no projector folded yet (only its log names its result), and an upload
    # no outcome ever named, both in the last partition.
    commands = Commands(redis, layout)
    unfolded = (await commands.submit(task_id_in(layout.width - 1), SPEC)).task_id
    await complete_queued(redis, layout, results, detail)
    orphan = await results.put(task_id_in(layout.width - 1), 1, detail)
    reads = ReadModel(redis, layout.home, follow_live=True)
    policy = ResultPolicy(max_count=keep, orphan_grace_ms=1000)
    later = int(time.time() * 1000) + 60_000

    dry = await apply_result_retention(commands, reads, results, policy, now_ms=later, dry_run=True)
    assert [d.task_id for d in dry.deleted] == ranked[keep:] and dry.orphans_deleted == [orphan.key]
    report = await apply_result_retention(commands, reads, results, policy, now_ms=later)

    assert [d.task_id for d in report.deleted] == ranked[keep:] and report.kept == keep
    assert report.orphans_deleted == [orphan.key] and await stored_keys(results, orphan.key) == []
    await fold_every_partition(redis, layout)
    for state in states:
        now = await projected(redis, layout, state.task_id)
        assert state.result_ref is not None
        if state.task_id in ranked[keep:]:
            events = await task_events(redis, layout.of(state.task_id), state.task_id)
            assert [type(e.event).__name__ for e in events] == ["ResultDeleted"]
            assert now.result_deleted_at is not None and now.status == "completed"
            assert await stored_keys(results, state.result_ref.key) == []
        else:
            assert now.result_deleted_at is None and await stored_keys(results, state.result_ref.key) != []
    unfolded_ref = (await projected(redis, layout, unfolded)).result_ref
    assert unfolded_ref is not None and await stored_keys(results, unfolded_ref.key) != []
    again = await apply_result_retention(commands, reads, results, ResultPolicy(max_count=keep + 1), now_ms=later)
    assert (again.deleted, again.orphans_deleted) == ([], [])


async def test_the_results_retention_command_covers_every_partition(real_backend: Backend, tmp_path: Path) -> None:
    backend, layout = real_backend, partitioned(real_backend)
    redis = backend.redis
    recorded = await load_layout(redis, layout.prefix, requested=layout.count, cluster=backend.name == "cluster")
    assert recorded.partitions == layout.partitions
    url = f"file://{tmp_path}/results"
    results = results_for(Settings(results_url=url))
    assert results is not None
    tasks = [t for ids in (await spread(backend, layout, 1)).values() for t in ids]
    await complete_queued(redis, layout, results, engine_detail(SINGLE))
    await fold_every_partition(redis, layout)
    ran = backstream(backend, "results-retention", "--max-count", "0", BACKSTREAM_RESULTS_URL=url)
    assert ran.returncode == 0, ran.stderr
    report = json.loads(ran.stdout)
    assert sorted(d["task_id"] for d in report["deleted"]) == sorted(tasks) and report["kept"] == 0
    await fold_every_partition(redis, layout)
    assert all([(await projected(redis, layout, t)).result_deleted_at is not None for t in tasks])


async def test_a_job_is_compacted_with_its_chunks_whose_results_outlive_their_trimmed_log(
    backend: Backend, tmp_path: Path
) -> None:
    # A job's chunks are in no status index of the task list, and log retention trims their
    # events: the projection still names their results, which must not be taken for orphans.
    redis, layout = backend.redis, partitioned(backend)
    results = results_for(Settings(results_url=f"file://{tmp_path}/results"))
    assert results is not None
    commands, queue = Commands(redis, layout), WorkQueue(redis, layout)
    await queue.ensure_group()
    job_spec = msgspec.structs.replace(SPEC, symbol="", symbols=["IBM", "GOOG"])
    job_id = (await commands.submit(None, job_spec)).task_id
    (parent,) = await queue.take(worker="w1", count=1)
    chunks = [
        msgspec.structs.replace(job_spec, symbol=s, symbols=None, chunk=Chunk(parent=job_id, index=i, start=0, stop=1))
        for i, s in enumerate(["IBM", "GOOG"])
    ]
    plan = FanOut(chunks=chunks, symbols=["IBM", "GOOG"], combinations=2, per_chunk=1)
    assert (
        await queue.fan_out(job_id, parent.claim.attempt, message_id=parent.message_id, plan=plan, tolerance=0) is None
    )
    keys = await complete_queued(redis, layout, results, engine_detail(SINGLE))
    await fold_every_partition(redis, layout)
    for part in await export_layout(redis, layout, tmp_path / "log.ndjson"):
        if part.last is not None:  # the job's partition; the others hold nothing
            await redis.set(layout.partition(part.partition).archived_through, part.last)
    # The job and its two chunks are compacted together, the job's aggregate and chunk list too.
    assert (await apply_layout_retention(redis, layout, horizon_ms=AHEAD_MS)).tasks_compacted == 3
    part = layout.of(job_id)
    gone = [
        part.control(job_id),
        part.job(job_id),
        part.job_chunks(job_id),
        *(part.control(k.split("/")[0]) for k in keys),
    ]
    assert await redis.exists(*gone) == 0
    for key in keys:
        task_id = key.split("/", 1)[0]
        assert await task_events(redis, layout.of(task_id), task_id) == []  # its log is trimmed
    reads = ReadModel(redis, layout.home, follow_live=True)
    policy = ResultPolicy(orphan_grace_ms=1000)
    report = await apply_result_retention(commands, reads, results, policy, now_ms=int(time.time() * 1000) + 60_000)
    assert report.orphans_deleted == []
    assert all([await stored_keys(results, key) for key in keys])
