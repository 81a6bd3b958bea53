"""The compiled sweep kernel's statistics (`batch_kernel.simulate` computes a row per combination
here), and the sums over period returns that `fast_sweep` finishes with numpy.

Each is `metrics.compute_metrics`' operation for operation, so every number equals the
interpreted path's bit for bit; sums are numpy's pairwise sums (`pairwise.py`).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numba import njit

from consumers.engine.pairwise import pairwise_sum, reduce_sum

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
# A combination's trades: units (negative: short), entry bar, exit bar, entry price, exit price,
# entry and exit commission; one row per trade, in the order they close.
Trades = tuple[Ints, Ints, Ints, Floats, Floats, Floats]

# Columns of the statistics the kernel returns (the rest need numpy's transcendental functions).
RETURN_PCT, EQUITY_FINAL, EXPOSURE_PCT, MAX_DRAWDOWN_PCT, NUM_TRADES, WIN_RATE_PCT, PROFIT_FACTOR, SQN = range(8)
N_STATS = 8


@njit(cache=True, error_model="numpy")
def _period_returns(k: int, eq: Floats, sampled: Ints, returns: Floats, ratio: Floats) -> None:  # pragma: no cover
    """Combination k's period returns r (equity at each sampled bar over the one before, - 1) and
    1 + r, as compute_metrics' `resample_last` then `pct_change`."""
    n = eq.shape[0]
    if sampled.shape[0] == n:  # daily or coarser bars: each bar is its own period (a loop that vectorises)
        for j in range(n - 1):
            r = eq[j + 1] / eq[j] - 1
            returns[k, j] = r
            ratio[k, j] = r + 1
    else:
        for j in range(sampled.shape[0] - 1):
            r = eq[sampled[j + 1]] / eq[sampled[j]] - 1
            returns[k, j] = r
            ratio[k, j] = r + 1


@njit(cache=True, error_model="numpy")
def _exposed_bars(nt: int, t_entry_bar: Ints, t_exit_bar: Ints) -> int:  # pragma: no cover (compiled)
    """Bars some trade holds (entry to exit, both included): trades follow each other in time and
    the next may enter on the bar the last one left, so each bar counts once."""
    exposed, covered = 0, -1
    for t in range(nt):
        lo = max(t_entry_bar[t], covered + 1)
        if t_exit_bar[t] >= lo:
            exposed += t_exit_bar[t] - lo + 1
            covered = t_exit_bar[t]
    return exposed


@njit(cache=True, error_model="numpy")
def _max_drawdown(eq: Floats) -> float:  # pragma: no cover (compiled)
    """The deepest drawdown 1 - equity / running peak, a fraction (backtesting.py's Max. Drawdown,
    `1 - equity / np.maximum.accumulate(equity)`). For one peak the lowest equity gives it
    (division and subtraction are monotonic in IEEE arithmetic), so one division per peak."""
    peak = eq[0]
    low = peak
    worst = -np.inf
    for b in range(1, eq.shape[0]):
        v = eq[b]
        if v > peak:
            dd = 1 - low / peak
            if dd > worst:
                worst = dd
            peak = v
            low = v
        elif v < low:
            low = v
    dd = 1 - low / peak
    if dd > worst:
        worst = dd
    return float(worst)


