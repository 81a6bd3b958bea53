"""Position management: sizing, margin, stop-loss, take-profit, trailing stops and a maximum holding
period, filled as backtesting.py 0.6.6's broker fills them (STRATEGIES.md, "Position management").

Used instead of `kernel.advance` when a request asks for any of it. Unlike the fast kernel, which
visits only decision bars, this loop also visits every bar a trade is open, since a stop can fill
in any of them: about a microsecond per bar held.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass

import msgspec
import numpy as np

from consumers.engine.decisions import FLAT, Signals
from consumers.engine.kernel import (
    Costs,
    FloatArray,
    KernelState,
    Segment,
    Trade,
    _Account,
    _close,
    _enter,
    _exit_price,
)
from consumers.engine.rolling import rolling_mean_exact

# Bars a trade is scanned for stops before the loop counts an event and may pause for a chunk.
SCAN_BARS = 4096
# backtesting.py's TrailingStrategy: ATR over this many bars (`set_atr_periods` default).
ATR_PERIODS = 100


class Management(msgspec.Struct, frozen=True):
    """One combination's position management. Percentages are in percent (5 = 5%) of the entry
    price (stop, target) or of the close (trailing); None: not used."""

    size: float | None = None  # None all equity; (0, 1) a fraction of it; >= 1 whole units
    margin: float = 1.0  # backtesting.py's margin: leverage 1 / margin
    stop_loss_pct: float | None = None
    take_profit_pct: float | None = None
    trailing_stop_pct: float | None = None
    trailing_atr: float | None = None  # the trailing distance in ATRs (TrailingStrategy's n_atr)
    max_bars: int | None = None  # a trade is closed at the open after this many bars held

    @property
    def active(self) -> bool:
        """Whether anything differs from the fast kernel's all-in, signal-only trading."""
        return self != Management()


def atr(high: FloatArray, low: FloatArray, close: FloatArray, periods: int = ATR_PERIODS) -> FloatArray:
    """Average true range as backtesting.py's TrailingStrategy computes it: the true range
    max(H − L, |C₋₁ − H|, |C₋₁ − L|) (NaN on the first bar), pandas' rolling mean over `periods`
    bars, and the leading NaNs back-filled with the first value."""
    c_prev = np.concatenate(([np.nan], close[:-1]))
    tr = np.max([high - low, np.abs(c_prev - high), np.abs(c_prev - low)], axis=0)
    out = rolling_mean_exact(tr, periods)
    ok = np.flatnonzero(~np.isnan(out))
    if ok.size:
        out[: ok[0]] = out[ok[0]]
    return out


@dataclass
class Manager:
    """One run's position management over its bars."""

    m: Management
    open_: list[float]
    high: list[float]
    low: list[float]
    close: list[float]
    atr: list[float] | None  # only with trailing_atr
    signals: Signals | None = None  # set by the run once computed (the final settlement needs them)

    @property
    def size(self) -> float | None:
        """The order size: None all equity, (0, 1) a fraction of it, >= 1 whole units."""
        return self.m.size

    @property
    def leverage(self) -> float:
        """1 / margin (backtesting.py's leverage)."""
        return 1 / self.m.margin

    def levels(self, acc: _Account, sig: Signals, decided: int) -> tuple[float, float]:
        """The new trade's stop-loss and take-profit: the request's distances from its entry
        price, or else the strategy's levels for the decision at bar `decided` when they lie on
        the right side of the entry price."""
        long, e = acc.size > 0, acc.entry_price
        sl = math.nan if sig.stop is None else sig.stop[decided]
        tp = math.nan if sig.target is None else sig.target[decided]
        if not (sl < e if long else sl > e):
            sl = math.nan  # also NaN itself
        if not (tp > e if long else tp < e):
            tp = math.nan
        if self.m.stop_loss_pct is not None:
            sl = e * (1 - self.m.stop_loss_pct / 100) if long else e * (1 + self.m.stop_loss_pct / 100)
        if self.m.take_profit_pct is not None:
            tp = e * (1 + self.m.take_profit_pct / 100) if long else e * (1 - self.m.take_profit_pct / 100)
        return sl, tp

    def hit(self, acc: _Account, b: int, sl: float, tp: float, costs: Costs) -> tuple[float, str] | None:
        """Whether bar `b` fills the stop or the target, and at what price: the stop first (when
        both lie in the bar, backtesting.py assumes the worse came first), at its level or at the
        open if the bar opens beyond it (a gap fills at the open, worse); the target at its level
        or at the open if the bar opens beyond it (better). Slippage applies to stop fills."""
        o = self.open_[b]
        if acc.size > 0:
            if sl == sl and self.low[b] <= sl:
                return min(o, sl) * (1.0 - costs.slippage), "stop"
            if tp == tp and self.high[b] >= tp:
                return max(o, tp), "target"
        else:
            if sl == sl and self.high[b] >= sl:
                return max(o, sl) * (1.0 + costs.slippage), "stop"
            if tp == tp and self.low[b] <= tp:
                return min(o, tp), "target"
        return None

    def trail(self, acc: _Account, b: int, sl: float) -> float:
        """The stop after bar `b`'s close: moved toward the price by the trailing rules, never back."""
        c, new = self.close[b], sl
        long = acc.size > 0
        for dist in self._distances(b, c):
            level = c - dist if long else c + dist
            if new != new or (level > new if long else level < new):
                new = level
        return new

    def _distances(self, b: int, c: float) -> list[float]:
        out = []
        if self.m.trailing_stop_pct is not None:
            out.append(c * self.m.trailing_stop_pct / 100)
        if self.atr is not None and self.m.trailing_atr is not None:
            out.append(self.atr[b] * self.m.trailing_atr)
        return out

    def after_entry(self, acc: _Account, bar: int, costs: Costs, trades: list[Trade]) -> None:
        """A trade opened at the last bar's open in the final settlement (decided at that bar):
        its stop and target are checked against the bar, as backtesting.py re-processes them
        after a market entry."""
        assert self.signals is not None
        sl, tp = self.levels(acc, self.signals, bar)
        got = self.hit(acc, bar, sl, tp, costs)
        if got is not None:
            _close(acc, got[0], bar, costs, trades, got[1])


