"""Full results in an object store: one Parquet file per table and a JSON manifest, per attempt.

Layout under the store's root (a local directory or `s3://bucket/prefix`, see `open_results`):

    <task_id>/<attempt>-<nonce>/manifest.json     written last: its presence means complete
    <task_id>/<attempt>-<nonce>/<table>.parquet   equity, trades, sweep (symbols with universes)

The object's address (`ResultRef.key`, the `<task_id>/<attempt>-<nonce>` prefix) goes into the
`completed` event, in the same script call that records the outcome; an upload whose outcome was
never recorded (a crash, a lost claim) is an orphan that `collect_orphans` deletes after a grace
period. Tables are columnar and typed; `detail_of` rebuilds the JSON the API served before
results left Redis, byte for byte in shape.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

import obstore
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import structlog
from obstore.store import from_url

from orchestrator.domain.events import ResultRef
from orchestrator.domain.results import HEADLINE_METRICS
from orchestrator.settings import Settings
from orchestrator.storage.codec import decode_json, encode_json

log = structlog.get_logger("backstream.results")

# Version 1: manifest {schema_version, task_id, attempt, kind, created_at_ms, tables, meta}; each
# table {file, rows, bytes, sha256, columns}; `meta` is the JSON detail with each table replaced
# by {"$table": name}. Readers refuse a newer version.
RESULT_SCHEMA_VERSION = 1
TABLES = ("equity", "trades", "sweep", "symbols")
MANIFEST = "manifest.json"
# Sweep tables are written in row groups of this many rows, so a filtered scan reads one group
# at a time.
ROW_GROUP_ROWS = 8192


class ResultsError(Exception):
    """Root of this module's errors."""


class ResultGone(ResultsError):
    """The result's objects are no longer in the store (deleted by retention, or never found)."""


class QueryError(ResultsError):
    """A bad `sort`/`where`/`limit` for a table: `field` names the query parameter."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


# --- the JSON detail <-> tables ---


def _split(detail: dict[str, Any]) -> tuple[dict[str, Any], dict[str, pa.Table]]:
    """The detail's tables as Arrow tables, and the rest with each table replaced by a marker."""
    meta = dict(detail)
    tables: dict[str, pa.Table] = {}
    run = meta
    if meta.get("kind") == "sweep":
        rows = meta.get("table") or []
        tables["sweep"] = pa.Table.from_pylist(rows) if rows else pa.table({})
        meta["table"] = {"$table": "sweep"}
        run = meta["best"] = dict(meta["best"])
    if "equity_curve" in run:
        tables["equity"] = pa.table(run["equity_curve"])
        run["equity_curve"] = {"$table": "equity"}
    if "trades" in run:
        tables["trades"] = pa.table(run["trades"])
        run["trades"] = {"$table": "trades"}
    return meta, tables


