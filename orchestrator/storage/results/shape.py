"""The result's JSON shape: the detail the engine returns, split into tables and back.

A single run's detail holds `equity_curve` and `trades` as columnar dicts ({column: [values]});
a sweep's holds its ranked `table` as a list of row objects and its `best` run (with its own
equity and trades). `split_detail` replaces each table by a `{"$table": name}` marker and returns
the tables as Arrow; `detail_of` puts them back, so the API serves the same JSON whether a result
sits in the store or (from before results left Redis) in Redis. Pure, synchronous.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from orchestrator.domain.results import HEADLINE_METRICS

# How many of a sweep's best rows its summary (the `completed` event, `GET` of the task,
# `backstream status`) carries, with the headline metrics: the table itself is in the store.
TOP_ROWS = 10


def split_detail(detail: dict[str, Any]) -> tuple[dict[str, Any], dict[str, pa.Table]]:
    """The detail's tables as Arrow tables by name (`sweep`, `equity`, `trades`), and the rest of
    the detail (a shallow copy: `detail` is not changed) with each table replaced by a marker.
    Raises pyarrow's errors for columns or rows it cannot type."""
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


def tables_of_legacy(detail: dict[str, Any]) -> tuple[dict[str, Any], dict[str, pa.Table]]:
    """A result stored in Redis as JSON (before results left Redis), split the same way as
    `split_detail`, so old results download in every format too. Raises pyarrow's errors."""
    return split_detail(detail)


def _is_marker(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "$table" in value


def detail_of(meta: dict[str, Any], tables: dict[str, pa.Table]) -> dict[str, Any]:
    """The JSON detail as it was before the split: columnar dicts for equity and trades, a list
    of row objects for the sweep and symbols tables. Raises KeyError for a marker naming a table not in
    `tables`."""

    def fill(node: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in node.items():
            if _is_marker(value):
                name = value["$table"]
                out[key] = tables[name].to_pylist() if name in ("sweep", "symbols") else tables[name].to_pydict()
            elif isinstance(value, dict):
                out[key] = fill(value)
            else:
                out[key] = value
        return out

    return fill(meta)


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
