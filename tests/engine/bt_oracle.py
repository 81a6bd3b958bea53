"""backtesting.py 0.6.6 as a test-only oracle (AGPL-3.0: never imported by engine code)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from backtesting import Backtest, Strategy
from backtesting.lib import FractionalBacktest, TrailingStrategy, crossover

from consumers.engine.datasets import Bars, Catalog
from consumers.engine.indicators import IndicatorCache
from consumers.engine.metrics import BACKTESTING_PY_NAMES
from orchestrator.domain.spec import BacktestSpec


def _sma(values: Any, n: int) -> Any:
    return pd.Series(values).rolling(n).mean()


class SmaCross(Strategy):
    """backtesting.py's SmaCross example, with an optional long-only switch."""

    fast = 10
    slow = 20
    long_only = False

    def init(self) -> None:
        self.sma1 = self.I(_sma, self.data.Close, self.fast)
        self.sma2 = self.I(_sma, self.data.Close, self.slow)

    def next(self) -> None:
        if crossover(self.sma1, self.sma2):
            self.position.close()
            self.buy()
        elif crossover(self.sma2, self.sma1):
            self.position.close()
            if not self.long_only:
                self.sell()


class _Levels(Strategy):
    long_only = False

    def act(self, go_long: bool, go_short: bool) -> None:
        if go_long:
            if not self.position.is_long:
                self.position.close()
                self.buy()
        elif go_short:
            if self.long_only:
                if self.position:
                    self.position.close()
            elif not self.position.is_short:
                self.position.close()
                self.sell()


class Momentum(_Levels):
    lookback = 20
    threshold = 0.0

    def init(self) -> None:
        close = pd.Series(np.asarray(self.data.Close, dtype=float))
        mom = (close / close.shift(self.lookback) - 1).values
        self.mom = self.I(lambda: mom)

    def next(self) -> None:
        self.act(self.mom[-1] > self.threshold, self.mom[-1] < -self.threshold)


class Rsi(_Levels):
    period = 14
    lower = 30.0
    upper = 70.0

    def init(self) -> None:
        d = pd.Series(np.asarray(self.data.Close, dtype=float)).diff()
        g = d.clip(lower=0).rolling(self.period).mean().values
        l_ = (-d).clip(lower=0).rolling(self.period).mean().values
        self.g = self.I(lambda: g)
        self.l = self.I(lambda: l_)

    def next(self) -> None:
        with np.errstate(all="ignore"):
            r = 100 * self.g[-1] / (self.g[-1] + self.l[-1])
        self.act(r < self.lower, r > self.upper)


class Bollinger(Strategy):
    window = 20
    k = 2.0
    long_only = False

    def init(self) -> None:
        c = np.asarray(self.data.Close, dtype=float)
        mid = pd.Series(c).rolling(self.window).mean().values
        # The standard deviation is the engine's own (documented) function; the mean is pandas'.
        sd = IndicatorCache(c).std(self.window)
        self.mid = self.I(lambda: mid)
        self.lower = self.I(lambda: mid - self.k * sd)
        self.upper = self.I(lambda: mid + self.k * sd)

    def next(self) -> None:
        c = self.data.Close[-1]
        if not self.position:
            if c < self.lower[-1]:
                self.buy()
            elif c > self.upper[-1] and not self.long_only:
                self.sell()
        elif self.position.is_long and c > self.mid[-1] or self.position.is_short and c < self.mid[-1]:
            self.position.close()


class BuyAndHold(Strategy):
    long_only = False

    def init(self) -> None:
        pass

    def next(self) -> None:
        if not self.position:
            self.buy()


ORACLES: dict[str, type[Strategy]] = {
    "sma_cross": SmaCross,
    "momentum": Momentum,
    "rsi": Rsi,
    "bollinger": Bollinger,
    "buy_and_hold": BuyAndHold,
}


def bars_of(catalog: Catalog, spec: BacktestSpec) -> Bars:
    """The bars the engine computes `spec` on (adjusted or not, in its date range): the oracle
    gets the very same prices."""
    bars, _ = catalog.load(spec.symbol).prices(spec.adjusted)
    return bars.between(spec.start, spec.end)


def frame(bars: Bars) -> pd.DataFrame:
    return pd.DataFrame(
        {"Open": bars.open, "High": bars.high, "Low": bars.low, "Close": bars.close, "Volume": bars.volume},
        index=pd.DatetimeIndex(bars.dates.astype("datetime64[ns]")),
    )


