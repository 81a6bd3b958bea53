"""What a task's page shows of jobs (streams.md, "Jobs"): a job's counts, best so far, missing
ranges and a page of its chunks; a chunk's job."""

from __future__ import annotations

from typing import Any, NamedTuple

from starlette.requests import Request

from orchestrator.domain.state import TaskState
from orchestrator.storage.readmodel import ReadModel

# Chunks listed on a job's page at once (the rest a page at a time, `?chunks=<first index>`).
CHUNK_PAGE = 100


class ChunkList(NamedTuple):
    """Chunks `start`.. of a job's `total`, in chunk order; `next_start`/`previous_start` are the
    first index of the next and previous page (None: none)."""

    chunks: list[TaskState]
    start: int
    total: int
    next_start: int | None
    previous_start: int | None


def first_chunk(request: Request, total: int) -> int:
    """The first chunk index the page lists: `?chunks=` when it is a whole number below `total`,
    else 0."""
    raw = request.query_params.get("chunks", "")
    # At most 9 digits: more is no chunk index, and int() refuses strings of over 4,300 digits.
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 10 and int(raw) < total else 0


async def job_values(request: Request, projection: ReadModel, state: TaskState) -> dict[str, Any]:
    """The template values a task's page needs about jobs: `job` (JobState or None), `chunk_page`
    (ChunkList or None), `missing` (the ranges of failed chunks a completed job lists) and
    `chunk` (the task's Chunk when it is one: its `parent` is its job)."""
    values: dict[str, Any] = {"job": state.job, "chunk_page": None, "missing": [], "chunk": state.spec.chunk}
    if state.job is None:
        return values
    total = state.job.chunks
    start = first_chunk(request, total)
    stop = min(start + CHUNK_PAGE, total)
    chunks = await projection.chunks(state.task_id, start, stop)
    previous = max(start - CHUNK_PAGE, 0) if start else None
    values["chunk_page"] = ChunkList(chunks, start, total, stop if stop < total else None, previous)
    values["missing"] = (state.result or {}).get("missing") or []
    return values
