"""A completed task's full result as the client hands it over: pandas DataFrames when pandas is
installed (the `pandas` extra), else the columns as the API sent them."""

from __future__ import annotations

import importlib
from typing import Any


def frame(columns: dict[str, list[Any]] | list[dict[str, Any]] | None) -> Any:
    """A pandas DataFrame of `columns` (a dict of columns, or a list of rows) when pandas is
    installed, else `columns` unchanged; None stays None."""
    if columns is None:
        return None
    try:
        pandas = importlib.import_module("pandas")  # optional: the `pandas` extra
    except ImportError:
        return columns
    return pandas.DataFrame(columns)


class Result:
    """A completed task's full result. `raw` is the API's JSON; `kind` is `backtest` or `sweep`.
    `metrics` are the (best run's) metrics; `equity` (time, equity, drawdown_pct, position per bar),
    `trades` (one row per trade) and, for a sweep, `table` (one row per combination, params as
    columns, best first) are pandas DataFrames when pandas is installed, else the API's columns."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw
        self.kind: str = raw.get("kind", "backtest")
        run = raw.get("best") or raw if self.kind == "sweep" else raw
        self.params: dict[str, Any] = run.get("params", {})
        self.metrics: dict[str, Any] = run.get("metrics", {})
        self.data: dict[str, Any] | None = raw.get("data")
        self.equity = frame(run.get("equity_curve"))
        self.trades = frame(run.get("trades"))
        rows = raw.get("table")
        self.table = (
            frame([{**r.get("params", {}), **{k: v for k, v in r.items() if k != "params"}} for r in rows])
            if rows
            else None
        )

    def __repr__(self) -> str:
        return f"Result(kind={self.kind!r}, params={self.params!r}, metrics={self.metrics!r})"
