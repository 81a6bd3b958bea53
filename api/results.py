"""GET …/result: a completed task's full result, whole (JSON) or one table (JSON, CSV, Parquet),
with ETag/If-None-Match, byte ranges, and sort/filter/limit over a sweep's table."""

from __future__ import annotations

import asyncio
import hashlib
import io
from typing import Any

import obstore.exceptions
import pyarrow as pa
import pyarrow.parquet as pq
import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.context import context
from api.errors import RETRY_AFTER_SECONDS, ApiError, FieldProblem, task_id_param
from api.job_results import job_result
from api.tasks import _current  # the one read of a task's state
from orchestrator.domain.state import TaskState
from orchestrator.domain.status import Status
from orchestrator.storage.codec import decode_json, encode_json
from orchestrator.storage.results.encoding import TABLES, table_csv, table_json
from orchestrator.storage.results.errors import QueryError, ResultGone
from orchestrator.storage.results.query import parse_sort, parse_where, scan
from orchestrator.storage.results.shape import detail_of, tables_of_legacy
from orchestrator.storage.results.store import ResultStore

log = structlog.get_logger("backstream.api")

FORMATS = {"json": "application/json", "csv": "text/csv; charset=utf-8", "parquet": "application/vnd.apache.parquet"}
PARAMS = {"format", "table", "sort", "where", "limit", "offset"}
# Tables whose rows can be sorted, filtered and paged (one row per combination or symbol).
QUERYABLE = ("sweep", "symbols")
MAX_LIMIT = 100_000


def _gone(task_id: str, state: TaskState, why: str) -> ApiError:
    return ApiError(
        410,
        "result_deleted",
        f"the full result of task {task_id} was deleted ({why}); its summary stays in the task",
        [FieldProblem("task_id", why)],
    )


class _Query:
    """The validated query string."""

    def __init__(self, request: Request) -> None:
        params = request.query_params
        unknown = set(params) - PARAMS
        if unknown:
            raise ApiError.invalid(sorted(unknown)[0], "unknown query parameter")
        self.format = params.get("format", "json")
        if self.format not in FORMATS:
            raise ApiError.invalid("format", f"must be one of {', '.join(FORMATS)}")
        self.table = params.get("table")
        if self.table is not None and self.table not in TABLES:
            raise ApiError.invalid("table", f"must be one of {', '.join(TABLES)}")
        if self.table is None and self.format != "json":
            raise ApiError.invalid("table", f"format={self.format} needs a table: one of {', '.join(TABLES)}")
        self.sort, self.where = params.get("sort"), params.get("where")
        self.limit = self._int(params, "limit", MAX_LIMIT)
        self.offset = self._int(params, "offset", None)
        self.queried = any(v is not None for v in (self.sort, self.where, self.limit, self.offset))
        if self.queried and self.table not in QUERYABLE:
            name = next(n for n in ("sort", "where", "limit", "offset") if params.get(n) is not None)
            raise ApiError.invalid(name, f"applies to table={' or table='.join(QUERYABLE)} only")
        self.canonical = "&".join(f"{k}={params[k]}" for k in sorted(params))

    @staticmethod
    def _int(params: Any, name: str, most: int | None) -> int | None:
        raw = params.get(name)
        if raw is None:
            return None
        if not (raw.isascii() and raw.isdigit()) or (most is not None and not 1 <= int(raw) <= most):
            raise ApiError.invalid(name, f"must be an integer {'from 1 to ' + str(most) if most else '>= 0'}")
        return int(raw)


