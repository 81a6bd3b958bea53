"""A job's full result, read from its chunks' results and put together
(orchestrator/storage/results/job.py) for `GET …/result`."""

from __future__ import annotations

import asyncio
from typing import Any

import pyarrow as pa

from api.errors import RETRY_AFTER_SECONDS, ApiError
from orchestrator.domain.jobs import span_of
from orchestrator.domain.state import TaskState, result_location
from orchestrator.storage.codec import decode_json
from orchestrator.storage.readmodel import ReadModel
from orchestrator.storage.results.job import ChunkResult, assemble_job
from orchestrator.storage.results.shape import split_detail
from orchestrator.storage.results.store import ResultStore

# How many chunks' results one read fetches at once.
CHUNK_READS = 16


async def job_result(
    projection: ReadModel, results: ResultStore | None, job: TaskState
) -> tuple[dict[str, Any], dict[str, pa.Table]]:
    """The completed `job`'s result as (meta, tables), a sweep's shape: its chunks' results (from
    the results store, or Redis for results stored there) ranked together. Raises ApiError 503
    when a chunk's result is in a results store this API lacks, ResultGone when no chunk's
    result is left (or a chunk's objects are gone), and the store's I/O errors."""
    assert job.job is not None
    # Read-your-writes, as the job's own state: the last chunk may not be folded yet.
    chunks = await projection.chunks(job.task_id, 0, job.job.chunks)
    if len(chunks) != job.job.chunks:
        raise ApiError(
            503,
            "job_chunks_unavailable",
            f"{job.job.chunks - len(chunks)} of the job's chunks cannot be read now; retry shortly",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    reads = asyncio.Semaphore(CHUNK_READS)

    async def read(chunk: TaskState) -> ChunkResult | None:
        async with reads:
            return await _chunk_result(projection, results, chunk)

    parts = await asyncio.gather(*(read(chunk) for chunk in chunks))
    spans = [span_of(chunk.spec) for chunk in chunks]
    minimise, universe = job.spec.minimise, job.spec.symbols is not None
    return await asyncio.to_thread(lambda: assemble_job(parts, spans, minimise=minimise, universe=universe))


async def _chunk_result(projection: ReadModel, results: ResultStore | None, chunk: TaskState) -> ChunkResult | None:
    """A chunk's full result split into its tables, or None when it has none (it did not
    complete, or retention deleted it)."""
    if result_location(chunk) not in ("store", "redis"):
        return None
    if chunk.result_ref is None:
        stored = await projection.result(chunk.task_id)
        return None if stored is None else split_detail(decode_json(stored))
    if results is None:
        raise ApiError(503, "results_store_unconfigured", "this API has no results store (BACKSTREAM_RESULTS_URL)")
    manifest = await results.manifest(chunk.result_ref)
    tables = await results.tables(chunk.result_ref, manifest, list(manifest["tables"]))
    meta: dict[str, Any] = manifest["meta"]
    return meta, tables
