"""What the OpenAPI document says: every route of the JSON API as an Operation (its answers, body,
query and headers), the parameters they share, and what each status code means. The document is
built from these by api.openapi.document."""

from __future__ import annotations

from typing import Any, NamedTuple

from orchestrator.domain import views
from orchestrator.domain.spec import BacktestSpec
from orchestrator.domain.views import ChunkListQuery, ChunkPage

TASK_ID = {
    "name": "task_id",
    "in": "path",
    "required": True,
    "description": "the task's id (a UUID); any id that names no task gets 404 task_not_found",
    "schema": {"type": "string"},
}
# An answer that is a stream of Server-Sent Events (`id:` the log cursor, `data:` an EventView).
SSE = "text/event-stream"


# A request that passes validation, shown on /docs and used by schemathesis's examples phase.
SUBMIT_EXAMPLE = {
    "strategy": "sma_cross",
    "symbol": "AAPL",
    "params": {"fast": 10, "slow": 20},
    "start": "2005-01-01",
    "end": "2012-12-31",
    "cash": 10000,
    "commission": 0.002,
}
# What a submit's answer leads to: each operation on the task it names (OpenAPI links, which
# clients and stateful testers follow).
TASK_LINKS = ("get", "delete", "get/events", "get/chunks", "get/result", "post/retry", "get/stream")


class Operation(NamedTuple):
    """One documented route: answers map status codes to a Struct (JSON), SSE, or None (no body)."""

    method: str
    path: str
    summary: str
    answers: dict[int, Any]
    body: type | None = None
    query: type | None = None
    headers: tuple[dict[str, Any], ...] = ()


_IDEMPOTENCY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "a retried submit with the same key (1 to 200 printable characters) makes no second task",
    "schema": {"type": "string", "minLength": 1, "maxLength": 200},
}
_LAST_EVENT_ID = {
    "name": "Last-Event-ID",
    "in": "header",
    "required": False,
    "description": (
        "resume after this log cursor: the `id` of an event received (a stream id with one partition; "
        "one id per partition, comma-separated, with several)"
    ),
    "schema": {"type": "string"},
}

E = views.ErrorBody
# Every route of the JSON API. A module that adds an /api route adds its Operation here (for
# instance `GET /api/strategies` with its answer Struct); tests/test_openapi.py fails while an
# /api route is missing from this list.
OPERATIONS: list[Operation] = [
    Operation(
        "post",
        "/api/backtests",
        "Submit a backtest (or a parameter sweep: any parameter given as a list)",
        {202: views.SubmitReply, 400: E, 403: E, 409: E, 413: E, 415: E, 422: E, 503: E},
        body=BacktestSpec,
        headers=(_IDEMPOTENCY,),
    ),
    Operation(
        "get",
        "/api/backtests/tasks",
        "Tasks newest first, filtered by status, symbol and strategy",
        {200: views.TaskPage, 422: E},
        query=views.TaskListQuery,
    ),
    Operation(
        "get",
        "/api/backtests/tasks/{task_id}",
        "A task: status, progress, times, attempt, worker, error, spec and headline result",
        {200: views.TaskView, 404: E, 410: E, 422: E},
        query=views.TaskQuery,
    ),
    Operation(
        "delete",
        "/api/backtests/tasks/{task_id}",
        "Cancel a queued or running task",
        {200: views.TaskView, 400: E, 403: E, 404: E},
    ),
    Operation(
        "get",
        "/api/backtests/tasks/{task_id}/events",
        "Every event of the task, in order (the audit trail)",
        {200: views.TaskEvents, 404: E},
    ),
    Operation(
        "get",
        "/api/backtests/tasks/{task_id}/chunks",
        "A job's chunk tasks in chunk order (422 not_a_job for a task that did not fan out)",
        {200: ChunkPage, 404: E, 422: E},
        query=ChunkListQuery,
    ),
    Operation(
        "get",
        "/api/backtests/tasks/{task_id}/result",
        "The full result of a completed task: every metric, the equity curve, trades, positions",
        {200: dict[str, Any], 404: E},
    ),
    Operation(
        "post",
        "/api/backtests/tasks/{task_id}/retry",
        "Requeue a failed task as a new attempt",
        {202: views.TaskView, 400: E, 403: E, 404: E},
    ),
    Operation(
        "get",
        "/api/backtests/tasks/{task_id}/stream",
        "The task's events as Server-Sent Events, from its first, live, ending after its terminal event",
        {200: SSE, 204: None, 404: E, 422: E, 429: E},
        headers=(_LAST_EVENT_ID,),
    ),
    Operation(
        "get",
        "/api/stream",
        "Every task's events as Server-Sent Events, from now (or after Last-Event-ID)",
        {200: SSE, 422: E, 429: E},
        headers=(_LAST_EVENT_ID,),
    ),
    Operation(
        "get",
        "/api/dead-letters",
        "Tasks that failed for good, newest first, with the reason and every attempt",
        {200: views.DeadLetters, 422: E},
        query=views.DeadLetterQuery,
    ),
    Operation("get", "/api/datasets", "The symbols this server offers", {200: views.Datasets}),
    # Documented once the strategy registry's route is served (document() keeps served paths only).
    Operation(
        "get",
        "/api/strategies",
        "Every strategy with its parameters (types, bounds, defaults) and the sweep objectives",
        {200: views.Strategies},
    ),
    Operation(
        "get", "/healthz", "200 when the store answers, 503 when it does not", {200: views.Health, 503: views.Health}
    ),
]

# What each status code an Operation answers with means (the responses' descriptions).
DESCRIPTIONS: dict[int, str] = {
    200: "OK",
    202: "Accepted",
    204: "Nothing more to stream",
    400: "Malformed JSON, or not allowed in the task's status",
    403: "Refused: another web origin, or a read-only token",
    404: "No such task (or no result yet)",
    409: "Idempotency-Key reused with another body",
    410: "Retention trimmed the events this answer needs from the log",
    413: "Body over the limit",
    415: "Body is not application/json",
    422: "A field or parameter is invalid; `fields` names it",
    429: "Too many open streams for this client; retry after Retry-After",
    503: "The store is unreachable; retry after Retry-After",
}