async def result(request: Request) -> Response:
    """The full result. No `table`: the whole result as JSON, in the shape the API has always
    served. With `table`: that table as JSON (columns for equity and trades, rows for sweep),
    CSV or Parquet. 404 while not completed, 410 once retention deleted it, 422 for bad params;
    304 when If-None-Match matches; 206 for a satisfiable `Range: bytes=…`."""
    task_id = task_id_param(request)
    query = _Query(request)
    state = await _current(request, task_id)
    if state.status != Status.COMPLETED:
        raise ApiError(
            404,
            "result_not_available",
            f"task {task_id} is {state.status}, not completed",
            [FieldProblem("status", f"task is {state.status}")],
        )
    if state.result_deleted_at is not None:
        raise _gone(task_id, state, f"by retention at {state.result_deleted_at}")
    ctx = context(request)
    results = ctx.results
    try:
        if state.job is not None:
            return await _from_job(request, query, state)
        if state.result_ref is not None:
            if results is None:
                raise ApiError(
                    503, "results_store_unconfigured", "this API has no results store (BACKSTREAM_RESULTS_URL)"
                )
            return await _from_store(request, query, results, state)
        stored = await ctx.projection.result(task_id)
        return await _from_redis(request, query, stored or b"{}", task_id)
    except ResultGone as e:
        raise _gone(task_id, state, "its objects are no longer in the results store") from e
    except QueryError as e:
        raise ApiError.invalid(e.field, str(e)) from e
    except (OSError, TimeoutError, obstore.exceptions.BaseError) as e:
        log.warning("results.unavailable", error=str(e)[:500], error_type=type(e).__name__)
        raise ApiError(
            503,
            "results_store_unavailable",
            "the results store did not answer; retry shortly",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        ) from e


def _etag(*parts: str | bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else part.encode())
        digest.update(b"\0")
    return f'"{digest.hexdigest()[:32]}"'


def _not_modified(request: Request, etag: str) -> bool:
    header = request.headers.get("if-none-match")
    if header is None:
        return False
    return header.strip() == "*" or etag in [t.strip().removeprefix("W/") for t in header.split(",")]


def _range(request: Request, size: int) -> tuple[int, int] | None | str:
    """The requested byte range [start, end) within `size`, None for the whole body, or
    "unsatisfiable". A header that is not a single `bytes=` range is ignored (RFC 9110 14.2)."""
    header = request.headers.get("range")
    if header is None or not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header[len("bytes=") :].strip().partition("-")
    if not (first.isdigit() or first == "") or not (last.isdigit() or last == "") or (first == last == ""):
        return None
    if first == "":
        start, end = max(0, size - int(last)), size
    else:
        start, end = int(first), size if last == "" else min(size, int(last) + 1)
    if start >= size or start >= end:
        return "unsatisfiable"
    return start, end


def _headers(query: _Query, etag: str, task_id: str) -> dict[str, str]:
    headers = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": "private, max-age=0, must-revalidate"}
    if query.table is not None and query.format != "json":
        headers["Content-Disposition"] = f'attachment; filename="{task_id}-{query.table}.{query.format}"'
    return headers


def _send(request: Request, query: _Query, body: bytes, headers: dict[str, str]) -> Response:
    media = FORMATS[query.format]
    wanted = _range(request, len(body))
    if wanted == "unsatisfiable":
        return Response(b"", 416, headers={**headers, "Content-Range": f"bytes */{len(body)}"}, media_type=media)
    if isinstance(wanted, tuple):
        start, end = wanted
        headers = {**headers, "Content-Range": f"bytes {start}-{end - 1}/{len(body)}"}
        return Response(body[start:end], 206, headers=headers, media_type=media)
    return Response(body, headers=headers, media_type=media)


def _encode(query: _Query, table: pa.Table) -> bytes:
    assert query.table is not None
    if query.format == "csv":
        return table_csv(table)
    if query.format == "parquet":
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd")
        return sink.getvalue()
    return table_json(query.table, table)


def _missing_table(task_id: str, name: str, present: list[str]) -> ApiError:
    return ApiError(
        404,
        "table_not_found",
        f"the result of task {task_id} has no {name} table (it has: {', '.join(present) or 'none'})",
        [FieldProblem("table", f"not in this result; one of {', '.join(present) or 'none'}")],
    )


def _query_args(query: _Query, schema: pa.Schema) -> dict[str, Any]:
    return {
        "where": parse_where(query.where, schema) if query.where is not None else [],
        "sort": parse_sort(query.sort, schema) if query.sort is not None else None,
        "limit": query.limit if query.limit is not None else MAX_LIMIT,
        "offset": query.offset or 0,
    }