def _is_marker(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "$table" in value


def detail_of(meta: dict[str, Any], tables: dict[str, pa.Table]) -> dict[str, Any]:
    """The JSON detail as it was before the split: columnar dicts for equity and trades, a list
    of row objects for the sweep table."""

    def fill(node: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in node.items():
            if _is_marker(value):
                name = value["$table"]
                out[key] = tables[name].to_pylist() if name == "sweep" else tables[name].to_pydict()
            elif isinstance(value, dict):
                out[key] = fill(value)
            else:
                out[key] = value
        return out

    return fill(meta)


def _parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", row_group_size=ROW_GROUP_ROWS)
    return sink.getvalue()


@dataclass(frozen=True)
class EncodedResult:
    """One result ready to upload: its manifest, its Parquet files by name, rows per table."""

    task_id: str
    attempt: int
    manifest: bytes
    files: dict[str, bytes]
    rows: dict[str, int]


def encode_result(task_id: str, attempt: int, detail: dict[str, Any]) -> EncodedResult:
    """The manifest and the Parquet files of one result. CPU-bound: call it off the event loop.
    Raises pyarrow's errors for a detail it cannot store."""
    meta, tables = _split(detail)
    files: dict[str, bytes] = {}
    entries: dict[str, Any] = {}
    for name, table in tables.items():
        data = _parquet(table)
        files[f"{name}.parquet"] = data
        entries[name] = {
            "file": f"{name}.parquet",
            "rows": table.num_rows,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "columns": table.column_names,
        }
    manifest = {
        "schema_version": RESULT_SCHEMA_VERSION,
        "task_id": task_id,
        "attempt": attempt,
        "kind": detail.get("kind"),
        "created_at_ms": int(time.time() * 1000),
        "tables": entries,
        "meta": meta,
    }
    rows = {name: entry["rows"] for name, entry in entries.items()}
    return EncodedResult(task_id, attempt, encode_json(manifest), files, rows)


def tables_of_legacy(detail: dict[str, Any]) -> tuple[dict[str, Any], dict[str, pa.Table]]:
    """A result stored in Redis as JSON (before results left Redis), split the same way, so old
    results download in every format too."""
    return _split(detail)


# --- the store ---


@dataclass(frozen=True)
class StoredObject:
    path: str
    size: int
    last_modified_ms: int


class ResultStore:
    """Reads and writes results in one obstore store (a local directory, S3, or memory).

    `url` is what the store was opened from (for logs and docs). All methods are async; obstore
    does the I/O off the event loop, Parquet encoding runs in a thread."""

    def __init__(self, store: Any, url: str) -> None:
        self.store = store
        self.url = url

    async def put(self, task_id: str, attempt: int, detail: dict[str, Any]) -> ResultRef:
        """Encode (in a thread) and upload one attempt's result; see `upload`."""
        return await self.upload(await asyncio.to_thread(encode_result, task_id, attempt, detail))

    async def upload(self, encoded: EncodedResult) -> ResultRef:
        """Upload an encoded result; returns its address for the `completed` event. Each call
        writes a fresh prefix (attempt plus a nonce), so a retried upload never touches what a
        recorded outcome names, and the manifest goes last: a prefix without one is incomplete.
        Raises obstore's errors (or OSError) when the store cannot be reached."""
        key = f"{encoded.task_id}/{encoded.attempt}-{uuid.uuid4().hex[:12]}"
        for name, data in encoded.files.items():
            await obstore.put_async(self.store, f"{key}/{name}", data)
        await obstore.put_async(self.store, f"{key}/{MANIFEST}", encoded.manifest)
        size = len(encoded.manifest) + sum(len(d) for d in encoded.files.values())
        return ResultRef(key=key, schema_version=RESULT_SCHEMA_VERSION, bytes=size, tables=encoded.rows)

    async def manifest(self, ref: ResultRef) -> dict[str, Any]:
        """The manifest of a stored result. Raises ResultGone if it is not in the store."""
        try:
            got = await obstore.get_async(self.store, f"{ref.key}/{MANIFEST}")
            raw = bytes(await got.bytes_async())
        except FileNotFoundError as e:
            raise ResultGone(f"the result {ref.key} is not in the store {self.url}") from e
        manifest: dict[str, Any] = decode_json(raw)
        if manifest.get("schema_version", 0) > RESULT_SCHEMA_VERSION:
            raise ResultsError(
                f"result {ref.key} has schema version {manifest['schema_version']}, newer than this "
                f"Backstream reads ({RESULT_SCHEMA_VERSION}); upgrade it"
            )
        return manifest

    async def file_bytes(self, ref: ResultRef, file: str, start: int | None = None, end: int | None = None) -> bytes:
        """A file of the result, whole or the bytes [start, end). Raises ResultGone."""
        path = f"{ref.key}/{file}"
        try:
            if start is None:
                got = await obstore.get_async(self.store, path)
                return bytes(await got.bytes_async())
            return bytes(await obstore.get_range_async(self.store, path, start=start, end=end))
        except FileNotFoundError as e:
            raise ResultGone(f"the result {ref.key} is not in the store {self.url}") from e

    async def tables(self, ref: ResultRef, manifest: dict[str, Any], names: list[str]) -> dict[str, pa.Table]:
        out = {}
        for name in names:
            data = await self.file_bytes(ref, manifest["tables"][name]["file"])
            out[name] = pq.read_table(pa.BufferReader(data))
        return out

    def open_file(self, ref: ResultRef, file: str) -> pa.PythonFile:
        """A seekable, synchronous reader of one file (for Parquet scans in a thread): only the
        footer and the row groups a scan reads are fetched. Raises ResultGone."""
        try:
            return pa.PythonFile(_ObjectFile(obstore.open_reader(self.store, f"{ref.key}/{file}")), mode="r")
        except FileNotFoundError as e:
            raise ResultGone(f"the result {ref.key} is not in the store {self.url}") from e

    async def delete(self, key: str) -> int:
        """Delete every object under one result's prefix; returns how many. Idempotent."""
        paths = [obj.path async for obj in self.objects(f"{key}/")]
        if paths:
            await obstore.delete_async(self.store, paths)
        return len(paths)

    async def objects(self, prefix: str | None = None) -> AsyncIterator[StoredObject]:
        stream = obstore.list(self.store, prefix=prefix)
        async for batch in stream:
            for meta in batch:
                yield StoredObject(
                    path=meta["path"],
                    size=int(meta["size"]),
                    last_modified_ms=int(meta["last_modified"].timestamp() * 1000),
                )


class _ObjectFile:
    """obstore's ReadableFile with the file-object surface pyarrow's PythonFile expects."""

    closed = False

    def __init__(self, reader: Any) -> None:
        self._reader = reader

    def read(self, n: int | None = -1) -> bytes:
        return bytes(self._reader.read(n) if n is not None and n >= 0 else self._reader.read())

    def seek(self, offset: int, whence: int = 0) -> int:
        return int(self._reader.seek(offset, whence))

    def tell(self) -> int:
        return int(self._reader.tell())

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._reader.close()
        self.closed = True


def open_results(url: str, options: dict[str, str] | None = None, *, timeout_s: float = 60.0) -> ResultStore:
    """The store at `url`: `file:///abs/dir` (created if missing), `s3://bucket/prefix` (AWS_*
    variables give credentials, region and a custom endpoint such as AWS_ENDPOINT_URL; an
    `http://` endpoint is allowed), or `memory:///`. `options` are obstore config keys, which
    take precedence over the environment. Raises ValueError for other schemes."""
    scheme = url.partition("://")[0]
    config = dict(options or {})
    if scheme == "file":
        os.makedirs(url[len("file://") :] or "/", exist_ok=True)
        store = from_url(url)
    elif scheme in ("s3", "s3a"):
        endpoint = config.get("AWS_ENDPOINT_URL") or config.get("AWS_ENDPOINT") or ""
        client_options: dict[str, Any] = {"timeout": f"{max(1, int(timeout_s))}s", "connect_timeout": "5s"}
        if endpoint.startswith("http://"):
            client_options["allow_http"] = True
        # Path-style requests: what S3-compatible servers (MinIO, SeaweedFS, ...) answer to.
        config.setdefault("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "false")
        # obstore retries a failed request itself too; a short budget lets the worker's own
        # retry loop (which keeps the lease and logs) decide.
        retry: Any = {"max_retries": 2, "retry_timeout": timedelta(seconds=timeout_s)}
        s3_config: Any = config
        store = from_url(url, config=s3_config, client_options=cast(Any, client_options), retry_config=retry)
    elif scheme == "memory":
        store = from_url(url)
    else:
        raise ValueError(f"BACKSTREAM_RESULTS_URL {url!r}: use file:///dir, s3://bucket/prefix or memory:///")
    return ResultStore(store, url)


# The AWS_* variables passed on to an s3:// results store (obstore's S3 configuration keys).
S3_OPTIONS = frozenset(
    {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT",
        "AWS_VIRTUAL_HOSTED_STYLE_REQUEST",
        "AWS_SKIP_SIGNATURE",
        "AWS_REQUEST_PAYER",
        "AWS_UNSIGNED_PAYLOAD",
        "AWS_CHECKSUM_ALGORITHM",
        "AWS_SERVER_SIDE_ENCRYPTION",
        "AWS_SSE_KMS_KEY_ID",
        "AWS_IMDSV1_FALLBACK",
        "AWS_METADATA_ENDPOINT",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "AWS_ROLE_SESSION_NAME",
    }
)


def results_for(settings: Settings) -> ResultStore | None:
    """The results store the settings name (see `Settings.results_location`), or None: full
    results then stay in Redis. Raises ValueError for a URL of another scheme."""
    url = settings.results_location()
    if url is None:
        return None
    # Only the keys obstore's S3 store knows (others, such as AWS_CA_BUNDLE, it refuses).
    options = {k: v for k, v in settings.results_options.items() if k in S3_OPTIONS}
    options.setdefault("AWS_REGION", options.get("AWS_DEFAULT_REGION", "us-east-1"))
    return open_results(url, options, timeout_s=settings.results_timeout_s)


# How many of a sweep's best rows its summary (the `completed` event, `GET` of the task,
# `backstream status`) carries, with the headline metrics: the table itself is in the store.
TOP_ROWS = 10


def with_top_rows(summary: dict[str, Any], detail: dict[str, Any], n: int = TOP_ROWS) -> dict[str, Any]:
    """A sweep's summary with `top`: its first `n` rows by the objective (the table is ranked),
    each {params, objective, <headline metrics>}. Other summaries are returned unchanged."""
    if detail.get("kind") != "sweep":
        return summary
    top = [
        {"params": row.get("params"), "objective": row.get("objective"), **{m: row.get(m) for m in HEADLINE_METRICS}}
        for row in (detail.get("table") or [])[:n]
    ]
    return {**summary, "top": top}


# --- querying a sweep table without loading it whole ---

_OPS = {">=": pc.greater_equal, "<=": pc.less_equal, "!=": pc.not_equal, "==": pc.equal, ">": pc.greater, "<": pc.less}


@dataclass(frozen=True)
class Condition:
    column: str  # a top-level column, or `params.<name>`
    op: str
    value: float


def _column_names(schema: pa.Schema) -> set[str]:
    names = set()
    for f in schema:
        if pa.types.is_struct(f.type):
            names |= {f"{f.name}.{child.name}" for child in f.type}
        elif pa.types.is_integer(f.type) or pa.types.is_floating(f.type):
            names.add(f.name)
    return names


def parse_where(text: str, schema: pa.Schema) -> list[Condition]:
    """`where` is conditions joined by commas (all must hold): `<column><op><number>`, op one
    of >= <= > < == !=, column a numeric column of the table or `params.<name>`. Anything else
    raises QueryError("where", ...)."""
    names = _column_names(schema)
    conditions = []
    for part in text.split(","):
        m = re.fullmatch(
            r"\s*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?)\s*(>=|<=|!=|==|>|<)\s*"
            r"(-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)\s*",
            part,
        )
        if m is None:
            raise QueryError("where", f"{part.strip()!r} is not `<column><op><number>` (op: >= <= > < == !=)")
        column, op, value = m.group(1), m.group(2), float(m.group(3))
        if column not in names:
            raise QueryError("where", f"no numeric column {column!r}; columns: {', '.join(sorted(names))}")
        conditions.append(Condition(column, op, value))
    return conditions


def parse_sort(text: str, schema: pa.Schema) -> tuple[str, bool]:
    """`sort` is a numeric column, `-` in front for descending. Raises QueryError("sort", ...)."""
    descending = text.startswith("-")
    column = text[1:] if descending else text
    if column not in _column_names(schema):
        raise QueryError("sort", f"no numeric column {column!r}; columns: {', '.join(sorted(_column_names(schema)))}")
    return column, descending


def _field(batch: pa.RecordBatch, column: str) -> pa.Array:
    if "." in column:
        outer, inner = column.split(".", 1)
        return pc.struct_field(batch.column(outer), inner)
    return batch.column(column)


def _top(table: pa.Table, sort: tuple[str, bool] | None, limit: int) -> pa.Table:
    """The first `limit` rows, in `sort` order when given (nulls last, ties in file order)."""
    if sort is None:
        return table.slice(0, limit)
    column, descending = sort
    if "." in column:
        outer, inner = column.split(".", 1)
        keys = pc.struct_field(table.column(outer).combine_chunks(), inner)
    else:
        keys = table.column(column)
    order = pc.array_sort_indices(keys, order="descending" if descending else "ascending", null_placement="at_end")
    return table.take(order[:limit])


def scan(
    source: Any, *, where: list[Condition], sort: tuple[str, bool] | None, limit: int, offset: int = 0
) -> tuple[pa.Table, int]:
    """Rows of a Parquet file matching `where`, sorted, `offset`..`offset+limit`, and how many
    matched. Reads one row group at a time and keeps only the best `offset+limit` rows, so memory
    stays bounded by a row group plus the page, whatever the table's size. Synchronous."""
    parquet = pq.ParquetFile(source)
    keep = offset + limit
    best: pa.Table | None = None
    matched = 0
    for batch in parquet.iter_batches(batch_size=ROW_GROUP_ROWS):
        mask = None
        for c in where:
            test = _OPS[c.op](_field(batch, c.column), pa.scalar(c.value))
            mask = test if mask is None else pc.and_kleene(mask, test)
        if mask is not None:
            batch = batch.filter(pc.fill_null(mask, False))
        matched += batch.num_rows
        if batch.num_rows == 0 or (sort is None and best is not None and best.num_rows >= keep):
            continue  # unsorted: the page is the first rows in file order; the rest are only counted
        chunk = pa.Table.from_batches([batch])
        best = _top(chunk if best is None else pa.concat_tables([best, chunk]), sort, keep)
    if best is None:
        return pa.Table.from_batches([], schema=parquet.schema_arrow), matched
    return best.slice(offset, limit), matched


def table_csv(table: pa.Table) -> bytes:
    """CSV with a header row; struct columns (a sweep's params) become `params.<name>` columns."""
    sink = io.BytesIO()
    pacsv.write_csv(table.flatten(), sink)
    return sink.getvalue()


def table_json(name: str, table: pa.Table) -> bytes:
    """The table as the JSON detail holds it: a list of rows (sweep, symbols) or a dict of columns."""
    return encode_json(table.to_pylist() if name in ("sweep", "symbols") else table.to_pydict())
