"""Statistics of a backtest, computed as backtesting.py 0.6.6 computes them, under snake_case names."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import numpy as np
import numpy.typing as npt

from consumers.engine.kernel import Trade, TradeColumns, trade_columns
from consumers.engine.periods import annualisation, ceil_days, period_days, resample_last

FloatArray = npt.NDArray[np.float64]

# Our name -> backtesting.py's key (durations there are Timedeltas; ours are days).
BACKTESTING_PY_NAMES: dict[str, str] = {
    "start": "Start",
    "end": "End",
    "duration_days": "Duration",
    "exposure_pct": "Exposure Time [%]",
    "equity_final": "Equity Final [$]",
    "equity_peak": "Equity Peak [$]",
    "commissions": "Commissions [$]",
    "return_pct": "Return [%]",
    "buy_hold_return_pct": "Buy & Hold Return [%]",
    "return_ann_pct": "Return (Ann.) [%]",
    "volatility_ann_pct": "Volatility (Ann.) [%]",
    "cagr_pct": "CAGR [%]",
    "sharpe": "Sharpe Ratio",
    "sortino": "Sortino Ratio",
    "calmar": "Calmar Ratio",
    "alpha_pct": "Alpha [%]",
    "beta": "Beta",
    "max_drawdown_pct": "Max. Drawdown [%]",
    "avg_drawdown_pct": "Avg. Drawdown [%]",
    "max_drawdown_duration_days": "Max. Drawdown Duration",
    "avg_drawdown_duration_days": "Avg. Drawdown Duration",
    "num_trades": "# Trades",
    "win_rate_pct": "Win Rate [%]",
    "best_trade_pct": "Best Trade [%]",
    "worst_trade_pct": "Worst Trade [%]",
    "avg_trade_pct": "Avg. Trade [%]",
    "max_trade_duration_days": "Max. Trade Duration",
    "avg_trade_duration_days": "Avg. Trade Duration",
    "profit_factor": "Profit Factor",
    "expectancy_pct": "Expectancy [%]",
    "sqn": "SQN",
    "kelly": "Kelly Criterion",
}
METRIC_NAMES = tuple(BACKTESTING_PY_NAMES)
# Metrics a sweep may maximise: every numeric one.
OBJECTIVES = tuple(m for m in METRIC_NAMES if m not in ("start", "end"))

_NAN = float("nan")


def _finite(x: FloatArray) -> FloatArray:
    """`np.nan_to_num(x, nan=0.0)`, without its cost when there is nothing to replace."""
    return x if np.isfinite(x).all() else np.nan_to_num(x, nan=0.0)


def _geometric_mean(returns: FloatArray) -> float:
    """The geometric mean return: (prod(1 + r))^(1/n) - 1. A return of -100% or worse makes the
    compounded wealth 0, so the mean is -1 (backtesting.py returns 0 there: a deviation)."""
    r = _finite(returns) + 1
    if np.any(r <= 0):
        return -1.0
    return float(np.exp(np.log(r).sum() / (len(r) or _NAN)) - 1)


def _mean(x: FloatArray) -> float:
    return float(x.sum() / x.shape[0]) if x.shape[0] else _NAN


def _var(x: FloatArray, ddof: int = 1) -> float:
    n = x.shape[0]
    if n - ddof <= 0:
        return _NAN
    avg = x.sum() / n
    return float(((avg - x) ** 2).sum() / (n - ddof))


def _drawdown_periods(dd: FloatArray, days: FloatArray) -> tuple[FloatArray, FloatArray] | None:
    """Duration (days) and depth of each drawdown period, from its peak (a bar at the running
    peak) to recovery (the next such bar) or, still open, to the last bar; None if there is none.

    A closed period has at least one bar between peak and recovery; an open one at least one
    bar after its peak, the last bar itself (backtesting.py drops an open drawdown of one bar).
    """
    n = dd.shape[0]
    iloc = np.flatnonzero(dd == 0)  # sorted and unique already
    open_at_end = not iloc.size or iloc[-1] != n - 1
    if open_at_end:
        iloc = np.append(iloc, n - 1)
    prev, cur = iloc[:-1], iloc[1:]
    keep = cur > prev + 1
    if open_at_end and prev.size:
        keep[-1] = cur[-1] > prev[-1]
    prev, cur = prev[keep], cur[keep]
    if not prev.size:
        return None
    durations = (days[cur] - days[prev]).astype(np.float64)
    padded = np.append(dd, 0.0)
    bounds = np.empty(prev.size * 2, dtype=np.int64)
    bounds[0::2], bounds[1::2] = prev, cur + 1
    peaks = np.maximum.reduceat(padded, bounds)[0::2]
    return durations, peaks


def compute_metrics(
    dates: npt.NDArray[np.datetime64],
    close: FloatArray,
    equity: FloatArray,
    trades: Sequence[Trade],
    warmup: int,
) -> dict[str, object]:
    """Every statistic of backtesting.py's `compute_stats` with risk-free rate 0 (see STRATEGIES.md),
    by the names of BACKTESTING_PY_NAMES in its order: percentages x 100, durations in days,
    money in the account's currency; NaN (or None for a duration) where a statistic is undefined.

    `dates` (n,) may be daily or finer (intraday): times are taken in fractional days since 1970;
    `close` and `equity` are (n,) per bar; `warmup` bars precede the first decision (buy & hold
    starts after them). Where backtesting.py is wrong at an edge (bar frequency, a bankrupt run,
    an open drawdown of one bar) the documented deviation applies. Raises nothing on overflow or
    0/0: those give inf and NaN, as in backtesting.py.
    """
    time = dates.astype("datetime64[s]").astype(np.int64) / 86400.0  # exact whole days for daily bars
    days = dates.astype("datetime64[D]").astype(np.int64)  # each bar's calendar day
    m: dict[str, object] = {}
    with np.errstate(all="ignore"):
        dd = 1 - equity / np.maximum.accumulate(equity)
        columns = trade_columns(trades)
        duration = _overview(m, dates, time, close, equity, trades, columns, warmup)
        period = period_days(time)
        ann = _returns(m, days, equity, period, duration)
        _risk(m, close, equity, dd, ann)
        _drawdowns(m, dd, time, period)
        _trades(m, columns, time, period)
    return m


def _overview(
    m: dict[str, object],
    dates: npt.NDArray[np.datetime64],
    time: FloatArray,
    close: FloatArray,
    equity: FloatArray,
    trades: Sequence[Trade],
    columns: TradeColumns,
    warmup: int,
) -> float:
    """Into `m`: the dates, duration (days), exposure (% of bars in a trade), final and peak
    equity, commissions (summed in trade order, like backtesting.py), return % = (final -
    initial) / initial x 100, and buy & hold % from the close after the warm-up to the last.
    Returns the duration."""
    n = equity.shape[0]
    m["start"] = str(dates[0].astype("datetime64[D]"))
    m["end"] = str(dates[-1].astype("datetime64[D]"))
    span = float(time[-1] - time[0])
    duration: float = int(span) if span.is_integer() else span
    m["duration_days"] = duration
    held = np.bincount(columns.entry_bar, minlength=n + 1) - np.bincount(columns.exit_bar + 1, minlength=n + 1)
    m["exposure_pct"] = float((np.cumsum(held[:n]) > 0).mean() * 100)
    m["equity_final"] = float(equity[-1])
    m["equity_peak"] = float(equity.max())
    total_fees = 0.0
    for t in trades:  # summed in trade order, like backtesting.py
        total_fees += t.commission
    m["commissions"] = total_fees
    m["return_pct"] = float((equity[-1] - equity[0]) / equity[0] * 100)
    m["buy_hold_return_pct"] = float((close[-1] - close[warmup]) / close[warmup] * 100)
    return duration


def _returns(
    m: dict[str, object], days: npt.NDArray[np.int64], equity: FloatArray, period: float, duration: float
) -> np.float64:
    """Into `m`, from the period returns r (`annualisation`, `resample_last`) with N periods a
    year and g their geometric mean: annual return % = (1 + g)^N - 1; annual volatility % =
    √((var + (1 + g)²)^N - (1 + g)^(2N)) (the variance of a product of N independent returns),
    or √(var x N) once bankrupt; CAGR % = (final / initial)^(1 / years) - 1, years = duration /
    365.25; Sharpe = annual return / annual volatility; Sortino = annual return / (√mean(min(r,
    0)²) x √N). backtesting.py 0.6.6 `compute_stats`. Returns (1 + g)^N - 1."""
    weekends = float((((days + 3) % 7) >= 5).mean()) > 2 / 7 * 0.6
    freq, annual = annualisation(period, weekends)
    sampled = resample_last(days, equity, freq)
    day_returns = sampled[1:] / sampled[:-1] - 1
    day_returns = day_returns[~np.isnan(day_returns)]
    # numpy scalars: overflow and 0/0 give inf and NaN here, as in backtesting.py, not exceptions.
    g = np.float64(_geometric_mean(day_returns))
    ann: np.float64 = (1 + g) ** annual - 1
    ret_ann = m["return_ann_pct"] = float(ann * 100)
    variance = np.float64(_var(day_returns))
    if g > -1:
        vol = np.sqrt((variance + (1 + g) ** 2) ** annual - (1 + g) ** (2 * annual))
    else:
        # Bankrupt: the compounded formula collapses to var^(N/2) at 1 + g = 0 (a total loss
        # would read as almost no risk); the simple annualisation sqrt(var * N) instead.
        vol = np.sqrt(variance * annual)
    vol_ann = m["volatility_ann_pct"] = float(vol * 100)
    years = duration / 365.25
    m["cagr_pct"] = float(((equity[-1] / equity[0]) ** (1 / years) - 1) * 100) if years else _NAN
    m["sharpe"] = ret_ann / (vol_ann or _NAN)
    downside = math.sqrt(_mean(np.clip(day_returns, -np.inf, 0) ** 2)) * math.sqrt(annual)
    m["sortino"] = float(ann / np.float64(downside))
    return ann


def _risk(m: dict[str, object], close: FloatArray, equity: FloatArray, dd: FloatArray, ann: np.float64) -> None:
    """Into `m`: Calmar = annual return / |max drawdown|; beta = cov(log equity returns, log
    market returns) / var(log market returns) (np.cov's, its 1/(n-1) cancelling); alpha % =
    return % - beta x buy & hold % (risk-free rate 0); max drawdown % = -max(1 - equity / running
    peak) x 100. backtesting.py 0.6.6 `compute_stats`."""
    worst = float(dd.max())
    max_dd = -(worst if math.isfinite(worst) else float(np.nan_to_num(worst)))
    m["calmar"] = float(ann / (-max_dd or _NAN))
    eq_log = np.log(equity[1:] / equity[:-1])
    mk_log = np.log(close[1:] / close[:-1])
    beta = _NAN
    if eq_log.shape[0] > 1:
        # cov(eq, mk) / var(mk), as np.cov's matrix gives them (its 1/(n-1) cancels out).
        eq_dev = eq_log - eq_log.mean()
        mk_dev = mk_log - mk_log.mean()
        beta = float(np.dot(eq_dev, mk_dev) / np.dot(mk_dev, mk_dev))
    # Both floats, set by _overview.
    m["alpha_pct"] = cast(float, m["return_pct"]) - beta * cast(float, m["buy_hold_return_pct"])
    m["beta"] = beta
    m["max_drawdown_pct"] = max_dd * 100


def _drawdowns(m: dict[str, object], dd: FloatArray, time: FloatArray, period: float) -> None:
    """Into `m`: the mean depth % of the drawdown periods (`_drawdown_periods`) and their longest
    and mean duration in days, rounded up to the bar spacing's resolution (`ceil_days`)."""
    periods = _drawdown_periods(dd, time)
    if periods is None:
        # Equity never fell below its running peak: no drawdown period to average.
        m["avg_drawdown_pct"] = _NAN
        m["max_drawdown_duration_days"] = None
        m["avg_drawdown_duration_days"] = None
    else:
        durations, peaks = periods
        m["avg_drawdown_pct"] = -_mean(peaks) * 100
        m["max_drawdown_duration_days"] = ceil_days(float(durations.max()), period)
        m["avg_drawdown_duration_days"] = ceil_days(_mean(durations), period)


def _trades(m: dict[str, object], columns: TradeColumns, time: FloatArray, period: float) -> None:
    """Into `m`, over the closed trades' returns and P&L: their count, win rate %, best, worst and
    geometric mean return %, longest and mean duration (days), profit factor = Σ positive returns
    / |Σ negative returns|, expectancy % (mean return), SQN = √trades x mean P&L / std P&L (Van
    Tharp's System Quality Number, sample std) and Kelly = W - (1 - W) / (mean win / mean loss), W
    the win rate. backtesting.py 0.6.6 `compute_stats`."""
    pl, returns = columns.pnl, columns.returns
    k = pl.shape[0]
    trade_days = (time[columns.exit_bar] - time[columns.entry_bar]) if k else np.empty(0)
    m["num_trades"] = k
    win_rate = float((pl > 0).mean()) if k else _NAN
    m["win_rate_pct"] = win_rate * 100
    m["best_trade_pct"] = float(returns.max()) * 100 if k else _NAN
    m["worst_trade_pct"] = float(returns.min()) * 100 if k else _NAN
    m["avg_trade_pct"] = _geometric_mean(returns) * 100
    m["max_trade_duration_days"] = ceil_days(float(trade_days.max()), period) if k else None
    m["avg_trade_duration_days"] = ceil_days(_mean(trade_days), period) if k else None
    m["profit_factor"] = float(returns[returns > 0].sum()) / (abs(float(returns[returns < 0].sum())) or _NAN)
    m["expectancy_pct"] = _mean(returns) * 100
    std = math.sqrt(_var(pl)) if k > 1 else _NAN
    m["sqn"] = math.sqrt(k) * _mean(pl) / (std or _NAN)
    m["kelly"] = float(np.float64(win_rate) - (1 - win_rate) / (np.float64(_mean(pl[pl > 0])) / -_mean(pl[pl < 0])))
