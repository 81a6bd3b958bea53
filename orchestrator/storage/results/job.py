"""A job's full result assembled from its chunks' results: the shape one task's sweep has.

Each chunk of a job stores a sweep's result (`shape.split_detail` of the engine's detail: meta
and tables) whose rows carry their `symbol` and `combination` (the place among that symbol's
admissible combinations, in grid order). The job's `sweep` table is every chunk's rows ranked
together by `orchestrator.domain.ranking.rank_key`, equal keys in the plan's order (symbol by
symbol, then combination), which is the table the whole sweep gives as one task, row for row.
Pure and synchronous: Arrow in, Arrow out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from orchestrator.domain.ranking import rank_key
from orchestrator.domain.results import HEADLINE_METRICS
from orchestrator.storage.results.errors import ResultGone

# A chunk's stored result as `shape.split_detail` returns it: its meta and its tables by name.
ChunkResult = tuple[dict[str, Any], dict[str, pa.Table]]
# A chunk's span of the plan: (symbol, start, stop), or a mapping with those keys.
SpanLike = tuple[str, int, int] | Mapping[str, Any]


def assemble_job(
    chunks: Sequence[ChunkResult | None], spans: Sequence[SpanLike], *, minimise: bool, universe: bool
) -> tuple[dict[str, Any], dict[str, pa.Table]]:
    """The job's result as (meta, tables), shaped as a sweep's (`kind` "sweep", see `shape`).

    `chunks`: each chunk's result in chunk order, None for a chunk that failed or whose result
    is gone; `spans`: each chunk's (symbol, start, stop), aligned with `chunks`; `minimise`: the
    objective is minimised (`BacktestSpec.minimise`); `universe`: the job names `symbols`.

    Tables: `sweep` every row ranked; `equity` and `trades` of the best run (the best chunk's
    best); `symbols` (a universe only) each symbol's best row, best symbol first, with the rows
    computed for it (`combinations`). Meta: the best chunk's (its objective, grid size, data and
    `best`), `combinations` the rows of the table, `chunks` their count, `missing` the spans of
    the None chunks as [{symbol, start, stop}], and the table markers.

    Raises ValueError when `chunks` and `spans` differ in length, ResultGone when no chunk has
    a result left, pyarrow's errors for chunk tables whose columns do not unify."""
    if len(chunks) != len(spans):
        raise ValueError(f"{len(chunks)} chunk results for {len(spans)} spans")
    present = [(i, c) for i, c in enumerate(chunks) if c is not None and c[1]["sweep"].num_rows]
    if not present:
        raise ResultGone("no chunk of the job has a result left")
    tables = [c[1]["sweep"] for _, c in present]
    every = pa.concat_tables(tables, promote_options="permissive")
    # The chunk each row of `every` came from, by its place in `present`.
    source = [p for p, table in enumerate(tables) for _ in range(table.num_rows)]
    keys = [
        (*rank_key(objective, equity, minimise), source[r], combination)
        for r, (objective, equity, combination) in enumerate(
            zip(
                every.column("objective").to_pylist(),
                every.column("equity_final").to_pylist(),
                every.column("combination").to_pylist(),
                strict=True,
            )
        )
    ]
    order = sorted(range(every.num_rows), key=keys.__getitem__)
    ranked = every.take(pa.array(order, type=pa.int64()))
    best_meta, best_tables = present[source[order[0]]][1]
    meta = {key: value for key, value in best_meta.items() if key != "symbol"}
    meta |= {
        "combinations": ranked.num_rows,
        "chunks": len(chunks),
        "missing": [_span(s) for s, c in zip(spans, chunks, strict=True) if c is None],
    }
    out: dict[str, pa.Table] = {
        "sweep": ranked,
        **{name: best_tables[name] for name in ("equity", "trades") if name in best_tables},
    }
    if universe:
        out["symbols"] = _symbols_table(ranked)
        meta["symbols"] = {"$table": "symbols"}
    return meta, out


def _span(span: SpanLike) -> dict[str, Any]:
    if isinstance(span, Mapping):
        return {"symbol": span["symbol"], "start": span["start"], "stop": span["stop"]}
    symbol, start, stop = span
    return {"symbol": symbol, "start": start, "stop": stop}


def _symbols_table(ranked: pa.Table) -> pa.Table:
    """One row per symbol with rows in `ranked` (best first): its best row's symbol, params,
    objective and HEADLINE_METRICS, and how many rows it has (`combinations`)."""
    first: dict[str, int] = {}
    count: dict[str, int] = {}
    for r, symbol in enumerate(ranked.column("symbol").to_pylist()):
        first.setdefault(symbol, r)
        count[symbol] = count.get(symbol, 0) + 1
    best = ranked.take(pa.array(list(first.values()), type=pa.int64()))
    kept = ["symbol", "params", "objective", *HEADLINE_METRICS]
    best = best.select([name for name in kept if name in best.column_names])  # no params: none to show
    return best.append_column("combinations", pa.array(list(count.values()), type=pa.int64()))
