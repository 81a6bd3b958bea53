"""The sweep's fast path: a batch of combinations through the compiled kernel, table statistics only.

A sweep keeps, for each combination, its objective and the table's metrics (`sweep.TABLE_METRICS`);
only the best row needs every statistic, and the runner computes those on the interpreted path
as before. Here each combination's `Decisions` come from the strategy's own `decide` (built-in
or plugin alike), the fills and the trade and drawdown statistics from `batch_kernel.simulate`,
and the statistics of daily returns from numpy over the whole batch at once (numpy's log and exp
are its own SIMD code on some machines: computing them with numpy keeps them bit-identical).

A combination takes the interpreted path instead (`FastSweep.step` stops before it) when its
decisions carry stop or target prices (position management), when it goes bankrupt, or when an
order exceeds what the engine represents; a whole sweep does when it has position management or
an objective outside FAST_OBJECTIVES (see STRATEGIES.md, "Sweep speed").
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from consumers.engine import batch_kernel as bk
from consumers.engine import batch_stats as bs
from consumers.engine.indicators import IndicatorCache, IndicatorUnfinished
from consumers.engine.interface import Registered
from consumers.engine.kernel import Costs
from consumers.engine.periods import annualisation, period_days, resample_last
from consumers.engine.sweep import TABLE_METRICS, SweepRow, make_row

# Objectives the fast path computes for every row; another objective takes the interpreted path.
FAST_OBJECTIVES = frozenset((*TABLE_METRICS, "return_ann_pct", "volatility_ann_pct"))
# Combinations per kernel call: ~40 µs each, so a batch is a few ms and a chunk stays bounded.
BATCH = 64


def eligible(objective: str, management: Mapping[str, Any]) -> bool:
    """Whether a sweep with this objective and position management can take the fast path."""
    return objective in FAST_OBJECTIVES and not management


def _annualised(
    collapsed: bool, geo: float, sq: float, down: float, m: int, annual: float
) -> tuple[float, float, float]:
    """Annual return %, volatility % and Sortino from the batch's sums, with compute_metrics'
    operations in its order on Python floats (the same IEEE operations and the same C `pow` as
    numpy's scalars, without their cost); raises where numpy's scalars would give inf or NaN."""
    g = -1.0 if collapsed else geo
    ann = (1 + g) ** annual - 1
    ret_ann = ann * 100
    variance = sq / (m - 1) if m - 1 > 0 else math.nan
    if g > -1:
        vol = math.sqrt((variance + (1 + g) ** 2) ** annual - (1 + g) ** (2 * annual))
    else:
        vol = math.sqrt(variance * annual)
    downside = math.sqrt(down / m if m else math.nan) * math.sqrt(annual)
    return ret_ann, vol * 100, ann / downside


def _annualised_numpy(
    collapsed: bool, geo: float, sq: float, down: float, m: int, annual: float
) -> tuple[float, float, float]:
    """`_annualised` on numpy scalars, exactly as compute_metrics: overflow gives inf, 0/0 NaN."""
    with np.errstate(all="ignore"):
        g = np.float64(-1.0 if collapsed else geo)
        ann = (1 + g) ** annual - 1
        variance = np.float64(sq / (m - 1) if m - 1 > 0 else math.nan)
        if g > -1:
            vol = np.sqrt((variance + (1 + g) ** 2) ** annual - (1 + g) ** (2 * annual))
        else:
            vol = np.sqrt(variance * annual)
        downside = math.sqrt(down / m if m else math.nan) * math.sqrt(annual)
        return float(ann * 100), float(vol * 100), float(ann / np.float64(downside))


class FastSweep:
    """Rows of a sweep's combinations, a batch at a time, equal to the interpreted path's rows."""

    def __init__(
        self,
        data: IndicatorCache,
        dates: npt.NDArray[np.datetime64],
        strategy: Registered,
        costs: Costs,
        long_only: bool,
        cash: float,
        objective: str,
    ) -> None:
        self.data, self.strategy, self.costs = data, strategy, costs
        self.long_only, self.cash, self.objective = long_only, cash, objective
        self.open = np.ascontiguousarray(data.open, dtype=np.float64)
        self.close = np.ascontiguousarray(data.close, dtype=np.float64)
        n = self.close.shape[0]
        # What compute_metrics derives from the dates, the same for every combination.
        time = dates.astype("datetime64[s]").astype(np.int64) / 86400.0
        days = dates.astype("datetime64[D]").astype(np.int64)
        weekends = float((((days + 3) % 7) >= 5).mean()) > 2 / 7 * 0.6
        freq, self.annual = annualisation(period_days(time), weekends)
        self.sampled = resample_last(days, np.arange(n, dtype=np.float64), freq).astype(
            np.int64
        )  # the bars whose equity is sampled
        m = max(self.sampled.shape[0] - 1, 0)
        self.returns = np.empty((BATCH, m), dtype=np.float64)
        self.ratio = np.empty((BATCH, m), dtype=np.float64)
        self.logs = np.empty((BATCH, m), dtype=np.float64)
        self.period = np.empty((BATCH, 5), dtype=np.float64)
        self.codes = np.empty((BATCH, 3, n), dtype=np.int8)
        self.starts = np.empty(BATCH, dtype=np.int64)
        self.equity = np.empty((BATCH, n), dtype=np.float64)
        self.stats = np.empty((BATCH, bs.N_STATS), dtype=np.float64)
        self.status = np.empty(BATCH, dtype=np.int8)
        self.slow_at = -1  # index of a combination found to need the interpreted path

    def step(self, combos: Sequence[Mapping[str, Any]], first: int) -> list[SweepRow] | None:
        """Rows for up to BATCH combinations from `combos[first]` on, in order. None: combos[first]
        takes the interpreted path. An empty list: an exact indicator replay advanced by a bounded
        step (IndicatorUnfinished) and the next call goes on."""
        if first == self.slow_at:
            return None
        k = 0
        todo = combos[first : first + BATCH]
        unfinished = False
        for combo in todo:
            try:
                d, warmup = self.strategy.decide_with_warmup(self.data, combo, self.long_only)
            except IndicatorUnfinished:
                unfinished = True
                break
            if d.stop_price is not None or d.target_price is not None:
                break  # per-entry levels: position management's path
            self.codes[k, 0], self.codes[k, 1], self.codes[k, 2] = d.flat, d.long, d.short
            self.starts[k] = warmup + 1
            k += 1
        if k == 0:
            if unfinished:
                return []
            self.slow_at = first
            return None
        c = self.costs
        bk.simulate(
            self.codes,
            self.starts,
            k,
            self.open,
            self.close,
            c.commission,
            c.commission_fixed,
            c.spread,
            c.slippage,
            self.cash,
            self.sampled,
            self.equity,
            self.returns,
            self.ratio,
            self.stats,
            self.status,
        )
        fallback = np.flatnonzero(self.status[:k] != bk.OK)
        if fallback.size:
            k = int(fallback[0])
            self.slow_at = first + k
            if k == 0:
                return None
        return self._rows(todo[:k], k)

    def _rows(self, combos: Sequence[Mapping[str, Any]], k: int) -> list[SweepRow]:
        m = self.returns.shape[1]
        with np.errstate(all="ignore"):
            # numpy's own log and exp (SIMD on some machines), as compute_metrics uses them.
            np.log(self.ratio[:k], out=self.logs[:k])
            bs.period_stats(self.returns, self.logs, k, self.period)
            p = self.period[:k]
            geo = np.exp(p[:, bs.LOG_SUM] / (m or math.nan)) - 1
        # Python floats from here on: one conversion per batch, not one per number.
        collapsed, sq, down = p[:, bs.COLLAPSED].tolist(), p[:, bs.SQ_DEV_SUM].tolist(), p[:, bs.DOWN_SQ_SUM].tolist()
        geos = geo.tolist()
        stats = self.stats[:k].tolist()
        annual = self.annual
        objective = self.objective
        rows = []
        for i in range(k):
            s = stats[i]
            c, g, q, d = bool(collapsed[i]), geos[i], sq[i], down[i]
            try:
                ret_ann, vol_pct, sortino = _annualised(c, g, q, d, m, annual)
            except (OverflowError, ZeroDivisionError, ValueError):
                # Python floats raise where numpy scalars give inf or NaN: numpy's arithmetic then.
                ret_ann, vol_pct, sortino = _annualised_numpy(c, g, q, d, m, annual)
            metrics = {
                "return_pct": s[bs.RETURN_PCT],
                "return_ann_pct": ret_ann,
                "volatility_ann_pct": vol_pct,
                "sharpe": ret_ann / (vol_pct or math.nan),
                "sortino": sortino,
                "max_drawdown_pct": s[bs.MAX_DRAWDOWN_PCT],
                "num_trades": int(s[bs.NUM_TRADES]),
                "win_rate_pct": s[bs.WIN_RATE_PCT],
                "profit_factor": s[bs.PROFIT_FACTOR],
                "sqn": s[bs.SQN],
                "equity_final": s[bs.EQUITY_FINAL],
                "exposure_pct": s[bs.EXPOSURE_PCT],
            }
            rows.append(make_row(dict(combos[i]), metrics, objective))
        return rows


def warm_up() -> float:
    """Load the compiled kernel from numba's disk cache (or compile it: ~5 s on first use after an
    install) on a tiny input; seconds taken. A worker may call it at start so its first sweep's
    first chunk does not pay for it (a chunk cannot be cut inside a compile)."""
    t0 = time.perf_counter()
    n = 8
    prices = np.linspace(100.0, 107.0, n)
    codes = np.zeros((1, 3, n), dtype=np.int8)  # FLAT throughout: no trade
    equity, returns, ratio = np.empty((1, n)), np.empty((1, n - 1)), np.empty((1, n - 1))
    stats, status, period = np.empty((1, bs.N_STATS)), np.empty(1, np.int8), np.empty((1, 5))
    starts, sampled = np.ones(1, np.int64), np.arange(n, dtype=np.int64)
    costs = (0.0, 0.0, 0.0, 0.0, 1e4)
    bk.simulate(codes, starts, 1, prices, prices, *costs, sampled, equity, returns, ratio, stats, status)
    bs.period_stats(returns, ratio, 1, period)
    return time.perf_counter() - t0
