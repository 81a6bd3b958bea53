"""The OpenAPI 3.1 document (`/openapi.json`) and its offline page (`/docs`), generated from the
msgspec types that validate requests and shape answers (no hand-kept copy of any schema). What it
documents (every operation, its answers and parameters) is in api.openapi.operations; this module
turns that into the document and serves it."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from api.openapi.operations import DESCRIPTIONS, OPERATIONS, SSE, SUBMIT_EXAMPLE, TASK_ID, TASK_LINKS, Operation
from orchestrator.domain import views
from orchestrator.domain.spec import BacktestSpec

# The dashboard's static files, where the /docs page is.
STATIC = Path(__file__).parent.parent / "static"
REF = "#/components/schemas/{name}"

__all__ = ["OPERATIONS", "Operation", "document", "routes"]


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
                "id": {
                    "type": "string",
                    "description": "the log cursor after this event; send it back as Last-Event-ID",
                },
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
            response: dict[str, Any] = {"description": DESCRIPTIONS[status]}
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
    return FileResponse(STATIC / "docs.html", media_type="text/html")


routes = [
    Route("/openapi.json", openapi_json, name="openapi"),
    Route("/docs", docs, name="docs"),
]
