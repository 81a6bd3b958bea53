"""One symbol's bars as a run computes on them: the shared indicators, costs and scaling."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from consumers.engine.bars import Bars, DataProvenance, NotAdjustedReason
from consumers.engine.decisions import Signals, to_signals
from consumers.engine.indicators import IndicatorCache
from consumers.engine.interface import Registered
from consumers.engine.kernel import Costs
from consumers.engine.managed import ATR_PERIODS, Management, Manager, atr
from orchestrator.domain.spec import BacktestSpec

# Bars of an exact indicator replay (for near ties) per step: ~0.3-1 µs each, so ~10-40 ms.
EXACT_BARS_PER_STEP = 40_000


@dataclass(frozen=True)
class Market:
    """One symbol's bars in the requested date range, with what every combination shares: the
    indicator cache, the opens as a list (the kernel reads them one by one) and the provenance."""

    bars: Bars
    indicators: IndicatorCache
    open_list: list[float]
    provenance: DataProvenance

    @classmethod
    def of(
        cls, bars: Bars, not_adjusted_reason: NotAdjustedReason | None = None, provenance: DataProvenance | None = None
    ) -> Market:
        """The market of `bars` (a range of one symbol's prices, from `Bars.prices`); `provenance`
        defaults to that of `bars`. Raises DatasetError when `bars` is empty."""
        cache = IndicatorCache(
            bars.close,
            open=bars.open,
            high=bars.high,
            low=bars.low,
            volume=bars.volume,
            exact_bars_per_call=EXACT_BARS_PER_STEP,
        )
        return cls(bars, cache, bars.open.tolist(), provenance or bars.provenance(not_adjusted_reason))

    def manager(self, m: Management) -> Manager:
        """Position management over these bars (the lists and the ATR made once per market)."""
        lists = self.indicators.memo(
            ("engine:bar-lists",), lambda: (self.bars.high.tolist(), self.bars.low.tolist(), self.bars.close.tolist())
        )
        atr_list = None
        if m.trailing_atr is not None:
            b = self.bars
            atr_list = self.indicators.memo(("engine:atr", ATR_PERIODS), lambda: atr(b.high, b.low, b.close).tolist())
        high, low, close = lists
        return Manager(m, self.open_list, high, low, close, atr_list)


def scaled(bars: Bars, unit: float) -> Bars:
    """`bars` priced per `unit` of the asset: Open, High, Low, Close x unit, Volume / unit
    (backtesting.py's FractionalBacktest, operation for operation)."""
    return Bars(
        bars.symbol,
        bars.source,
        bars.dates,
        bars.open * unit,
        bars.high * unit,
        bars.low * unit,
        bars.close * unit,
        bars.volume / unit,
        None,
        bars.adjusted,
    )


def in_units(detail: dict[str, Any], unit: float) -> None:
    """A fractional run's detail back in units of the asset, in place: trade sizes and positions
    x unit, trade prices / unit; money (pnl, commission, equity, position value) is unchanged."""
    trades = detail["trades"]
    trades["size"] = [s * unit for s in trades["size"]]
    for col in ("entry_price", "exit_price"):
        trades[col] = [None if p is None else p / unit for p in trades[col]]
    curve = detail["equity_curve"]
    curve["position"] = [p * unit for p in curve["position"]]


def costs_of(spec: BacktestSpec) -> Costs:
    """The request's trading costs in the kernel's units (slippage from basis points to a fraction)."""
    return Costs(spec.commission, spec.commission_fixed, spec.spread, spec.slippage_bps / 10_000)


def signals_for(market: Market, strategy: Registered, params: Mapping[str, Any], long_only: bool) -> Signals:
    """The strategy's decisions after its warm-up, in the kernel's form. Raises IndicatorUnfinished
    while an exact indicator replay is still under way (call again to go on)."""
    return to_signals(strategy.decide(market.indicators, params, long_only), strategy.warmup(params) + 1)
