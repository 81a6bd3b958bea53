"""The backtest request: what a researcher submits, as it travels in the `submitted` event."""

from __future__ import annotations

import datetime as dt
from typing import Literal

import msgspec

# A parameter is one value, or a list of values to sweep over.
ParamValue = int | float | list[int | float]


class Chunk(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    """The part of a job one chunk task computes, set by the worker that fans the job out (never
    by a user): the job's task id (`parent`), the chunk's place among the job's chunks (`index`,
    from 0) and the range [`start`, `stop`) of the admissible combinations of its `symbol` it
    computes, counted in grid order (streams.md, "Jobs")."""

    parent: str
    index: int
    start: int
    stop: int


# gc=False: never part of a reference cycle; see Event in events.py.
class BacktestSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True, gc=False):
    """One backtest, or one parameter sweep when any of `params` is a list.

    Field meanings and defaults follow backtesting.py's conventions (see README "Strategies").
    Structural checks (types, unknown fields) come from msgspec; the domain checks (known
    strategy and symbol, parameter rules, date order, non-negative costs) live in
    `consumers.engine.validation.check_spec`, shared by the API and the worker.
    """

    strategy: str
    # One symbol; or "" when `symbols` names a universe.
    symbol: str = ""
    # A universe: the symbols to run on (each with the whole grid), or "*" for every dataset.
    # A universe is a job: it fans out over the fleet (streams.md, "Jobs").
    symbols: list[str] | str | None = None
    params: dict[str, ParamValue] = {}
    start: dt.date | None = None
    end: dt.date | None = None
    cash: float = 10_000.0
    # A rate of the traded value, charged on entry and on exit.
    commission: float = 0.0
    # A fixed amount per order, added to the rate.
    commission_fixed: float = 0.0
    # A relative bid-ask spread, paid on entry (backtesting.py's `spread`).
    spread: float = 0.0
    slippage_bps: float = 0.0
    long_only: bool = False
    # Sweeps only: the metric to rank by, maximised ("-name" or direction "min": minimised), and
    # an optional constraint such as "fast < slow".
    objective: str = "sqn"
    direction: Literal["max", "min"] | None = None
    constraint: str | None = None
    # Jobs only: the fraction of chunks that may fail for good before the job fails (0: the job
    # fails at the first); below it the job completes with what succeeded, the rest listed.
    failure_tolerance: float = 0.0
    # Set by the system on the chunk tasks of a job; a request naming it is refused.
    chunk: Chunk | None = None
    # A time limit for this task in seconds (the worker's limit applies when unset or larger).
    timeout_s: float | None = None
    # Split- and dividend-adjusted prices (from the data's Adj Close column, when it has one).
    adjusted: bool = True
    # Position management (STRATEGIES.md, "Position management"); each may be a list to sweep.
    # Order size as backtesting.py's: unset all equity; in (0, 1) that fraction; >= 1 whole units.
    size: float | list[float] | None = None
    # backtesting.py's margin: the fraction of a position's value put up (leverage 1 / margin).
    margin: float | list[float] = 1.0
    # Stop-loss and take-profit, in percent of the entry price, on the losing and winning side.
    stop_loss_pct: float | list[float] | None = None
    take_profit_pct: float | list[float] | None = None
    # A stop trailing each close by this percent, or by this many ATRs (100 bars, TrailingStrategy's).
    trailing_stop_pct: float | list[float] | None = None
    trailing_atr: float | list[float] | None = None
    # A trade is closed at the next open once it has been held this many bars.
    max_bars: int | list[int] | None = None
    # Trade in multiples of this fraction of a unit (e.g. 1e-8: a satoshi), as backtesting.py's
    # lib.FractionalBacktest; unset: whole units.
    fractional_unit: float | None = None

    @property
    def management(self) -> dict[str, float | list[float] | int | list[int]]:
        """The position-management fields that are set (margin only when not 1), by name."""
        out: dict[str, float | list[float] | int | list[int]] = {}
        for name in MANAGEMENT_FIELDS:
            value = getattr(self, name)
            if value is not None and not (name == "margin" and value == 1.0):
                out[name] = value
        return out

    @property
    def metric(self) -> str:
        """The objective's metric name (without a leading "-")."""
        return self.objective[1:] if self.objective.startswith("-") else self.objective

    @property
    def minimise(self) -> bool:
        """True when the objective is minimised: a leading "-" or direction "min"."""
        return self.objective.startswith("-") or self.direction == "min"

    @property
    def is_sweep(self) -> bool:
        """True when any parameter or management field is a list: a grid of combinations."""
        return any(isinstance(v, list) for v in (*self.params.values(), *self.management.values()))


# The fields of position management, in the order a sweep's grid takes them (after `params`).
MANAGEMENT_FIELDS = (
    "size",
    "margin",
    "stop_loss_pct",
    "take_profit_pct",
    "trailing_stop_pct",
    "trailing_atr",
    "max_bars",
)
