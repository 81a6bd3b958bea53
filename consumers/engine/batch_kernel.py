"""A compiled sweep kernel: fills, equity and the table's statistics of many combinations at once.

The same fills as `kernel.advance` + `kernel.settle` and the same statistics as
`metrics.compute_metrics`, operation for operation in the same order, so every number equals the
interpreted path bit for bit (tests/engine/test_engine_fast_sweep.py). Compiled with numba, its
machine code cached on disk (`NUMBA_CACHE_DIR`, default `__pycache__` beside this file): a
process compiles once per machine and Python version, later processes load it in ~0.1 s.

Sums reproduce numpy's pairwise summation (`pairwise.py`), which `ndarray.sum()` uses, rather
than a plain loop: the two differ in the last bits.

Per combination, `simulate` fills its decisions (`_fill`), settles the last bar and rebuilds the
equity curve (`_settle`), then computes the statistics (`batch_stats.statistics`). A trade is held in the
`t_*` arrays (units, entry and exit bar, entry and exit price, both commissions) and the account
after each fill in the `s_*` arrays (bar, cash, units, entry price), as `kernel.Segment`.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numba import njit

from consumers.engine.batch_stats import Floats, Ints, Trades, statistics
from consumers.engine.decisions import FLAT, HOLD
from consumers.engine.kernel import FULL_EQUITY
from consumers.engine.limits import MAX_UNITS

# Per-combination outcome codes.
OK = 0
# The interpreted path must decide this combination: it went bankrupt (the stop-out, and its
# statistics' edge cases), an order exceeds what the engine represents (RepresentationError), or
# a decision code is not LONG, SHORT, FLAT or HOLD.
FALLBACK = 1

# The account after each fill (as kernel.Segment): from which bar, cash, units held, entry price.
Segments = tuple[Ints, Floats, Ints, Floats]
# `_fill`'s answer: (represented, trades, segments, cash, units, entry price, entry bar, last decision).
Fill = tuple[bool, int, int, float, int, float, int, int]


@njit(cache=True, error_model="numpy")
def _floordiv(a: float, b: float) -> float:  # pragma: no cover (compiled)
    return a // b


@njit(cache=True, error_model="numpy")
def _close(
    size: int,
    entry: float,
    entry_bar: int,
    bar: int,
    o: float,
    cash: float,
    fixed: float,
    commission: float,
    slippage: float,
    nt: int,
    trade: Trades,
) -> tuple[float, int]:  # pragma: no cover (compiled)
    """Close `size` units at the open `o` of `bar` as trade `nt`: the cash after it and nt + 1."""
    t_size, t_entry_bar, t_exit_bar, t_entry, t_exit, t_fee = trade
    price = o * (1.0 - slippage) if size > 0 else o * (1.0 + slippage)
    fee = fixed + abs(size) * price * commission
    cash += size * (price - entry) - fee
    t_size[nt], t_entry_bar[nt], t_exit_bar[nt] = size, entry_bar, bar
    t_entry[nt], t_exit[nt] = entry, price
    t_fee[nt] = fee + (fixed + abs(size) * entry * commission)
    return cash, nt + 1


@njit(cache=True, error_model="numpy")
def _open(
    act: int, o: float, cash: float, fixed: float, commission: float, spread: float, slippage: float
) -> tuple[bool, float, int, float]:  # pragma: no cover (compiled)
    """Enter with all the equity (`act` 1 long, -1 short) at the open `o`, from a flat account:
    (whether the engine represents the order, the cash after it, units held, entry price). No
    units (too little cash) leaves the account flat."""
    price = o * (1.0 + act * slippage)
    adjusted = price * (1 + (spread if act > 0 else -spread))
    with_fee = adjusted + (fixed + FULL_EQUITY * price * commission) / FULL_EQUITY
    margin = max(0.0, cash + 0.0)
    if margin == np.inf:
        return False, cash, 0, 0.0
    q = _floordiv(margin * 1.0 * FULL_EQUITY, with_fee)
    if q > MAX_UNITS:
        return False, cash, 0, 0.0
    units = int(q)
    if units != 0 and not (units * with_fee > margin * 1.0):
        signed = units * act
        cash -= fixed + abs(signed) * adjusted * commission
        return True, cash, signed, adjusted
    return True, cash, 0, 0.0


@njit(cache=True, error_model="numpy")
def _fill(
    codes: npt.NDArray[np.int8],
    k: int,
    start: int,
    open_: Floats,
    costs: tuple[float, float, float, float],
    cash0: float,
    trade: Trades,
    segment: Segments,
) -> Fill:  # pragma: no cover (compiled)
    """Fill combination k's decisions from bar `start` on, at the next bar's open (as
    `kernel.advance`); a decision on the last bar is left to `_settle`. Returns (represented: False
    sends the combination to the interpreted path, trades, segments, cash, units held, entry price,
    entry bar, the last bar's decision or HOLD)."""
    commission, fixed, spread, slippage = costs
    s_bar, s_cash, s_size, s_entry = segment
    n = open_.shape[0]
    cash, size, entry, entry_bar = cash0, 0, 0.0, -1
    nt = 0
    s_bar[0], s_cash[0], s_size[0], s_entry[0] = 0, cash0, 0, 0.0
    ns = 1
    last_action = HOLD
    for j in range(start, n):
        st = 0 if size == 0 else (1 if size > 0 else 2)
        act = codes[k, st, j]
        if act == HOLD:
            continue
        if act != FLAT and act != 1 and act != -1:
            return False, nt, ns, cash, size, entry, entry_bar, last_action
        if j >= n - 1:
            last_action = act
            break
        f = j + 1
        o = open_[f]
        if size != 0:
            cash, nt = _close(size, entry, entry_bar, f, o, cash, fixed, commission, slippage, nt, trade)
            size, entry, entry_bar = 0, 0.0, -1
        if act != FLAT:
            ok, cash, size, entry = _open(act, o, cash, fixed, commission, spread, slippage)
            if not ok:
                return False, nt, ns, cash, size, entry, entry_bar, last_action
            if size != 0:
                entry_bar = f
        s_bar[ns], s_cash[ns], s_size[ns], s_entry[ns] = f, cash, size, entry
        ns += 1
    return True, nt, ns, cash, size, entry, entry_bar, last_action


@njit(cache=True, error_model="numpy")
def _expand(
    k: int, start: int, ns: int, close: Floats, equity: Floats, segment: Segments
) -> bool:  # pragma: no cover (compiled)
    """Combination k's equity per bar from its `ns` segments (as kernel._expand); False when it
    is at or below zero on some bar from `start` on (the stop-out: the interpreted path's)."""
    s_bar, s_cash, s_size, s_entry = segment
    s_bar[ns] = close.shape[0]
    solvent = True
    for s in range(ns):
        sz = float(s_size[s])
        c, e = s_cash[s], s_entry[s]
        for b in range(s_bar[s], s_bar[s + 1]):
            v = c + (close[b] * sz - sz * e)
            equity[k, b] = v
            if v <= 0 and b >= start:
                solvent = False
    return solvent


@njit(cache=True, error_model="numpy")
def _settle(
    k: int,
    fill: Fill,
    start: int,
    open_: Floats,
    close: Floats,
    costs: tuple[float, float, float, float],
    equity: Floats,
    trade: Trades,
    segment: Segments,
) -> tuple[bool, int]:  # pragma: no cover (compiled)
    """After `_fill` (its result `fill`): the equity curve, then on the last bar the open trade
    closed and the last decision's entry, as `kernel.settle`. Returns (False: the interpreted
    path decides, trades)."""
    commission, fixed, spread, slippage = costs
    _, nt, ns, cash, size, entry, entry_bar, last_action = fill
    if not _expand(k, start, ns, close, equity, segment):
        return False, nt
    last = close.shape[0] - 1
    if size != 0:
        cash, nt = _close(size, entry, entry_bar, last, open_[last], cash, fixed, commission, slippage, nt, trade)
        size, entry = 0, 0.0
    if last_action != HOLD and last_action != FLAT:
        ok, cash, size, entry = _open(last_action, open_[last], cash, fixed, commission, spread, slippage)
        if not ok:
            return False, nt
    sz = float(size)
    equity[k, last] = cash + (close[last] * sz - sz * entry)
    if equity[k, last] <= 0:
        return False, nt
    return True, nt


@njit(cache=True, error_model="numpy")
def simulate(
    codes: npt.NDArray[np.int8],
    starts: Ints,
    count: int,
    open_: Floats,
    close: Floats,
    commission: float,
    fixed: float,
    spread: float,
    slippage: float,
    cash0: float,
    sampled: Ints,
    equity: Floats,
    returns: Floats,
    ratio: Floats,
    stats: Floats,
    status: npt.NDArray[np.int8],
) -> None:  # pragma: no cover (compiled)
    """Fill the decisions of `count` combinations and compute their trade and equity statistics.

    codes: (K, 3, n) int8, per combination the decisions when flat, long and short (interface
    codes); starts: (K,) first bar a decision may be taken (warm-up + 1); sampled: the bars whose
    equity the period returns compare (periods.resample_last), m + 1 of them. Writes equity
    (K, n), the period returns (K, m) and 1 + each (K, m, for numpy's log), stats (K, N_STATS)
    and status (K,): OK, or FALLBACK where only the interpreted path is exact.
    """
    n = close.shape[0]
    trade = (
        np.empty(n + 1, np.int64),  # units (negative: short)
        np.empty(n + 1, np.int64),  # entry bar
        np.empty(n + 1, np.int64),  # exit bar
        np.empty(n + 1, np.float64),  # entry price
        np.empty(n + 1, np.float64),  # exit price
        np.empty(n + 1, np.float64),  # entry and exit commission
    )
    segment = (np.empty(n + 2, np.int64), np.empty(n + 2, np.float64), np.empty(n + 2, np.int64), np.empty(n + 2))
    scratch = (np.empty(n + 1, np.float64), np.empty(n + 1, np.float64), np.empty(n + 1, np.float64))
    costs = (commission, fixed, spread, slippage)
    for k in range(count):
        status[k] = OK
        fill = _fill(codes, k, starts[k], open_, costs, cash0, trade, segment)
        if not fill[0]:
            status[k] = FALLBACK
            continue
        settled, nt = _settle(k, fill, starts[k], open_, close, costs, equity, trade, segment)
        if not settled:
            status[k] = FALLBACK
            continue
        statistics(k, nt, equity, sampled, returns, ratio, stats, trade, scratch)
