"""A job's scripts (streams.md, "Jobs"): fan-out, the chunks' finishes that aggregate it, its
failure policy, cancel and retry, exactly as the store records them. The worker's and the
engine's parts are tested in test_jobs.py; here the chunks' outcomes are written directly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from orchestrator.domain.errors import TaskConflict
from orchestrator.domain.events import (
    Cancelled,
    Completed,
    Failed,
    FannedOut,
    JobProgress,
    Requeued,
    Started,
    Submitted,
)
from orchestrator.domain.jobs import ChunkEnd, FanOut
from orchestrator.domain.spec import BacktestSpec, Chunk
from orchestrator.domain.state import fold
from orchestrator.domain.status import Status
from orchestrator.storage.commands import Commands
from orchestrator.storage.keys import WORKER_GROUP, Keys, event_field
from orchestrator.storage.partitions import Layout, chunk_id
from orchestrator.storage.readmodel.log import task_events
from orchestrator.storage.workqueue import LOST_WORKERS_PER_ATTEMPT, Taken, WorkQueue
from tests.conftest import Backend

pytestmark = [pytest.mark.redis, pytest.mark.also_on_cluster]

JOB = BacktestSpec(strategy="sma_cross", symbols=["AAPL", "IBM"], params={"fast": [5, 10], "slow": [20, 30]})


def _layout(backend: Backend) -> Layout:
    return backend.layout if backend.layout.width > 1 else Layout(prefix=backend.keys.prefix, count=4)


class _Job:
    """One job of `chunks` chunks, submitted, claimed and fanned out; its chunks are taken and
    finished by hand."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.layout = _layout(backend)
        self.commands = Commands(backend.redis, self.layout)
        self.queue = WorkQueue(backend.redis, self.layout, reader=backend.blocking)
        self.task_id = ""
        self.chunks: list[str] = []

    async def start(self, chunks: int, *, tolerance: float = 0.0, spec: BacktestSpec = JOB) -> None:
        await self.queue.ensure_group()
        spec = msgspec.structs.replace(spec, failure_tolerance=tolerance)
        self.task_id = (await self.commands.submit(None, spec)).task_id
        (taken,) = await self.take(1)
        assert taken.task_id == self.task_id
        specs = [
            msgspec.structs.replace(
                spec, symbol="AAPL", symbols=None, chunk=Chunk(parent=self.task_id, index=i, start=i, stop=i + 1)
            )
            for i in range(chunks)
        ]
        plan = FanOut(chunks=specs, symbols=["AAPL", "IBM"], combinations=chunks, per_chunk=1)
        fenced = await self.queue.fan_out(
            self.task_id, taken.claim.attempt, message_id=taken.message_id, plan=plan, tolerance=tolerance
        )
        assert fenced is None
        self.chunks = [chunk_id(self.task_id, i) for i in range(chunks)]
        self.plan, self.parent_item = plan, taken

    async def take(self, count: int) -> list[Taken]:
        taken = await self.queue.take(worker="w1", count=count)
        return [t for t in taken if t.claim.outcome == "ok"]

    async def complete(self, item: Taken, score: float | None, *, bankrupt: bool = False) -> Any:
        spec = item.claim.spec
        assert spec is not None and spec.chunk is not None
        summary = {"metrics": {"sqn": score}, "best_params": {"fast": spec.chunk.index}, "objective": "sqn"}
        event = Completed(task_id=item.task_id, attempt=item.claim.attempt, result={**summary, "rank": {}})
        end = ChunkEnd(score=score, bankrupt=bankrupt, best=summary)
        return await self.queue.finish(event, message_id=item.message_id, spec=spec, end=end)

    async def fail(self, item: Taken, error: str = "boom") -> Any:
        event = Failed(task_id=item.task_id, attempt=item.claim.attempt, error=error, error_type="ValueError")
        return await self.queue.finish(event, message_id=item.message_id, spec=item.claim.spec)

    async def events(self, task_id: str | None = None) -> list[Any]:
        task_id = task_id or self.task_id
        return [e.event for e in await task_events(self.backend.redis, self.layout.of(task_id), task_id)]

    async def state(self, task_id: str | None = None) -> Any:
        task_id = task_id or self.task_id
        stored = await task_events(self.backend.redis, self.layout.of(task_id), task_id)
        return fold(stored)[task_id]

    async def status(self, task_id: str) -> str:
        raw = await self.backend.redis.hget(self.layout.of(task_id).control(task_id), "status")
        return raw.decode() if raw else "missing"


