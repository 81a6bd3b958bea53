"""Handlers for backtests: submit, get, list, cancel, events, result; and the datasets."""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api.chunks import chunks
from api.context import context
from api.errors import ApiError, FieldProblem, from_validation_error, task_id_param
from orchestrator.domain.errors import TaskConflict, TaskNotFound
from orchestrator.domain.history import event_view
from orchestrator.domain.ids import canonical_stream_id
from orchestrator.domain.spec import BacktestSpec, ParamValue
from orchestrator.domain.state import TaskState
from orchestrator.domain.status import Status
from orchestrator.domain.timeline import as_of_id
from orchestrator.domain.views import DeadLetterQuery, TaskListQuery, TaskQuery, to_api
from orchestrator.storage.readmodel import HistoryArchived

Q = TypeVar("Q", bound=msgspec.Struct)
_IDEMPOTENCY_KEY_MAX = 200


async def _read_body(request: Request, limit: int) -> bytes:
    too_large = ApiError(
        413, "body_too_large", f"request body over {limit} bytes", [FieldProblem(None, f"over {limit} bytes")]
    )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


def _decode_spec(body: bytes) -> BacktestSpec:
    try:
        return msgspec.json.decode(body, type=BacktestSpec)
    except msgspec.ValidationError as e:
        if str(e).startswith("Number out of range") and "`$.params[...]" not in str(e):
            error = from_validation_error(e)
            raise ApiError.invalid(error.fields[0].field, OUT_OF_RANGE) from None
        if "`$.params[...]" in str(e):
            raise _bad_param(body, e) from None
        raise from_validation_error(e) from None
    except msgspec.DecodeError as e:
        raise ApiError(
            400, "malformed_json", f"request body is not valid JSON: {e}", [FieldProblem(None, str(e))]
        ) from None


# msgspec refuses a JSON number beyond float64 (over about 1.8e308, such as 1e309): it would be inf.
OUT_OF_RANGE = "must be a finite number; this one is beyond float64's range (about ±1.8e308)"


class _ParamsOnly(msgspec.Struct):
    """The request's `params`, each value left undecoded (so a number out of range cannot fail it)."""

    params: dict[str, msgspec.Raw] = {}


def _bad_param(body: bytes, error: msgspec.ValidationError) -> ApiError:
    """msgspec locates a bad dict value only as `params[...]`: find which parameter (and which
    element of a sweep list) it was, decoding each value on its own."""
    try:
        params = msgspec.json.decode(body, type=_ParamsOnly).params
    except msgspec.MsgspecError:
        return from_validation_error(error)
    for name, raw in params.items():
        try:
            msgspec.json.decode(raw, type=ParamValue)
        except msgspec.ValidationError as e:
            field = f"params.{name}"
            if str(e).startswith("Number out of range"):
                index = _out_of_range_index(raw)
                return ApiError.invalid(field if index is None else f"{field}[{index}]", OUT_OF_RANGE)
            return ApiError.invalid(field, "must be a number or a list of numbers")
    return from_validation_error(error)


def _out_of_range_index(raw: msgspec.Raw) -> int | None:
    """Which element of a sweep list is out of range; None when the value is not a list."""
    try:
        items = msgspec.json.decode(raw, type=list[msgspec.Raw])
    except msgspec.ValidationError:
        return None
    for k, item in enumerate(items):
        try:
            msgspec.json.decode(item, type=int | float)
        except msgspec.ValidationError:
            return k
    return None


async def submit(request: Request) -> Response:
    """`POST /api/backtests`: 202 `{"task_id", "status"}` with `Location`. 413 over the body limit,
    400 malformed JSON, 422 `validation_failed` naming each field at fault, 503 when the data cannot
    be read now; a replayed `Idempotency-Key` answers the first submit's task (its status now) with
    `Idempotent-Replayed: true`, another body under the same key 409."""
    ctx = context(request)
    body = await _read_body(request, ctx.settings.max_body_bytes)
    # Off the event loop: the first read of a long user file takes seconds (400,000 rows: ~3 s).
    spec, problems = await asyncio.to_thread(ctx.checker.check, _decode_spec(body))
    if problems:
        raise ApiError(
            422,
            "validation_failed",
            "; ".join(f"{p.field}: {p.message}" for p in problems),
            [FieldProblem(p.field, p.message) for p in problems],
        )
    key = request.headers.get("idempotency-key")
    if key is not None and not (0 < len(key) <= _IDEMPOTENCY_KEY_MAX and key.isprintable()):
        raise ApiError.invalid("Idempotency-Key", f"must be 1 to {_IDEMPOTENCY_KEY_MAX} printable characters")
    submitted = await ctx.commands.submit(None, spec, by=request.scope.get("user"), idempotency_key=key, body=body)
    status: str = Status.QUEUED
    headers = {"Location": str(request.app.url_path_for("task", task_id=submitted.task_id))}
    if not submitted.created:
        headers["Idempotent-Replayed"] = "true"
        state = await ctx.projection.current(submitted.task_id)
        status = state.status if state else status
    return JSONResponse({"task_id": submitted.task_id, "status": status}, status_code=202, headers=headers)


async def _current(request: Request, task_id: str) -> TaskState:
    """The task's current state from the read model (read-your-writes); 404 when it is unknown."""
    ctx = context(request)
    state: TaskState | None = await ctx.projection.current(task_id)
    if state is None:
        raise ApiError.task_not_found(f"task {task_id} does not exist")
    return state


