"""Domain errors -> HTTP responses, in one place. Every error body names its field when it has one."""

from __future__ import annotations

import re
import uuid
from typing import Any

import msgspec
import redis.exceptions
import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from orchestrator.domain.errors import DataUnavailable, IdempotencyConflict, TaskConflict, TaskNotFound
from orchestrator.domain.views import FieldProblem as FieldProblem  # the error bodies' type, re-exported
from orchestrator.storage.connections import store_unavailable

log = structlog.get_logger("backstream.api")

# How long a client should wait before retrying while Redis is unreachable.
RETRY_AFTER_SECONDS = 2


class ApiError(Exception):
    """A 4xx answer with a machine-readable body: {"error": code, "message": ..., "fields": [...]}."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        fields: list[FieldProblem] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.fields = fields or []
        self.headers = headers

    @classmethod
    def invalid(cls, field: str | None, message: str) -> ApiError:
        """422 `validation_failed` naming `field` (None: the body as a whole)."""
        return cls(422, "validation_failed", f"{field or 'body'}: {message}", [FieldProblem(field, message)])

    @classmethod
    def task_not_found(cls, message: str) -> ApiError:
        """404 `task_not_found` on the field `task_id`."""
        return cls(404, "task_not_found", message, [FieldProblem("task_id", "no such task")])


def task_id_param(request: Request) -> str:
    """The path's `{task_id}` as a canonical UUID. An id that is not a UUID names no task, so it
    gets the same 404 `task_not_found` as an unknown UUID (the body says why), on every route."""
    raw = request.path_params["task_id"]
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise ApiError(
            404,
            "task_not_found",
            f"no task has the id {raw!r}: task ids are UUIDs",
            [FieldProblem("task_id", "no such task (task ids are UUIDs)")],
        ) from None


_AT = re.compile(r"^(?P<detail>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_NAMED = re.compile(r"(?:required|unknown) field `(?P<name>[^`]+)`")


def from_validation_error(error: msgspec.ValidationError) -> ApiError:
    """msgspec's "Expected `int`, got `str` - at `$.params.fast`" -> field `params.fast`."""
    match = _AT.match(str(error))
    assert match is not None
    detail, path = match["detail"], (match["path"] or "").lstrip(".")
    named = _NAMED.search(detail)
    if named:
        path = f"{path}.{named['name']}" if path else named["name"]
    return ApiError.invalid(path or None, detail)


def _body(error: ApiError) -> dict[str, Any]:
    return {"error": error.code, "message": error.message, "fields": [msgspec.to_builtins(f) for f in error.fields]}


async def api_error(request: Request, exc: Exception) -> Response:
    """An ApiError as its JSON body (`ErrorBody`), status and headers. `exc` must be an ApiError."""
    assert isinstance(exc, ApiError)
    return JSONResponse(_body(exc), status_code=exc.status, headers=exc.headers)


async def domain_error(request: Request, exc: Exception) -> Response:
    """TaskNotFound -> 404 `task_not_found`; TaskConflict -> 400 `invalid_for_status`;
    IdempotencyConflict -> 409 `idempotency_conflict`. Re-raises anything else."""
    match exc:
        case TaskNotFound():
            error = ApiError.task_not_found(str(exc))
        case TaskConflict(status="chunk"):
            # A chunk of a job (storage/commands.py): cancelled or retried with its job only.
            error = ApiError(400, "invalid_for_status", str(exc), [FieldProblem("task_id", "a chunk of a job")])
        case TaskConflict(status=status):
            error = ApiError(400, "invalid_for_status", str(exc), [FieldProblem("status", f"task is {status}")])
        case IdempotencyConflict():
            error = ApiError(
                409,
                "idempotency_conflict",
                str(exc),
                [FieldProblem("Idempotency-Key", "already used with a different body")],
            )
        case _:
            raise exc
    return await api_error(request, error)


async def store_error(request: Request, exc: Exception) -> Response:
    """Any store error. One that passes (unreachable, out of memory, read-only, loading...:
    `store_unavailable`) is a 503 with Retry-After: the client retries, nothing was written.
    Any other is a bug or a misconfiguration: a 500, still with a JSON body."""
    assert isinstance(exc, redis.exceptions.RedisError)
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        error = ApiError(
            503, "store_out_of_memory", f"the event store is out of memory and refuses writes: {exc}", headers=headers
        )
    elif store_unavailable(exc):
        error = ApiError(503, "store_unavailable", f"the event store is unavailable: {exc}", headers=headers)
    else:
        log.error("store.error", error=str(exc), error_type=type(exc).__name__, path=request.url.path)
        error = ApiError(500, "store_error", f"the event store refused the request: {exc}")
    return await api_error(request, error)


async def data_unavailable(request: Request, exc: Exception) -> Response:
    """orchestrator.domain.errors.DataUnavailable (the engine's is one) -> 503 `data_unavailable`
    on the field `symbol`, with Retry-After: the data may be readable again soon."""
    error = ApiError(
        503,
        "data_unavailable",
        str(exc),
        [FieldProblem("symbol", str(exc))],
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )
    return await api_error(request, error)


EXCEPTION_HANDLERS: dict[Any, Any] = {
    DataUnavailable: data_unavailable,
    ApiError: api_error,
    TaskNotFound: domain_error,
    TaskConflict: domain_error,
    IdempotencyConflict: domain_error,
    redis.exceptions.RedisError: store_error,
}
