"""The backtest request: what a researcher submits, as it travels in the `submitted` event."""

from __future__ import annotations

import datetime as dt

import msgspec

# A parameter is one value, or a list of values to sweep over.
ParamValue = int | float | list[int | float]


# gc=False: never part of a reference cycle; see Event in events.py.
class BacktestSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True, gc=False):
    """One backtest, or one parameter sweep when any of `params` is a list.

    Field meanings and defaults follow backtesting.py's conventions (see README "Strategies").
    Structural checks (types, unknown fields) come from msgspec; the domain checks (known
    strategy and symbol, parameter rules, date order, non-negative costs) live in
    `consumers.engine.validation.check_spec`, shared by the API and the worker.
    """

    strategy: str
    symbol: str
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
    # Sweeps only: the metric to maximise, and an optional constraint such as "fast < slow".
    objective: str = "sqn"
    constraint: str | None = None
    # A time limit for this task in seconds (the worker's limit applies when unset or larger).
    timeout_s: float | None = None
    # Split- and dividend-adjusted prices (from the data's Adj Close column, when it has one).
    adjusted: bool = True

    @property
    def is_sweep(self) -> bool:
        return any(isinstance(v, list) for v in self.params.values())
