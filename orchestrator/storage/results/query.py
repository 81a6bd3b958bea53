"""Querying a stored sweep table without loading it whole: `where` conditions, a `sort` column
and a page (`offset`, `limit`), over a Parquet file read one row group at a time."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from orchestrator.storage.results.encoding import ROW_GROUP_ROWS
from orchestrator.storage.results.errors import QueryError

_OPS = {">=": pc.greater_equal, "<=": pc.less_equal, "!=": pc.not_equal, "==": pc.equal, ">": pc.greater, "<": pc.less}
_CONDITION = re.compile(
    r"\s*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?)\s*(>=|<=|!=|==|>|<)\s*"
    r"(-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)\s*"
)


@dataclass(frozen=True)
class Condition:
    """One `where` condition: `column` (a top-level numeric column, or `params.<name>`), `op`
    (one of >= <= > < == !=) and the number it compares with."""

    column: str
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
        m = _CONDITION.fullmatch(part)
        if m is None:
            raise QueryError("where", f"{part.strip()!r} is not `<column><op><number>` (op: >= <= > < == !=)")
        column, op, value = m.group(1), m.group(2), float(m.group(3))
        if column not in names:
            raise QueryError("where", f"no numeric column {column!r}; columns: {', '.join(sorted(names))}")
        conditions.append(Condition(column, op, value))
    return conditions


def parse_sort(text: str, schema: pa.Schema) -> tuple[str, bool]:
    """`sort` is a numeric column, `-` in front for descending: returns (column, descending).
    Raises QueryError("sort", ...)."""
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
    """Rows of a Parquet file (`source`: a path, buffer or file object pyarrow reads) matching
    `where`, sorted, `offset`..`offset+limit`, and how many matched. Reads one row group at a
    time and keeps only the best `offset+limit` rows, so memory stays bounded by a row group plus
    the page, whatever the table's size. Synchronous (call it in a thread). Raises pyarrow's
    errors for a file that is not Parquet, and whatever the source raises on a read (a store
    file whose object went away raises FileNotFoundError)."""
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
