"""JSON-safe results: the small summary for the `completed` event and the full detail."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from consumers.engine.bars import Bars
from consumers.engine.kernel import Simulation, trade_columns
from consumers.engine.sweep import SweepRow
from orchestrator.domain.results import HEADLINE_METRICS


def headline(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The HEADLINE_METRICS of `metrics`, in that order: the summary a `completed` event carries.
    Raises KeyError if one is missing."""
    return {name: metrics[name] for name in HEADLINE_METRICS}


def json_safe(value: Any) -> Any:
    """Plain JSON types only: NaN and ±inf become None (JSON has no NaN), numpy scalars unwrap."""
    if isinstance(value, float | np.floating):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def _floats(arr: np.ndarray) -> list[float | None]:
    if np.isfinite(arr).all():
        return arr.tolist()  # type: ignore[no-any-return]  # numpy's stubs: tolist() -> Any
    return [v if math.isfinite(v) else None for v in arr.tolist()]


def trades_table(bars: Bars, sim: Simulation) -> dict[str, list[Any]]:
    """Closed trades as columns (one list per field, same order): compact and fast to build."""
    days = bars.dates.astype("datetime64[D]")
    day_strings = bars.day_strings
    c = trade_columns(sim.trades)
    return {
        "size": c.size.tolist(),
        "entry_bar": c.entry_bar.tolist(),
        "exit_bar": c.exit_bar.tolist(),
        "entry_time": day_strings[c.entry_bar].tolist(),
        "exit_time": day_strings[c.exit_bar].tolist(),
        "entry_price": _floats(c.entry_price),
        "exit_price": _floats(c.exit_price),
        "pnl": _floats(c.pnl),
        "commission": _floats(c.commission),
        "return_pct": _floats(c.returns * 100),
        "duration_days": (days[c.exit_bar] - days[c.entry_bar]).astype(np.int64).tolist(),
        "exit_reason": [t.exit_reason for t in sim.trades],
    }


def backtest_detail(
    bars: Bars,
    sim: Simulation,
    metrics: Mapping[str, Any],
    strategy: str,
    params: Mapping[str, Any],
    *,
    trades: dict[str, list[Any]] | None = None,
) -> dict[str, Any]:
    """Metrics, the equity curve with drawdown and position per bar, and the trades; both tables
    are columnar (a list per field, aligned by index)."""
    with np.errstate(all="ignore"):
        drawdown = -(1 - sim.equity / np.maximum.accumulate(sim.equity)) * 100
        value = sim.position * bars.close
        exposure = np.where(sim.equity > 0, value / sim.equity, 0.0)
    return {
        "kind": "backtest",
        "strategy": strategy,
        "symbol": bars.symbol,
        "params": json_safe(dict(params)),
        "metrics": json_safe(dict(metrics)),
        "equity_curve": {
            "time": bars.day_strings.tolist(),
            "equity": _floats(sim.equity),
            "drawdown_pct": _floats(drawdown + 0.0),
            "position": sim.position.tolist(),
            # The position's market value (units x Close) and its exposure (value / equity).
            "position_value": _floats(value),
            "exposure": _floats(exposure),
            # The simulated close per bar: what a chart's buy-and-hold benchmark is drawn from.
            "close": _floats(bars.close),
        },
        "trades": trades if trades is not None else trades_table(bars, sim),
        "bankrupt_at": None if sim.bankrupt_bar is None else str(bars.dates[sim.bankrupt_bar]),
    }


def sweep_detail(
    rows: Sequence[SweepRow],
    objective: str,
    total_grid: int,
    best: dict[str, Any],
    *,
    symbol: str = "",
    numbers: Sequence[int] | None = None,
) -> dict[str, Any]:
    """A sweep's full result: its objective, the grid's size and the admissible combinations' count,
    the table (`rows` ranked best first) and `best`, the best combination's `backtest_detail`.
    `numbers` (a job's chunk): each row's place among the admissible combinations of `symbol`
    in grid order, aligned with `rows`; each row then starts with its `symbol` and `combination`."""
    # Already JSON-safe: make_row keeps finite numbers or None, params come from the request. A
    # strategy without parameters (a universe's buy-and-hold) has no `params` column: Parquet
    # cannot store a struct without fields.
    table: list[dict[str, Any]] = [
        {**({"params": dict(r.params)} if r.params else {}), "objective": r.objective, **r.metrics} for r in rows
    ]
    if numbers is not None:
        table = [{"symbol": symbol, "combination": n, **row} for n, row in zip(numbers, table, strict=True)]
    return {
        "kind": "sweep",
        "objective": objective,
        "grid_size": total_grid,
        "combinations": len(rows),
        "table": table,
        "best": best,
    }
