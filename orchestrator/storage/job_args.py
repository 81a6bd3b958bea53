"""The arguments the worker's scripts take for jobs (streams.md, "Jobs"): what fan_out.lua is
given for each chunk, and what a chunk's finish.lua or claim.lua tells its job."""

from __future__ import annotations

import math
from typing import Any

from orchestrator.domain.events import Cancelled, Completed, Failed, JobProgress, RetryScheduled, Submitted
from orchestrator.domain.jobs import ChunkEnd, FanOut, span_of
from orchestrator.domain.spec import BacktestSpec
from orchestrator.storage.codec import encode_json, event_data
from orchestrator.storage.partitions import chunk_id


def chunk_submits(task_id: str, plan: FanOut) -> list[tuple[str, bytes, bytes, bytes]]:
    """What fan_out.lua takes for each chunk of the job `task_id`, in chunk order: its id
    (`chunk_id`), its `submitted` data, its spec JSON and its range JSON (`span_of`)."""
    chunks = []
    for index, spec in enumerate(plan.chunks):
        chunk = chunk_id(task_id, index)
        submitted = event_data(Submitted(task_id=chunk, spec=spec))
        chunks.append((chunk, submitted, encode_json(spec), encode_json(span_of(spec))))
    return chunks


def chunk_failed(error: str, failed: Failed) -> Failed:
    """The `failed` event of a job whose chunk failed for good with `failed`."""
    return Failed(task_id="", error=error, error_type="ChunkFailed", retryable=failed.retryable)


def job_args(job_failed: Failed, end: ChunkEnd | None = None) -> list[Any]:
    """What finish.lua and claim.lua take after `history` for a chunk (lib.lua, job_args): its
    score, bankrupt flag and summary (`end`, of a completion), the job's `failed` data, its
    chunks' `cancelled` data, and the versions the job's events are appended with."""
    value = None if end is None else end.score
    return [
        "" if value is None else _decimal(value),
        "1" if end is not None and end.bankrupt else "0",
        encode_json(end.best) if end is not None else b"{}",
        event_data(job_failed),
        event_data(Cancelled(task_id="")),
        Completed.SCHEMA_VERSION,
        Failed.SCHEMA_VERSION,
        JobProgress.SCHEMA_VERSION,
        Cancelled.SCHEMA_VERSION,
    ]


def chunk_args(
    spec: BacktestSpec | None, event: Completed | Failed | RetryScheduled, end: ChunkEnd | None
) -> list[Any]:
    """finish.lua's arguments for a chunk's job: [] for a task whose spec says it is no chunk;
    for a spec this worker could not read (None), the same arguments with a failure that names
    no range, since the task may be a chunk (finish.lua refuses a chunk's outcome without them,
    and a chunk that ends must reach its job)."""
    if spec is not None and spec.chunk is None:
        return []
    where = "a chunk of this job"
    if spec is not None:
        span = span_of(spec)
        where = f"chunk {span['chunk']} ({span['symbol']}, combinations {span['start']}-{span['stop']})"
    failed = event if isinstance(event, Failed) else Failed(task_id="", error="")
    return job_args(chunk_failed(f"{where} failed for good: {failed.error}", failed), end)


def _decimal(value: float) -> str:
    """A double as Lua's tonumber reads it back exactly: repr, with the infinities spelled as
    numbers too large for a double."""
    if math.isinf(value):
        return "1e999" if value > 0 else "-1e999"
    return repr(value)