async def test_the_last_chunk_to_finish_appends_the_jobs_outcome_with_the_best_chunk(backend: Backend) -> None:
    job = _Job(backend)
    await job.start(4)
    items = {t.task_id: t for t in await job.take(10)}
    assert set(items) == set(job.chunks)  # every chunk is queued in the job's partition
    assert {job.layout.partition_index(c) for c in job.chunks} == {job.layout.partition_index(job.task_id)}
    # Ranked as the engine ranks rows: the higher score; a tie goes to the earlier chunk; no
    # score after every score; bankrupt after everything.
    scores = [(1.5, False), (2.5, True), (1.5, False), (None, False)]
    for index in (3, 1, 2):
        s, b = scores[index]
        assert await job.complete(items[job.chunks[index]], s, bankrupt=b) is None
        assert (await job.state()).status == Status.RUNNING
    s, b = scores[0]
    await job.complete(items[job.chunks[0]], s, bankrupt=b)
    events = await job.events()
    assert [type(e) for e in events[:3]] == [Submitted, Started, FannedOut]
    assert isinstance(events[-1], Completed)
    assert all(isinstance(e, JobProgress) for e in events[3:-1])
    assert [e.progress for e in events[3:-1]] == [0.25, 0.5, 0.75]
    result = events[-1].result
    assert result["best_chunk"] == 0 and result["best_params"] == {"fast": 0}
    assert (result["chunks"], result["completed"], result["failed"], result["missing"]) == (4, 4, 0, [])
    state = await job.state()
    assert state.status == Status.COMPLETED and state.job is not None
    assert (state.job.chunks, state.job.done, state.job.failed) == (4, 4, 0)
    assert state.job.best == {"metrics": {"sqn": 1.5}, "best_params": {"fast": 0}, "objective": "sqn"}


async def test_a_resent_chunk_finish_counts_nothing_twice(backend: Backend) -> None:
    job = _Job(backend)
    await job.start(2)
    first, second = sorted(await job.take(2), key=lambda t: job.chunks.index(t.task_id))
    for _ in range(3):
        assert await job.complete(first, 1.0) is None
    assert [type(e) for e in await job.events()][-1] is JobProgress
    assert (await job.state()).job.done == 1  # type: ignore[union-attr]
    await job.complete(second, 2.0)
    await job.complete(second, 2.0)
    events = await job.events()
    assert sum(isinstance(e, Completed) for e in events) == 1
    assert events[-1].result["completed"] == 2 and events[-1].result["best_chunk"] == 1


async def test_a_thousand_chunks_leave_the_job_bounded(backend: Backend) -> None:
    chunks = 1000
    job = _Job(backend)
    await job.start(chunks)
    key = job.layout.of(job.task_id).job(job.task_id)
    fields = await backend.redis.hlen(key)
    done = 0
    while done < chunks:
        for item in await job.take(200):
            await job.complete(item, float(done % 7))
            done += 1
            assert await backend.redis.hlen(key) <= fields + 4  # the best's four fields, no more
    events = await job.events()
    # submitted, started, fanned_out, at most one progress per percent, the outcome
    assert len(events) <= 3 + 99 + 1
    assert isinstance(events[-1], Completed) and events[-1].result["completed"] == chunks
    state = await job.state()
    assert len(msgspec.json.encode(state)) < 4096


async def test_a_chunk_that_fails_for_good_fails_the_job_and_cancels_its_other_chunks(backend: Backend) -> None:
    job = _Job(backend)
    await job.start(4)
    items = {t.task_id: t for t in await job.take(2)}  # two running, two still queued
    running = sorted(items, key=job.chunks.index)
    await job.complete(items[running[0]], 1.0)
    await job.fail(items[running[1]], "no data")
    events = await job.events()
    assert isinstance(events[-1], Failed) and events[-1].error_type == "ChunkFailed"
    assert "no data" in events[-1].error and f"chunk {job.chunks.index(running[1])}" in events[-1].error
    statuses = {c: await job.status(c) for c in job.chunks}
    assert statuses[running[0]] == "completed" and statuses[running[1]] == "failed"
    assert sorted(statuses.values()) == ["cancelled", "cancelled", "completed", "failed"]
    assert await job.take(10) == []  # the cancelled chunks' work items are gone
    for chunk in job.chunks:
        if statuses[chunk] == "cancelled":
            assert isinstance((await job.events(chunk))[-1], Cancelled)


