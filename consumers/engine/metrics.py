"""Statistics of a backtest, computed as backtesting.py 0.6.6 computes them, under snake_case names."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from consumers.engine.kernel import Trade, trade_columns

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


def _period_days(days: FloatArray) -> float:
    """Median spacing of the last 100 bars, in (fractional) days (backtesting.py's `_data_period`)."""
    tail = days[-100:]
    if tail.shape[0] < 2:
        return _NAN
    spacing = np.sort(np.diff(tail))
    middle = spacing.shape[0] // 2
    # The median, as np.median takes it (the mean of the middle two of an even count).
    return float(spacing[middle] if spacing.shape[0] % 2 else (spacing[middle - 1] + spacing[middle]) / 2)


def _ceil_days(value: float, period: float) -> float | None:
    """Round a duration (days) up to the resolution of the bar spacing `period` (days), as
    backtesting.py ceils its Timedeltas to the period's resolution: the coarsest of a day, an
    hour, a minute and a second in which the spacing is whole."""
    if value != value:
        return None
    unit = 86_400
    if period == period:
        seconds = round(period * 86_400)
        unit = next(u for u in (86_400, 3_600, 60, 1) if seconds % u == 0)
    # In whole units, with float noise (a mean of whole days read as 13 - 1e-12) rounded off first.
    return math.ceil(round(value * 86_400 / unit, 9)) * unit / 86_400


# Calendar frequencies by median bar spacing in days: [lowest, below) -> resampling, periods a year.
# The bands hold every calendar's variation around the nominal spacing (business-month ends are
# 28-33 days apart, business-year ends 364-366); a spacing in none of them (fortnightly, irregular)
# is annualised by calendar time, 365.25 / spacing, without resampling.
FREQUENCY_BANDS: tuple[tuple[float, float, str, float], ...] = (
    (5.0, 10.0, "W", 52.0),
    (25.0, 35.0, "ME", 12.0),
    (80.0, 100.0, "QE", 4.0),
    (350.0, 380.0, "YE", 1.0),
)
# Trading days a year: stock exchanges (252) or every calendar day (365: markets open on weekends).
TRADING_DAYS, CALENDAR_DAYS = 252.0, 365.0


def annualisation(period: float, weekends: bool) -> tuple[str, float]:
    """How returns are annualised for bars `period` days apart (median spacing; NaN for one bar).

    Returns (resampling, periods a year): "D" for intraday and daily bars (below 2 days apart),
    resampled to the last equity of each calendar day, 252 periods a year or 365 if the bars
    include weekends (`weekends`: over 60% of the 2/7 share of weekend dates a 7-day calendar
    has, backtesting.py's test); then the bands of FREQUENCY_BANDS; else "bar" (no resampling)
    and 365.25 / period. Source: backtesting.py 0.6.6 `compute_stats`, which recognises weekly,
    monthly and yearly bars only at exactly 7, 31 and 365 whole days (see STRATEGIES.md).
    """
    if period != period or period < 2:
        return "D", CALENDAR_DAYS if weekends else TRADING_DAYS
    for low, high, freq, per_year in FREQUENCY_BANDS:
        if low <= period < high:
            return freq, per_year
    return "bar", 365.25 / period


def _resample_last(days: npt.NDArray[np.int64], equity: FloatArray, freq: str) -> FloatArray:
    """The last equity value in each calendar day, Sunday-ending week, month, quarter or year
    (`days`: each bar's calendar day since 1970-01-01); "bar" keeps every bar."""
    if freq == "bar":
        return equity
    if freq == "D":
        key = days
    elif freq == "W":
        key = days + (6 - (days + 3) % 7)  # 1970-01-01 was a Thursday (weekday 3)
    else:
        ymd = days.astype("datetime64[D]")
        months = ymd.astype("datetime64[M]").astype(np.int64)
        key = {"ME": months, "QE": months // 3}.get(freq, ymd.astype("datetime64[Y]").astype(np.int64))
    last = np.flatnonzero(np.append(key[1:] != key[:-1], True))
    return equity[last]


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
    """Every statistic of backtesting.py's `compute_stats` with risk-free rate 0 (see STRATEGIES.md).

    `dates` may be daily or finer (intraday): times are taken in fractional days since 1970.
    Where backtesting.py is wrong at an edge (bar frequency, a bankrupt run, an open drawdown of
    one bar) the documented deviation applies.
    """
    time = dates.astype("datetime64[s]").astype(np.int64) / 86400.0  # exact whole days for daily bars
    days = dates.astype("datetime64[D]").astype(np.int64)  # each bar's calendar day
    n = equity.shape[0]
    m: dict[str, object] = {}
    with np.errstate(all="ignore"):
        peak = np.maximum.accumulate(equity)
        dd = 1 - equity / peak

        columns = trade_columns(trades)
        entry_bar, exit_bar, pl, returns = columns.entry_bar, columns.exit_bar, columns.pnl, columns.returns
        trade_days = (time[exit_bar] - time[entry_bar]) if trades else np.empty(0)

        m["start"] = str(dates[0].astype("datetime64[D]"))
        m["end"] = str(dates[-1].astype("datetime64[D]"))
        span = float(time[-1] - time[0])
        duration: float = int(span) if span.is_integer() else span
        m["duration_days"] = duration

        held = np.bincount(entry_bar, minlength=n + 1) - np.bincount(exit_bar + 1, minlength=n + 1)
        m["exposure_pct"] = float((np.cumsum(held[:n]) > 0).mean() * 100)
        m["equity_final"] = float(equity[-1])
        m["equity_peak"] = float(equity.max())
        total_fees = 0.0
        for t in trades:  # summed in trade order, like backtesting.py
            total_fees += t.commission
        m["commissions"] = total_fees
        m["return_pct"] = float((equity[-1] - equity[0]) / equity[0] * 100)
        m["buy_hold_return_pct"] = float((close[-1] - close[warmup]) / close[warmup] * 100)

        period = _period_days(time)
        weekends = float((((days + 3) % 7) >= 5).mean()) > 2 / 7 * 0.6
        freq, annual = annualisation(period, weekends)
        sampled = _resample_last(days, equity, freq)
        day_returns = sampled[1:] / sampled[:-1] - 1
        day_returns = day_returns[~np.isnan(day_returns)]
        # numpy scalars: overflow and 0/0 give inf and NaN here, as in backtesting.py, not exceptions.
        g = np.float64(_geometric_mean(day_returns))
        ann = (1 + g) ** annual - 1
        m["return_ann_pct"] = float(ann * 100)
        variance = np.float64(_var(day_returns))
        if g > -1:
            vol = np.sqrt((variance + (1 + g) ** 2) ** annual - (1 + g) ** (2 * annual))
        else:
            # Bankrupt: the compounded formula collapses to var^(N/2) at 1 + g = 0 (a total loss
            # would read as almost no risk); the simple annualisation sqrt(var * N) instead.
            vol = np.sqrt(variance * annual)
        m["volatility_ann_pct"] = float(vol * 100)
        years = duration / 365.25
        m["cagr_pct"] = float(((equity[-1] / equity[0]) ** (1 / years) - 1) * 100) if years else _NAN
        m["sharpe"] = m["return_ann_pct"] / (m["volatility_ann_pct"] or _NAN)  # type: ignore[operator]
        downside = math.sqrt(_mean(np.clip(day_returns, -np.inf, 0) ** 2)) * math.sqrt(annual)
        m["sortino"] = float(ann / np.float64(downside))
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
        m["alpha_pct"] = m["return_pct"] - beta * m["buy_hold_return_pct"]  # type: ignore[operator]
        m["beta"] = beta
        m["max_drawdown_pct"] = max_dd * 100
        periods = _drawdown_periods(dd, time)
        if periods is None:
            # Equity never fell below its running peak: no drawdown period to average.
            m["avg_drawdown_pct"] = _NAN
            m["max_drawdown_duration_days"] = None
            m["avg_drawdown_duration_days"] = None
        else:
            durations, peaks = periods
            m["avg_drawdown_pct"] = -_mean(peaks) * 100
            m["max_drawdown_duration_days"] = _ceil_days(float(durations.max()), period)
            m["avg_drawdown_duration_days"] = _ceil_days(_mean(durations), period)

        k = len(trades)
        m["num_trades"] = k
        win_rate = float((pl > 0).mean()) if k else _NAN
        m["win_rate_pct"] = win_rate * 100
        m["best_trade_pct"] = float(returns.max()) * 100 if k else _NAN
        m["worst_trade_pct"] = float(returns.min()) * 100 if k else _NAN
        m["avg_trade_pct"] = _geometric_mean(returns) * 100
        m["max_trade_duration_days"] = _ceil_days(float(trade_days.max()), period) if k else None
        m["avg_trade_duration_days"] = _ceil_days(_mean(trade_days), period) if k else None
        m["profit_factor"] = float(returns[returns > 0].sum()) / (abs(float(returns[returns < 0].sum())) or _NAN)
        m["expectancy_pct"] = _mean(returns) * 100
        std = math.sqrt(_var(pl)) if k > 1 else _NAN
        m["sqn"] = math.sqrt(k) * _mean(pl) / (std or _NAN)
        m["kelly"] = float(np.float64(win_rate) - (1 - win_rate) / (np.float64(_mean(pl[pl > 0])) / -_mean(pl[pl < 0])))
    return m
