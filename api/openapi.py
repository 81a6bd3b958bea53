"""The OpenAPI 3.1 document (`/openapi.json`) and its offline page (`/docs`), generated from the
msgspec types that validate requests and shape answers (no hand-kept copy of any schema)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from orchestrator.domain import views
from orchestrator.domain.spec import BacktestSpec

HERE = Path(__file__).parent
REF = "#/components/schemas/{name}"
TASK_ID = {
    "name": "task_id",
    "in": "path",
    "required": True,
    "description": "the task's id (a UUID); any id that names no task gets 404 task_not_found",
    "schema": {"type": "string"},
}
# An answer that is a stream of Server-Sent Events (`id:` the stream id, `data:` an EventView).
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
TASK_LINKS = ("get", "delete", "get/events", "get/result", "post/retry", "get/stream")


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
    "description": "resume after this stream id",
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


def _query_parameters(kind: type) -> list[dict[str, Any]]:
    """A query Struct's fields as OpenAPI parameters (optional; a null alternative is dropped,
    since a query string cannot say null)."""
    (ref,), schemas = msgspec.json.schema_components([kind], ref_template=REF)
    struct = schemas[ref["$ref"].rsplit("/", 1)[1]]
    required = set(struct.get("required", []))
    parameters = []
    for name, schema in struct["properties"].items():
        schema = dict(schema)
        if "anyOf" in schema:
            options = [s for s in schema.pop("anyOf") if s != {"type": "null"}]
            schema.update(options[0] if len(options) == 1 else {"anyOf": options})
        if schema.get("default", 0) is None:
            del schema["default"]
        description = schema.pop("description", None)
        parameter = {"name": name, "in": "query", "required": name in required, "schema": schema}
        if description:
            parameter["description"] = description
        parameters.append(parameter)
    return parameters


def _content(answer: Any, refs: dict[Any, Any]) -> dict[str, Any]:
    if answer == SSE:
        # One event (as OpenAPI 3.2's SSE item): `data` is an EventView as JSON; `event: end` has {}.
        end = {"type": "object", "maxProperties": 0, "description": "`event: end`: the task has ended"}
        data = {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {"anyOf": [refs[views.EventView], end]},
        }
        event = {
            "type": "object",
            "required": ["data"],
            "properties": {
                "event": {"enum": ["message", "end"]},
                "id": {"type": "string", "description": "the log's stream id; send it back as Last-Event-ID"},
                "retry": {"type": "integer"},
                "data": data,
            },
        }
        return {SSE: {"schema": event}}
    return {"application/json": {"schema": refs[answer]}}


@functools.cache
def document(served: frozenset[str] | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of OPERATIONS (those whose path is in `served`, when given: the
    app's routes), built once per set of routes (it depends on the code only)."""
    operations = [op for op in OPERATIONS if served is None or op.path in served]
    named = [BacktestSpec, views.EventView, *(t for op in operations for t in (op.body, *op.answers.values()))]
    types = list(dict.fromkeys(t for t in named if t is not None and t != SSE))
    refs_list, schemas = msgspec.json.schema_components(types, ref_template=REF)
    refs = dict(zip(types, refs_list, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        parameters = [TASK_ID] if "{task_id}" in op.path else []
        parameters += list(op.headers)
        if op.query is not None:
            parameters += _query_parameters(op.query)
        responses: dict[str, Any] = {}
        for status, answer in op.answers.items():
            response: dict[str, Any] = {"description": _describe(status)}
            if answer is not None:
                response["content"] = _content(answer, refs)
            responses[str(status)] = response
        operation: dict[str, Any] = {
            "operationId": _operation_id(op.method, op.path),
            "summary": op.summary,
            "responses": responses,
        }
        if parameters:
            operation["parameters"] = parameters
        if op.body is not None:
            body = {"schema": refs[op.body], "examples": {"sma_cross": {"value": SUBMIT_EXAMPLE}}}
            operation["requestBody"] = {"required": True, "content": {"application/json": body}}
            responses["202"]["links"] = _task_links()
        paths.setdefault(op.path, {})[op.method] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Backstream",
            "version": _version(),
            "description": "Submit trading-strategy backtests, follow them and read their results. "
            "Every error body is an ErrorBody naming the fields at fault. With BACKSTREAM_TOKENS set, "
            "send `Authorization: Bearer <token>`.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _operation_id(method: str, path: str) -> str:
    return f"{method}_{path.strip('/').replace('/', '_').replace('{', '').replace('}', '')}"


def _task_links() -> dict[str, Any]:
    links = {}
    for link in TASK_LINKS:
        method, _, tail = link.partition("/")
        path = "/api/backtests/tasks/{task_id}" + (f"/{tail}" if tail else "")
        links[f"{method}_{tail or 'task'}"] = {
            "operationId": _operation_id(method, path),
            "parameters": {"task_id": "$response.body#/task_id"},
        }
    return links


def _describe(status: int) -> str:
    return {
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
    }[status]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("backstream")
    except PackageNotFoundError:
        return "0"


async def openapi_json(request: Request) -> Response:
    """`GET /openapi.json`: the document of the operations this app serves."""
    served = frozenset(getattr(route, "path", "") for route in request.app.routes)
    return JSONResponse(document(served))


async def docs(request: Request) -> Response:
    """A self-contained page that renders /openapi.json in the browser: no CDN, no network."""
    return FileResponse(HERE / "static" / "docs.html", media_type="text/html")


routes = [
    Route("/openapi.json", openapi_json, name="openapi"),
    Route("/docs", docs, name="docs"),
]