async def test_a_tolerated_failure_completes_the_job_with_the_missing_chunks_listed(backend: Backend) -> None:
    job = _Job(backend)
    await job.start(4, tolerance=0.5)  # two of four may fail
    items = sorted(await job.take(4), key=lambda t: job.chunks.index(t.task_id))
    await job.fail(items[0])
    await job.complete(items[1], 1.0)
    await job.fail(items[2])
    await job.complete(items[3], 3.0)
    outcome = (await job.events())[-1]
    assert isinstance(outcome, Completed)
    assert (outcome.result["completed"], outcome.result["failed"], outcome.result["best_chunk"]) == (2, 2, 3)
    assert outcome.result["missing"] == [
        {"chunk": 0, "symbol": "AAPL", "start": 0, "stop": 1},
        {"chunk": 2, "symbol": "AAPL", "start": 2, "stop": 3},
    ]


async def test_a_cancelled_job_cancels_its_chunks_and_keeps_the_finished_ones(backend: Backend) -> None:
    job = _Job(backend)
    await job.start(3)
    running = sorted(await job.take(2), key=lambda t: job.chunks.index(t.task_id))
    await job.complete(running[0], 1.0)
    assert await job.commands.cancel(job.task_id, by="alice") is True
    assert [await job.status(c) for c in job.chunks] == ["completed", "cancelled", "cancelled"]
    # The running chunk's outcome is refused: nothing of the job writes after the cancel.
    fenced = await job.complete(running[1], 9.0)
    assert fenced is not None and fenced.status == "cancelled"
    assert await job.take(10) == []
    assert isinstance((await job.events())[-1], Cancelled)
    assert (await job.state()).status == Status.CANCELLED


async def test_a_job_cancel_retires_every_chunks_work_item_and_saved_state(backend: Backend) -> None:
    """The chunks' work items, delayed entries and checkpoints are cleared in one command each;
    every chunk's `cancelled` is numbered and indexed like any event of it."""
    job = _Job(backend)
    await job.start(5)
    running = await job.take(2)
    saver = running[0]
    assert await job.queue.save_checkpoint(saver.task_id, saver.claim.attempt, b'{"done": 1}') is None
    keys = job.layout.of(job.task_id)
    assert await backend.redis.exists(keys.checkpoint(saver.task_id)) == 1
    assert await job.commands.cancel(job.task_id, by="alice") is True
    assert await backend.redis.xlen(keys.work) == 0
    assert (await backend.redis.xpending(keys.work, WORKER_GROUP))["pending"] == 0
    assert await backend.redis.exists(keys.checkpoint(saver.task_id)) == 0
    for chunk in job.chunks:
        events = await job.events(chunk)
        assert isinstance(events[-1], Cancelled)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))


async def test_a_chunk_alone_is_neither_cancelled_nor_retried(backend: Backend) -> None:
    job = _Job(backend)
    await job.start(2)
    with pytest.raises(TaskConflict, match="chunk of the job"):
        await job.commands.cancel(job.chunks[0])
    (item, other) = sorted(await job.take(2), key=lambda t: job.chunks.index(t.task_id))
    await job.fail(item)
    with pytest.raises(TaskConflict, match="chunk of the job"):
        await job.commands.requeue(job.chunks[0])