async def _from_store(request: Request, query: _Query, results: ResultStore, state: TaskState) -> Response:
    ref = state.result_ref
    assert ref is not None
    task_id = state.task_id
    # Objects under a key are written once and never changed: the key and the query are the tag.
    etag = _etag(ref.key, query.canonical)
    headers = _headers(query, etag, task_id)
    if _not_modified(request, etag):
        return Response(status_code=304, headers=headers)
    manifest = await results.manifest(ref)
    if query.table is None:
        tables = await results.tables(ref, manifest, list(manifest["tables"]))
        body = await asyncio.to_thread(lambda: encode_json(detail_of(manifest["meta"], tables)))
        return _send(request, query, body, headers)
    entry = manifest["tables"].get(query.table)
    if entry is None:
        raise _missing_table(task_id, query.table, list(manifest["tables"]))
    if query.queried:
        source = results.open_file(ref, entry["file"])
        try:
            schema = await asyncio.to_thread(lambda: pq.ParquetFile(source).schema_arrow)
            args = _query_args(query, schema)
            table, matched = await asyncio.to_thread(lambda: scan(source, **args))
        except FileNotFoundError as e:
            raise ResultGone(ref.key) from e
        finally:
            source.close()
        headers["X-Matched-Rows"] = str(matched)
        return _send(request, query, await asyncio.to_thread(_encode, query, table), headers)
    if query.format == "parquet":
        # The stored file as is; a range is read from the store, not the whole file.
        size = int(entry["bytes"])
        wanted = _range(request, size)
        media = FORMATS["parquet"]
        if wanted == "unsatisfiable":
            return Response(b"", 416, headers={**headers, "Content-Range": f"bytes */{size}"}, media_type=media)
        if isinstance(wanted, tuple):
            start, end = wanted
            part = await results.file_bytes(ref, entry["file"], start, end)
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
            return Response(part, 206, headers=headers, media_type=media)
        return Response(await results.file_bytes(ref, entry["file"]), headers=headers, media_type=media)
    table = (await results.tables(ref, manifest, [query.table]))[query.table]
    return _send(request, query, await asyncio.to_thread(_encode, query, table), headers)


async def _from_redis(request: Request, query: _Query, stored: bytes, task_id: str) -> Response:
    """A result stored in Redis before the results store: served as it was, and its tables
    converted on the fly (it is in memory already)."""
    etag = _etag(hashlib.sha256(stored).digest(), query.canonical)
    headers = _headers(query, etag, task_id)
    if _not_modified(request, etag):
        return Response(status_code=304, headers=headers)
    if query.table is None:
        return _send(request, query, stored, headers)
    _, tables = tables_of_legacy(decode_json(stored))
    return await _send_table(request, query, tables, task_id, headers)


async def _from_job(request: Request, query: _Query, state: TaskState) -> Response:
    """A job's result: its chunks' results put together (api/job_results.py). A completed job's
    chunks never change, so its last event is the tag."""
    etag = _etag(state.last_event_id, query.canonical)
    headers = _headers(query, etag, state.task_id)
    if _not_modified(request, etag):
        return Response(status_code=304, headers=headers)
    ctx = context(request)
    meta, tables = await job_result(ctx.projection, ctx.results, state)
    if query.table is None:
        body = await asyncio.to_thread(lambda: encode_json(detail_of(meta, tables)))
        return _send(request, query, body, headers)
    return await _send_table(request, query, tables, state.task_id, headers)


async def _send_table(
    request: Request, query: _Query, tables: dict[str, pa.Table], task_id: str, headers: dict[str, str]
) -> Response:
    """The table `query` names, of a result held in memory, sorted, filtered and paged as asked."""
    assert query.table is not None
    table = tables.get(query.table)
    if table is None:
        raise _missing_table(task_id, query.table, list(tables))
    if query.queried:
        sink = io.BytesIO()
        pq.write_table(table, sink)
        source = pa.BufferReader(sink.getvalue())
        args = _query_args(query, table.schema)
        table, matched = await asyncio.to_thread(lambda: scan(source, **args))
        headers["X-Matched-Rows"] = str(matched)
    return _send(request, query, await asyncio.to_thread(_encode, query, table), headers)


routes = [Route("/api/backtests/tasks/{task_id}/result", result, name="task_result")]
