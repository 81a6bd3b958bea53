"""Parameter sweeps: the grid of combinations, which ones are admissible, and their ranking."""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import msgspec

from consumers.engine.constraints import Constraint
from consumers.engine.interface import Registered
from consumers.engine.registry import strategies
from consumers.engine.strategies import min_bars
from orchestrator.domain import ranking

MAX_COMBINATIONS = 10_000
# Metrics kept for every row of the sweep table, besides the objective.
TABLE_METRICS = (
    "return_pct",
    "sharpe",
    "sortino",
    "max_drawdown_pct",
    "num_trades",
    "win_rate_pct",
    "profit_factor",
    "sqn",
    "equity_final",
    "exposure_pct",
)

Combination = dict[str, int | float]


class SweepRow(msgspec.Struct, frozen=True, gc=False):
    """One combination's result. `objective` is None when it made no trade or the metric is
    undefined: backtesting.py's optimize() skips those runs, and so does the ranking.

    Not tracked by the garbage collector (`gc=False`): it holds only dicts of numbers, so it
    cannot be part of a reference cycle, and a sweep's 10,000 rows would otherwise be traversed
    by every full collection while the sweep runs."""

    params: dict[str, int | float]
    objective: float | None
    metrics: dict[str, float | int | None]


def grid_size(params: Mapping[str, Any]) -> int:
    """Combinations in the full grid: the product of the lengths of the list-valued parameters."""
    return math.prod(len(v) if isinstance(v, list) else 1 for v in params.values())


def grid(params: Mapping[str, Any]) -> Iterator[Combination]:
    """Every combination, in backtesting.py's order: itertools.product over params as given."""
    names = list(params)
    axes = [v if isinstance(v, list) else [v] for v in params.values()]
    return (dict(zip(names, values, strict=True)) for values in itertools.product(*axes))


def admissible(
    strategy: Registered, params: Mapping[str, Any], constraint: str | None, n_bars: int
) -> Iterator[Combination]:
    """Combinations that pass the constraint, the strategy's rules and have enough bars, in grid
    order. Lazy: whether there is any at all is known at the first one."""
    check = Constraint(constraint, list(params)) if constraint else None
    return (
        c
        for c in grid(params)
        if (check is None or check(c)) and not strategy.rules(c) and min_bars(strategy, c) <= n_bars
    )


@functools.lru_cache(maxsize=16)
def admissible_of(strategy: str, params: bytes, constraint: str | None, n_bars: int) -> tuple[Combination, ...]:
    """`admissible` for the installed strategy named `strategy` over `params` (msgspec JSON),
    kept: a worker plans a job and runs its chunks from one scan of the grid (each chunk copies
    its range). Raises StrategyMissing for a strategy not installed here."""
    return tuple(admissible(strategies().require(strategy), msgspec.json.decode(params), constraint, n_bars))


def objective_value(metrics: Mapping[str, Any], objective: str) -> float | None:
    """The objective's value as a float, or None when undefined: no trades, None or NaN
    (such a combination ranks after every one with a value)."""
    value = metrics.get(objective)
    if not metrics.get("num_trades") or value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def make_row(combo: Combination, metrics: Mapping[str, Any], objective: str) -> SweepRow:
    """The sweep table's row of one combination: its objective value and the objective and
    TABLE_METRICS, non-finite values as None."""
    kept = {k: _finite(metrics[k]) for k in (objective, *TABLE_METRICS)}
    return SweepRow(dict(combo), objective_value(metrics, objective), kept)


def bankrupt(row: SweepRow) -> bool:
    """The combination lost everything: its equity reached 0 (the stop-out)."""
    return ranking.bankrupt(row.metrics.get("equity_final"))


def ranked_order(rows: Sequence[SweepRow], minimise: bool = False) -> list[int]:
    """The positions of `rows` best first, by `orchestrator.domain.ranking.rank_key` (a stable
    sort: equal keys keep the order given)."""
    keys = [ranking.rank_key(r.objective, r.metrics.get("equity_final"), minimise) for r in rows]
    return sorted(range(len(rows)), key=keys.__getitem__)


def ranked(rows: Sequence[SweepRow], minimise: bool = False) -> list[SweepRow]:
    """Best first: the highest objective (the lowest when `minimise`); ties keep grid order (the
    first maximum wins, as with pandas idxmax); then rows without an objective value (as
    optimize() skips them); bankrupt rows come after all others, whatever the objective, so a
    run that lost everything never outranks one that did not (backtesting.py ranks them by the
    objective alone). The rule is `orchestrator.domain.ranking.rank_key`."""
    return [rows[i] for i in ranked_order(rows, minimise)]


def _finite(v: Any) -> float | int | None:
    if v is None:
        return None
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    f = float(v)
    return f if math.isfinite(f) else None