def advance_managed(state: KernelState, sig: Signals, pm: Manager, costs: Costs, max_events: int) -> None:
    """`kernel.advance` with position management: process up to `max_events` events (a decision,
    an exit by stop, target or time, or SCAN_BARS bars of an open trade); sets `state.done` after
    the last. Raises RepresentationError (not retryable) if an order would hold more than MAX_UNITS."""
    acc = _Account(state.cash, state.size, state.entry_price, state.entry_bar)
    sl = math.nan if state.sl is None else state.sl
    tp = math.nan if state.tp is None else state.tp
    trailed = state.trailed
    trades, segments, i = state.trades, state.segments, state.cursor
    bars, acts, n, m = sig.bars, sig.acts, len(pm.open_), pm.m
    for _ in range(max_events):
        s = (acc.size > 0) - (acc.size < 0)
        bl = bars[s]
        k = bisect_left(bl, i)
        j = bl[k] if k < len(bl) else n  # the next decision in this state; n: none
        if acc.size:
            i, moved_on, sl, trailed = _hold(acc, pm, i, j, sl, tp, trailed, costs, trades, segments)
            if moved_on:
                if i >= n:
                    state.done = True
                    break
                continue
        if j >= n:
            state.done = True
            break
        act = acts[s][k]
        if j >= n - 1:
            state.last_action = act
            state.done = True
            break
        f = j + 1
        o = pm.open_[f]
        if acc.size:
            _close(acc, _exit_price(acc.size, o, costs), f, costs, trades)
        if act != FLAT and _enter(acc, act, o, f, costs, m.size, pm.leverage):
            sl, tp = pm.levels(acc, sig, j)
            trailed = False
        segments.append(Segment(f, acc.cash, acc.size, acc.entry_price))
        i = f
    state.cursor = i
    state.cash, state.size, state.entry_price, state.entry_bar = acc.cash, acc.size, acc.entry_price, acc.entry_bar
    state.sl, state.tp, state.trailed = (None if sl != sl else sl), (None if tp != tp else tp), trailed


def _hold(
    acc: _Account,
    pm: Manager,
    i: int,
    j: int,
    sl: float,
    tp: float,
    trailed: bool,
    costs: Costs,
    trades: list[Trade],
    segments: list[Segment],
) -> tuple[int, bool, float, bool]:
    """The open trade's bars from `i` to the next decision `j` (at most SCAN_BARS of them): an exit
    by stop, target or time, the trailing stop moved after each close. Returns (the bar to go on
    from, whether the trade exited or the scan paused there: False means bar `j`'s decision comes
    next, the stop, whether a trailing rule last moved it)."""
    n = len(pm.open_)
    last = min(j, n - 1, i + SCAN_BARS - 1)
    max_bars = pm.m.max_bars
    for b in range(i, last + 1):
        got = pm.hit(acc, b, sl, tp, costs)
        if got is not None:
            price, reason = got
            _close(acc, price, b, costs, trades, "trailing" if reason == "stop" and trailed else reason)
            segments.append(Segment(b, acc.cash, 0, 0.0))
            return b, True, sl, trailed
        if b == j:
            return i, False, sl, trailed  # the decision at this close closes the trade at the next open
        moved = pm.trail(acc, b, sl)
        if moved != sl:
            sl, trailed = moved, True
        if max_bars is not None and b - acc.entry_bar + 1 >= max_bars and b + 1 < n:
            f = b + 1
            _close(acc, _exit_price(acc.size, pm.open_[f], costs), f, costs, trades, "time")
            segments.append(Segment(f, acc.cash, 0, 0.0))
            return f, True, sl, trailed
    return last + 1, True, sl, trailed  # paused after SCAN_BARS bars (or the last bar)