async def test_retrying_a_failed_job_reruns_only_the_chunks_that_did_not_complete(backend: Backend) -> None:
    job = _Job(backend)
    await job.start(3)
    first, second = sorted(await job.take(2), key=lambda t: job.chunks.index(t.task_id))
    await job.complete(first, 2.0)
    await job.fail(second)  # fails the job, cancels chunk 2
    assert (await job.state()).status == Status.FAILED
    failed = await job.state()
    assert failed.finished_at is not None and failed.job is not None
    await job.commands.requeue(job.task_id, by="alice")
    again = await job.state()
    assert again.status == Status.RUNNING and again.finished_at is None and again.error is None
    assert again.job is not None and again.job.failed == 0 and again.progress == 1 / 3
    assert isinstance((await job.events())[-1], Requeued)
    again = await job.take(10)
    assert sorted(t.task_id for t in again) == sorted(job.chunks[1:])  # not the completed one
    for item in again:
        await job.complete(item, 1.0)
    outcome = (await job.events())[-1]
    assert isinstance(outcome, Completed)
    assert (outcome.result["completed"], outcome.result["failed"], outcome.result["best_chunk"]) == (3, 0, 0)


async def test_a_resent_fan_out_creates_nothing_twice(backend: Backend) -> None:
    job = _Job(backend)
    await job.start(3)
    fenced = await job.queue.fan_out(
        job.task_id, job.parent_item.claim.attempt, message_id=job.parent_item.message_id, plan=job.plan, tolerance=0
    )
    assert fenced is None
    assert len(await job.take(10)) == 3
    assert [type(e) for e in await job.events()] == [Submitted, Started, FannedOut]


async def test_a_chunk_that_loses_its_worker_too_often_fails_its_job(backend: Backend) -> None:
    job = _Job(backend)
    await job.start(2)
    item = min(await job.take(2), key=lambda t: job.chunks.index(t.task_id))
    for loss in range(LOST_WORKERS_PER_ATTEMPT):
        claim = await job.queue.claim(
            item.task_id,
            worker=f"w{loss + 2}",
            token=f"t{loss}",
            message_id=item.message_id,
            reclaim=True,
            max_attempts=1,
        )
    assert claim.outcome == "terminal"
    assert await job.status(item.task_id) == "failed"
    outcome = (await job.events())[-1]
    assert isinstance(outcome, Failed) and "lost its worker" in outcome.error
    assert await job.status(job.chunks[1]) == "cancelled"


def test_the_scripts_name_a_jobs_keys_as_keys_py_does() -> None:
    # lib.lua names a job's and its chunks' keys from a task's control key; keys.py spells them.
    lib = (Path(__file__).parents[1] / "orchestrator/storage/scripts/lib.lua").read_text()
    keys = Keys(prefix="{p}")
    control = keys.control("t")
    assert "return 'e:' .. seq" in lib and event_field(7) == "e:7"
    for key, suffix in (
        (keys.job("t"), ":job"),
        (keys.job_chunks("t"), ":chunks"),
        (keys.checkpoint("t"), ":checkpoint"),
    ):
        assert key == control + suffix and f"'{suffix}'" in lib


async def test_a_tolerated_lost_chunk_reports_the_jobs_progress_in_a_version_it_reads(backend: Backend) -> None:
    job = _Job(backend)
    await job.start(4, tolerance=0.5)
    item = min(await job.take(4), key=lambda t: job.chunks.index(t.task_id))
    for loss in range(LOST_WORKERS_PER_ATTEMPT):
        await job.queue.claim(
            item.task_id, worker=f"w{loss}", token=f"t{loss}", message_id=item.message_id, reclaim=True, max_attempts=1
        )
    progress = (await job.events())[-1]  # decoded: its version is one this code reads
    assert isinstance(progress, JobProgress) and (progress.failed, progress.progress) == (1, 0.25)


async def test_a_chunk_whose_spec_its_worker_cannot_read_still_ends_in_its_job(backend: Backend) -> None:
    # A newer version wrote a spec this worker cannot decode: it fails the attempt without
    # knowing the task is a chunk, and the job must still hear of it.
    job = _Job(backend)
    await job.start(2)
    item = min(await job.take(2), key=lambda t: job.chunks.index(t.task_id))
    failed = Failed(task_id=item.task_id, attempt=item.claim.attempt, error="unreadable spec", error_type="X")
    assert await job.queue.finish(failed, message_id=item.message_id, spec=None) is None
    outcome = (await job.events())[-1]
    assert isinstance(outcome, Failed) and outcome.error == "a chunk of this job failed for good: unreadable spec"