async def get_task(request: Request) -> Response:
    """`GET …/tasks/{id}`: the task as `TaskView`; with `as_of`, as it was then (410 when that
    needs events retention trimmed, 404 when it did not exist yet)."""
    task_id = task_id_param(request)
    as_of = _query(request, TaskQuery).as_of
    if as_of is None:
        now = await _current(request, task_id)
        counts = await context(request).projection.chunk_counts(task_id) if now.job is not None else None
        return JSONResponse(to_api(now, counts))
    try:
        until = as_of_id(as_of)
    except ValueError as e:
        raise ApiError.invalid("as_of", str(e)) from None
    ctx = context(request)
    history = await ctx.projection.history(task_id)
    try:
        state = history.as_of(until) if history else None
    except HistoryArchived as e:
        raise ApiError(
            410, "history_archived", f"{e}; the state as of {as_of} is not in the log", [FieldProblem("as_of", str(e))]
        ) from None
    if state is None:
        raise ApiError(
            404,
            "task_not_found",
            f"task {task_id} did not exist as of {as_of}",
            [FieldProblem("task_id", f"no such task as of {as_of}")],
        )
    return JSONResponse(to_api(state))


async def _compacted(request: Request, task_id: str) -> TaskConflict:
    """A task whose write-side keys retention dropped is still a finished task, not an unknown one."""
    state = await _current(request, task_id)  # raises the 404 if the task is unknown everywhere
    return TaskConflict(task_id, state.status, f"task {task_id} is {state.status} (archived by retention)")


async def cancel(request: Request) -> Response:
    """`DELETE …/tasks/{id}`: cancel; the task as it is now. 400 when its status forbids it."""
    ctx = context(request)
    task_id = task_id_param(request)
    try:
        await ctx.commands.cancel(task_id, by=request.scope.get("user"))
    except TaskNotFound as e:
        raise await _compacted(request, task_id) from e
    return JSONResponse(to_api(await _current(request, task_id)))


async def retry(request: Request) -> Response:
    """`POST …/tasks/{id}/retry`: requeue a failed or cancelled task; 202 with the task."""
    ctx = context(request)
    task_id = task_id_param(request)
    try:
        await ctx.commands.requeue(task_id, by=request.scope.get("user"))
    except TaskNotFound as e:
        raise await _compacted(request, task_id) from e
    return JSONResponse(to_api(await _current(request, task_id)), status_code=202)


async def dead_letters(request: Request) -> Response:
    """`GET /api/dead-letters`: newest first, `limit` of them, those before `before` when given."""
    query = _query(request, DeadLetterQuery)
    before = None if query.before is None else canonical_stream_id(query.before)
    if query.before is not None and before is None:
        raise ApiError.invalid("before", "must be a stream id such as 1700000000000-0")
    letters = await context(request).projection.dead_letters(limit=query.limit, before=before)
    return JSONResponse({"dead_letters": letters})


def _query(request: Request, kind: type[Q]) -> Q:
    """The query string decoded into `kind` (the same type the OpenAPI document describes);
    a 422 naming the parameter when it does not fit."""
    try:
        return msgspec.convert(dict(request.query_params), kind, strict=False)
    except msgspec.ValidationError as e:
        raise from_validation_error(e) from None


async def list_tasks(request: Request) -> Response:
    """`GET /api/backtests/tasks`: a `TaskPage` newest first, filtered by status/symbol/strategy."""
    query = _query(request, TaskListQuery)
    if query.cursor is not None and "|" not in query.cursor:
        raise ApiError.invalid("cursor", "not a cursor this API returned")
    tasks, next_cursor = await context(request).projection.list_tasks(
        status=query.status, limit=query.limit, cursor=query.cursor, symbol=query.symbol, strategy=query.strategy
    )
    return JSONResponse({"tasks": [to_api(t) for t in tasks], "next_cursor": next_cursor})


async def events(request: Request) -> Response:
    """GET …/events: the task's audit trail. When retention trimmed its first events from the
    log, `archived` says how many, below which id, and which archive holds them."""
    task_id = task_id_param(request)
    ctx = context(request)
    history = await ctx.projection.history(task_id)
    if history is None:
        raise ApiError.task_not_found(f"task {task_id} does not exist")
    body: dict[str, Any] = {"task_id": task_id, "events": [event_view(e) for e in history.events]}
    if history.archived is not None:
        body["archived"] = {**msgspec.to_builtins(history.archived), "message": history.archived.describe()}
    return JSONResponse(body)


async def datasets(request: Request) -> Response:
    """`GET /api/datasets`: every symbol a request may name, as `Datasets`."""
    datasets = await asyncio.to_thread(context(request).catalog.datasets)  # reads user files: off the loop
    return JSONResponse({"datasets": msgspec.to_builtins(datasets)})


routes = [
    Route("/api/backtests", submit, methods=["POST"], name="submit"),
    Route("/api/backtests/tasks", list_tasks, name="tasks"),
    Route("/api/backtests/tasks/{task_id}", get_task, name="task"),
    Route("/api/backtests/tasks/{task_id}", cancel, methods=["DELETE"], name="cancel"),
    Route("/api/backtests/tasks/{task_id}/events", events, name="task_events"),
    Route("/api/backtests/tasks/{task_id}/chunks", chunks, name="task_chunks"),
    Route("/api/backtests/tasks/{task_id}/retry", retry, methods=["POST"], name="retry"),
    Route("/api/dead-letters", dead_letters, name="dead_letters"),
    Route("/api/datasets", datasets, name="datasets"),
]