@njit(cache=True, error_model="numpy")
def _trade_stats(
    k: int,
    nt: int,
    stats: Floats,
    trade: Trades,
    scratch: tuple[Floats, Floats, Floats],
) -> None:  # pragma: no cover (compiled)
    """Win rate %, profit factor (Σ positive trade returns / |Σ negative ones|) and SQN (Van Tharp's
    System Quality Number, √trades x mean P&L / sample std of P&L), as backtesting.py's `_stats`."""
    t_size, _, _, t_entry, t_exit, t_fee = trade
    pl, rets, buf = scratch
    wins = 0
    for t in range(nt):
        units_f = float(t_size[t])
        pl[t] = units_f * (t_exit[t] - t_entry[t]) - t_fee[t]
        sign = 1.0 if units_f > 0 else -1.0
        rets[t] = sign * (t_exit[t] / t_entry[t] - 1) - t_fee[t] / (abs(units_f) * t_entry[t])
        if pl[t] > 0:
            wins += 1
    stats[k, WIN_RATE_PCT] = (wins / nt if nt else np.nan) * 100
    m = 0
    for t in range(nt):
        if rets[t] > 0:
            buf[m] = rets[t]
            m += 1
    gains = reduce_sum(buf, m)
    m = 0
    for t in range(nt):
        if rets[t] < 0:
            buf[m] = rets[t]
            m += 1
    losses = abs(reduce_sum(buf, m))
    stats[k, PROFIT_FACTOR] = gains / (losses if losses != 0 else np.nan)
    mean_pl = reduce_sum(pl, nt) / nt if nt else np.nan
    std = np.nan
    if nt > 1:
        avg = reduce_sum(pl, nt) / nt
        for t in range(nt):
            d = avg - pl[t]
            buf[t] = d * d
        std = np.sqrt(reduce_sum(buf, nt) / (nt - 1))
    stats[k, SQN] = np.sqrt(float(nt)) * mean_pl / (std if std != 0 else np.nan)


@njit(cache=True, error_model="numpy")
def statistics(
    k: int,
    nt: int,
    equity: Floats,
    sampled: Ints,
    returns: Floats,
    ratio: Floats,
    stats: Floats,
    trade: Trades,
    scratch: tuple[Floats, Floats, Floats],
) -> None:  # pragma: no cover (compiled)
    """Combination k's row of `stats` and its period returns (metrics.compute_metrics, the same
    operations): return % = (final - initial) / initial x 100, exposure % of bars, max drawdown %
    (negative), the trade count and `_trade_stats`."""
    n = equity.shape[1]
    last = n - 1
    eq0, eqn = equity[k, 0], equity[k, last]
    stats[k, RETURN_PCT] = (eqn - eq0) / eq0 * 100
    _period_returns(k, equity[k], sampled, returns, ratio)
    stats[k, EQUITY_FINAL] = eqn
    stats[k, EXPOSURE_PCT] = _exposed_bars(nt, trade[1], trade[2]) / n * 100
    stats[k, MAX_DRAWDOWN_PCT] = -_max_drawdown(equity[k]) * 100
    stats[k, NUM_TRADES] = nt
    _trade_stats(k, nt, stats, trade, scratch)


# Columns of period_stats' output.
LOG_SUM, RET_SUM, SQ_DEV_SUM, DOWN_SQ_SUM, COLLAPSED = range(5)


@njit(cache=True, error_model="numpy")
def period_stats(
    returns: npt.NDArray[np.float64], logs: npt.NDArray[np.float64], count: int, out: npt.NDArray[np.float64]
) -> None:  # pragma: no cover (compiled)
    """The sums compute_metrics takes over the period returns (K, m) and their log(1 + r) (K, m):
    Σ log, Σ r, Σ (mean - r)², Σ min(r, 0)², each numpy's pairwise sum, and whether some
    1 + r <= 0 (the geometric mean collapses to -1)."""
    m = returns.shape[1]
    dev = np.empty(max(m, 1), np.float64)
    down = np.empty(max(m, 1), np.float64)
    for k in range(count):
        row = returns[k]
        out[k, LOG_SUM] = 0.0 + pairwise_sum(logs[k], 0, m)
        total = 0.0 + pairwise_sum(row, 0, m)
        out[k, RET_SUM] = total
        avg = total / m
        collapsed = 0.0
        for j in range(m):
            r = row[j]
            d = avg - r
            dev[j] = d * d
            c = r if r < 0 else 0.0
            down[j] = c * c
            if r + 1 <= 0:
                collapsed = 1.0
        out[k, SQ_DEV_SUM] = 0.0 + pairwise_sum(dev, 0, m)
        out[k, DOWN_SQ_SUM] = 0.0 + pairwise_sum(down, 0, m)
        out[k, COLLAPSED] = collapsed