def managed(base: type[Strategy], spec: BacktestSpec, opens: np.ndarray) -> type[Strategy]:
    """`base` with the request's position management, as a backtesting.py user writes it: orders
    sized with `size=`, each entry a bracket order whose `sl`/`tp` lie the given percent from its
    fill price (the next bar's Open with the spread; the oracle reads that bar ahead, which the
    engine never does: it sets the levels at the fill), `lib.TrailingStrategy` for an ATR trail
    and the same rule by percent of Close, and `trade.close()` after `max_bars` bars, all before
    the strategy's own logic (TrailingStrategy's documented `super().next()` first)."""
    m = spec.management
    size = m.get("size")
    sl_pct, tp_pct = m.get("stop_loss_pct"), m.get("take_profit_pct")
    trail_pct, trail_atr, max_bars = m.get("trailing_stop_pct"), m.get("trailing_atr"), m.get("max_bars")
    last = len(opens) - 1

    class Managed(base, TrailingStrategy):  # type: ignore[valid-type,misc]
        def init(self) -> None:
            base.init(self)
            if trail_atr is not None:
                TrailingStrategy.init(self)
                self.set_trailing_sl(trail_atr)

        def next(self) -> None:
            if trail_atr is not None:
                TrailingStrategy.next(self)
            c = self.data.Close[-1]
            for trade in self.trades:
                if trail_pct is not None:
                    if trade.is_long:
                        trade.sl = max(trade.sl or -np.inf, c - c * trail_pct / 100)
                    else:
                        trade.sl = min(trade.sl or np.inf, c + c * trail_pct / 100)
                if max_bars is not None and len(self.data) - 1 - trade.entry_bar + 1 >= max_bars:
                    trade.close()
            base.next(self)

        def _bracket(self, direction: int) -> dict[str, Any]:
            entry = opens[min(len(self.data), last)] * (1 + math.copysign(spec.spread, direction))
            kw: dict[str, Any] = {} if size is None else {"size": size}
            if sl_pct is not None:
                kw["sl"] = entry * (1 - sl_pct / 100) if direction > 0 else entry * (1 + sl_pct / 100)
            if tp_pct is not None:
                kw["tp"] = entry * (1 + tp_pct / 100) if direction > 0 else entry * (1 - tp_pct / 100)
            return kw

        def buy(self, **_: Any) -> Any:
            return Strategy.buy(self, **self._bracket(1))

        def sell(self, **_: Any) -> Any:
            return Strategy.sell(self, **self._bracket(-1))

    return Managed


def backtest(bars: Bars, spec: BacktestSpec) -> Backtest:
    commission: Any = (spec.commission_fixed, spec.commission) if spec.commission_fixed else spec.commission
    strategy = ORACLES[spec.strategy]
    if spec.management:
        strategy = managed(strategy, spec, bars.open * (spec.fractional_unit or 1.0))
    kind: Any = Backtest
    extra: dict[str, Any] = {}
    if spec.fractional_unit is not None:
        kind, extra = FractionalBacktest, {"fractional_unit": spec.fractional_unit}
    return kind(
        frame(bars),
        strategy,
        cash=spec.cash,
        commission=commission,
        spread=spec.spread,
        margin=spec.margin,
        finalize_trades=True,
        **extra,
    )


def run(bars: Bars, spec: BacktestSpec) -> pd.Series:
    # The oracle warns about prices above cash, cancelled orders and the like; only here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return backtest(bars, spec).run(**spec.params, long_only=spec.long_only)


def write_csv(df: pd.DataFrame, path: Path) -> None:
    out = df[["Open", "High", "Low", "Close", "Volume"]].copy()
    out.index = out.index.strftime("%Y-%m-%d")
    out.index.name = "Date"
    # pandas writes the shortest repr, which float() reads back exactly.
    out.to_csv(path)


def close_enough(ours: Any, theirs: Any, rel: float = 1e-9) -> bool:
    if isinstance(theirs, pd.Timedelta):
        return ours is not None and math.isclose(ours, theirs / pd.Timedelta(days=1))
    if isinstance(theirs, pd.Timestamp):
        return bool(ours == str(theirs.date()))
    if theirs is None:  # backtesting.py leaves out zero commissions
        return True
    t = float(theirs)
    if not math.isfinite(t):
        return ours is None
    return ours is not None and math.isclose(float(ours), t, rel_tol=rel, abs_tol=1e-9)


# Where the engine deviates from backtesting.py on purpose (STRATEGIES.md, "Deviations"), by edge:
# only these metrics may differ, and only on data that has the edge.
BANKRUPT_DEVIATIONS = frozenset(
    {"return_ann_pct", "volatility_ann_pct", "sharpe", "sortino", "calmar", "avg_trade_pct"}
)
OPEN_DRAWDOWN_DEVIATIONS = frozenset({"avg_drawdown_pct", "max_drawdown_duration_days", "avg_drawdown_duration_days"})
ANNUALISED = frozenset({"return_ann_pct", "volatility_ann_pct", "sharpe", "sortino", "calmar"})


def allowed_deviations(detail: dict[str, Any]) -> frozenset[str]:
    """The metrics that may differ from backtesting.py's on this result, given its edges."""
    allowed: frozenset[str] = frozenset()
    if detail["bankrupt_at"] is not None:
        allowed |= BANKRUPT_DEVIATIONS
    dd = detail["equity_curve"]["drawdown_pct"]
    if len(dd) > 1 and dd[-1] != 0 and dd[-2] == 0:  # a drawdown opened on the last bar
        allowed |= OPEN_DRAWDOWN_DEVIATIONS
    return allowed


def metric_mismatches(ours: dict[str, Any], stats: pd.Series) -> dict[str, tuple[Any, Any]]:
    out = {}
    for k, v in BACKTESTING_PY_NAMES.items():
        theirs = stats.get(v)
        if k.endswith("duration_days") and not isinstance(theirs, pd.Timedelta | pd.Timestamp):
            # With no finished drawdown backtesting.py puts a drawdown fraction here, not a
            # duration; the engine reports None (documented in STRATEGIES.md).
            if ours.get(k) is not None:
                out[k] = (ours.get(k), theirs)
        elif not close_enough(ours.get(k), theirs):
            out[k] = (ours.get(k), theirs)
    return out
