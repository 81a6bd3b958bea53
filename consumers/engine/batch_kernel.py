"""A compiled sweep kernel: fills, equity and the table's statistics of many combinations at once.

The same fills as `kernel.advance` + `kernel.settle` and the same statistics as
`metrics.compute_metrics`, operation for operation in the same order, so every number equals the
interpreted path bit for bit (tests/engine/test_engine_fast_sweep.py). Compiled with numba, its
machine code cached on disk (`NUMBA_CACHE_DIR`, default `__pycache__` beside this file): a
process compiles once per machine and Python version, later processes load it in ~0.1 s.

Sums reproduce numpy's pairwise summation (`pairwise_sum` in numpy's `loops_utils.h.src`), which
`ndarray.sum()` uses, rather than a plain loop: the two differ in the last bits.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numba import njit

from consumers.engine.interface import FLAT, HOLD
from consumers.engine.kernel import FULL_EQUITY
from consumers.engine.limits import MAX_UNITS

# Per-combination outcome codes.
OK = 0
# The interpreted path must decide this combination: it went bankrupt (the stop-out, and its
# statistics' edge cases), an order exceeds what the engine represents (RepresentationError), or
# a decision code is not LONG, SHORT, FLAT or HOLD.
FALLBACK = 1

# Columns of the statistics the kernel returns (the rest need numpy's transcendental functions).
RETURN_PCT, EQUITY_FINAL, EXPOSURE_PCT, MAX_DRAWDOWN_PCT, NUM_TRADES, WIN_RATE_PCT, PROFIT_FACTOR, SQN = range(8)
N_STATS = 8

_PW_BLOCKSIZE = 128


@njit(cache=True, error_model="numpy")
def _block_sum(a: npt.NDArray[np.float64], lo: int, n: int) -> float:  # pragma: no cover (compiled)
    """numpy's pairwise_sum for n <= 128: a plain loop below 8, else 8 interleaved accumulators."""
    if n < 8:
        res = 0.0
        for i in range(n):
            res += a[lo + i]
        return res
    r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
    r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
    i = 8
    end = n - (n % 8)
    while i < end:
        r0 += a[lo + i]
        r1 += a[lo + i + 1]
        r2 += a[lo + i + 2]
        r3 += a[lo + i + 3]
        r4 += a[lo + i + 4]
        r5 += a[lo + i + 5]
        r6 += a[lo + i + 6]
        r7 += a[lo + i + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += a[lo + i]
        i += 1
    return float(res)


@njit(cache=True, error_model="numpy")
def pairwise_sum(a: npt.NDArray[np.float64], lo: int, n: int) -> float:  # pragma: no cover (compiled)
    """Sum of a[lo:lo+n] as numpy's float64 `add.reduce` computes it: above 128 values, the sum of
    the halves (the first a multiple of 8 long). Its recursion unrolled onto a stack (numba's
    on-disk cache cannot hold a recursive function)."""
    if n <= _PW_BLOCKSIZE:
        return _block_sum(a, lo, n)
    f_lo = np.empty(64, np.int64)
    f_n = np.empty(64, np.int64)
    f_phase = np.empty(64, np.int64)
    vals = np.empty(64, np.float64)
    sp, vp = 1, 0
    f_lo[0], f_n[0], f_phase[0] = lo, n, 0
    while sp > 0:
        top = sp - 1
        cl, cn = f_lo[top], f_n[top]
        if cn <= _PW_BLOCKSIZE:
            sp -= 1
            vals[vp] = _block_sum(a, cl, cn)
            vp += 1
            continue
        n2 = cn // 2
        n2 -= n2 % 8
        if f_phase[top] == 0:
            f_phase[top] = 1
            f_lo[sp], f_n[sp], f_phase[sp] = cl, n2, 0
            sp += 1
        elif f_phase[top] == 1:
            f_phase[top] = 2
            f_lo[sp], f_n[sp], f_phase[sp] = cl + n2, cn - n2, 0
            sp += 1
        else:
            sp -= 1
            vp -= 1
            vals[vp - 1] = vals[vp - 1] + vals[vp]
    return float(vals[0])


@njit(cache=True, error_model="numpy")
def _reduce_sum(a: npt.NDArray[np.float64], n: int) -> float:  # pragma: no cover (compiled)
    """`a[:n].sum()`: 0.0 plus the pairwise sum of all n (numpy adds into its identity)."""
    return 0.0 + pairwise_sum(a, 0, n)


@njit(cache=True, error_model="numpy")
def _floordiv(a: float, b: float) -> float:  # pragma: no cover (compiled)
    return a // b


@njit(cache=True, error_model="numpy")
def simulate(
    codes: npt.NDArray[np.int8],
    starts: npt.NDArray[np.int64],
    count: int,
    open_: npt.NDArray[np.float64],
    close: npt.NDArray[np.float64],
    commission: float,
    fixed: float,
    spread: float,
    slippage: float,
    cash0: float,
    sampled: npt.NDArray[np.int64],
    equity: npt.NDArray[np.float64],
    returns: npt.NDArray[np.float64],
    ratio: npt.NDArray[np.float64],
    stats: npt.NDArray[np.float64],
    status: npt.NDArray[np.int8],
) -> None:  # pragma: no cover (compiled)
    """Fill the decisions of `count` combinations and compute their trade and equity statistics.

    codes: (K, 3, n) int8, per combination the decisions when flat, long and short (interface
    codes); starts: (K,) first bar a decision may be taken (warm-up + 1); sampled: the bars whose
    equity the period returns compare (metrics._resample_last), m + 1 of them. Writes equity
    (K, n), the period returns (K, m) and 1 + each (K, m, for numpy's log), stats (K, N_STATS)
    and status (K,): OK, or FALLBACK where only the interpreted path is exact.
    """
    n = close.shape[0]
    every_bar = sampled.shape[0] == n
    t_size = np.empty(n + 1, np.int64)
    t_entry_bar = np.empty(n + 1, np.int64)
    t_exit_bar = np.empty(n + 1, np.int64)
    t_entry = np.empty(n + 1, np.float64)
    t_exit = np.empty(n + 1, np.float64)
    t_fee = np.empty(n + 1, np.float64)
    s_bar = np.empty(n + 2, np.int64)
    s_cash = np.empty(n + 2, np.float64)
    s_size = np.empty(n + 2, np.int64)
    s_entry = np.empty(n + 2, np.float64)
    pl = np.empty(n + 1, np.float64)
    rets = np.empty(n + 1, np.float64)
    buf = np.empty(n + 1, np.float64)
    for k in range(count):
        status[k] = OK
        cash, size, entry, entry_bar = cash0, 0, 0.0, -1
        nt = 0
        s_bar[0], s_cash[0], s_size[0], s_entry[0] = 0, cash0, 0, 0.0
        ns = 1
        last_action = HOLD
        bad = False
        for j in range(starts[k], n):
            st = 0 if size == 0 else (1 if size > 0 else 2)
            act = codes[k, st, j]
            if act == HOLD:
                continue
            if act != FLAT and act != 1 and act != -1:
                bad = True
                break
            if j >= n - 1:
                last_action = act
                break
            f = j + 1
            o = open_[f]
            if size != 0:
                price = o * (1.0 - slippage) if size > 0 else o * (1.0 + slippage)
                fee = fixed + abs(size) * price * commission
                cash += size * (price - entry) - fee
                t_size[nt], t_entry_bar[nt], t_exit_bar[nt] = size, entry_bar, f
                t_entry[nt], t_exit[nt] = entry, price
                t_fee[nt] = fee + (fixed + abs(size) * entry * commission)
                nt += 1
                size, entry, entry_bar = 0, 0.0, -1
            if act != FLAT:
                price = o * (1.0 + act * slippage)
                adjusted = price * (1 + (spread if act > 0 else -spread))
                with_fee = adjusted + (fixed + FULL_EQUITY * price * commission) / FULL_EQUITY
                margin = max(0.0, cash + 0.0)
                if margin == np.inf:
                    bad = True
                    break
                q = _floordiv(margin * 1.0 * FULL_EQUITY, with_fee)
                if q > MAX_UNITS:
                    bad = True
                    break
                units = int(q)
                if units != 0 and not (units * with_fee > margin * 1.0):
                    signed = units * act
                    cash -= fixed + abs(signed) * adjusted * commission
                    size, entry, entry_bar = signed, adjusted, f
            s_bar[ns], s_cash[ns], s_size[ns], s_entry[ns] = f, cash, size, entry
            ns += 1
        if bad:
            status[k] = FALLBACK
            continue
        # Settlement: equity per bar from the segments (as kernel._expand), then the stop-out.
        s_bar[ns] = n
        start = starts[k]
        for s in range(ns):
            sz = float(s_size[s])
            c, e = s_cash[s], s_entry[s]
            for b in range(s_bar[s], s_bar[s + 1]):
                v = c + (close[b] * sz - sz * e)
                equity[k, b] = v
                if v <= 0 and b >= start:
                    bad = True
        last = n - 1
        if not bad:
            if size != 0:
                price = open_[last] * (1.0 - slippage) if size > 0 else open_[last] * (1.0 + slippage)
                fee = fixed + abs(size) * price * commission
                cash += size * (price - entry) - fee
                t_size[nt], t_entry_bar[nt], t_exit_bar[nt] = size, entry_bar, last
                t_entry[nt], t_exit[nt] = entry, price
                t_fee[nt] = fee + (fixed + abs(size) * entry * commission)
                nt += 1
                size, entry, entry_bar = 0, 0.0, -1
            if last_action != HOLD and last_action != FLAT:
                act = last_action
                o = open_[last]
                price = o * (1.0 + act * slippage)
                adjusted = price * (1 + (spread if act > 0 else -spread))
                with_fee = adjusted + (fixed + FULL_EQUITY * price * commission) / FULL_EQUITY
                margin = max(0.0, cash + 0.0)
                q = _floordiv(margin * 1.0 * FULL_EQUITY, with_fee)
                if margin == np.inf or q > MAX_UNITS:
                    bad = True
                else:
                    units = int(q)
                    if units != 0 and not (units * with_fee > margin * 1.0):
                        signed = units * act
                        cash -= fixed + abs(signed) * adjusted * commission
                        size, entry = signed, adjusted
            sz = float(size)
            equity[k, last] = cash + (close[last] * sz - sz * entry)
            if equity[k, last] <= 0:
                bad = True
        if bad:
            status[k] = FALLBACK
            continue

        # Statistics (metrics.compute_metrics, the same operations).
        eq0, eqn = equity[k, 0], equity[k, last]
        stats[k, RETURN_PCT] = (eqn - eq0) / eq0 * 100
        eq = equity[k]
        if every_bar:  # daily or coarser bars: each bar is its own period (a loop that vectorises)
            for j in range(n - 1):
                r = eq[j + 1] / eq[j] - 1
                returns[k, j] = r
                ratio[k, j] = r + 1
        else:
            for j in range(sampled.shape[0] - 1):
                r = eq[sampled[j + 1]] / eq[sampled[j]] - 1
                returns[k, j] = r
                ratio[k, j] = r + 1
        stats[k, EQUITY_FINAL] = eqn
        # Bars some trade holds (entry to exit, both included): trades follow each other in time
        # and the next may enter on the bar the last one left, so count each bar once.
        exposed, covered = 0, -1
        for t in range(nt):
            lo = max(t_entry_bar[t], covered + 1)
            if t_exit_bar[t] >= lo:
                exposed += t_exit_bar[t] - lo + 1
                covered = t_exit_bar[t]
        stats[k, EXPOSURE_PCT] = exposed / n * 100
        # The deepest drawdown 1 - equity / running peak: for one peak the lowest equity gives it
        # (division and subtraction are monotonic in IEEE arithmetic), so one division per peak.
        peak = equity[k, 0]
        low = peak
        worst = -np.inf
        for b in range(1, n):
            v = equity[k, b]
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
        stats[k, MAX_DRAWDOWN_PCT] = -worst * 100
        stats[k, NUM_TRADES] = nt
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
        gains = _reduce_sum(buf, m)
        m = 0
        for t in range(nt):
            if rets[t] < 0:
                buf[m] = rets[t]
                m += 1
        losses = abs(_reduce_sum(buf, m))
        stats[k, PROFIT_FACTOR] = gains / (losses if losses != 0 else np.nan)
        mean_pl = _reduce_sum(pl, nt) / nt if nt else np.nan
        std = np.nan
        if nt > 1:
            avg = _reduce_sum(pl, nt) / nt
            for t in range(nt):
                d = avg - pl[t]
                buf[t] = d * d
            std = np.sqrt(_reduce_sum(buf, nt) / (nt - 1))
        stats[k, SQN] = np.sqrt(float(nt)) * mean_pl / (std if std != 0 else np.nan)


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
