"""`GET …/tasks/{id}/chunks`: a job's chunk tasks in chunk order (streams.md, "Jobs")."""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api.context import context
from api.errors import ApiError, FieldProblem, from_validation_error, task_id_param
from orchestrator.domain.jobs import may_fan_out
from orchestrator.domain.state import TaskState
from orchestrator.domain.status import TERMINAL_STATUSES
from orchestrator.domain.views import ChunkListQuery, to_api


def _may_fan_out(state: TaskState) -> bool:
    """A request not yet planned that the worker claiming it may fan out (not ended)."""
    return may_fan_out(state.spec) and state.status not in TERMINAL_STATUSES


def _not_a_job(state: TaskState) -> ApiError:
    if state.spec.chunk is not None:
        why = f"task {state.task_id} is chunk {state.spec.chunk.index} of the job {state.spec.chunk.parent}"
    else:
        why = f"task {state.task_id} is not a job: it ran as one task, not fanned out over chunks"
    return ApiError(422, "not_a_job", why, [FieldProblem("task_id", "not a job")])


async def chunks(request: Request) -> Response:
    """`GET /api/backtests/tasks/{id}/chunks`: a `ChunkPage`. 404 for an unknown task; 422
    `not_a_job` for a task that did not fan out (and will not), 422 `validation_failed` naming
    `limit` or `cursor` when out of range (a cursor must be below the job's chunk count)."""
    task_id = task_id_param(request)
    try:
        query = msgspec.convert(dict(request.query_params), ChunkListQuery, strict=False)
    except msgspec.ValidationError as e:
        raise from_validation_error(e) from None
    projection = context(request).projection
    state = await projection.current(task_id)
    if state is None:
        raise ApiError.task_not_found(f"task {task_id} does not exist")
    if state.job is None:
        if not _may_fan_out(state):
            raise _not_a_job(state)
        return JSONResponse({"job_id": task_id, "total": 0, "chunks": [], "next_cursor": None})
    total = state.job.chunks
    start = query.cursor or 0
    if start >= total:
        raise ApiError.invalid("cursor", f"the job has {total} chunks: a cursor is below {total}")
    stop = min(start + query.limit, total)
    found = await projection.chunks(task_id, start, stop)
    page = {"job_id": task_id, "total": total, "chunks": [to_api(c) for c in found]}
    return JSONResponse({**page, "next_cursor": stop if stop < total else None})
