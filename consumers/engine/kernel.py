"""The execution kernel: market orders at the next open, whole units, costs, as backtesting.py fills them.

The loop visits only decision bars (a few per hundred bars); the equity curve between fills is
rebuilt afterwards with numpy from the account state after each fill (`Segment`). Float
operations follow backtesting.py 0.6.6's `_Broker` in the same order, so trades and equity
match it bit for bit with default execution.
"""

from __future__ import annotations

import math
import sys
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import msgspec
import numpy as np
import numpy.typing as npt

from consumers.engine.decisions import FLAT, Signals
from consumers.engine.errors import RepresentationError
from consumers.engine.limits import MAX_UNITS

# backtesting.py sizes "all equity" orders as this fraction, so the floor division below sees
# the same operands as its broker.
FULL_EQUITY = 1 - sys.float_info.epsilon

FloatArray = npt.NDArray[np.float64]


class Costs(msgspec.Struct, frozen=True):
    """Trading costs as backtesting.py charges them: a commission rate and a fixed commission per
    order (money), a relative spread on entry, and slippage against every fill (a fraction)."""

    commission: float = 0.0  # rate of traded value, on entry and on exit
    commission_fixed: float = 0.0  # per order, on entry and on exit
    spread: float = 0.0  # relative, paid on entry only
    slippage: float = 0.0  # relative (bps / 10_000), against us on every fill

    def fee(self, size: int, price: float) -> float:
        """The commission of an order of `size` units at `price`: fixed + |size| x price x rate."""
        return self.commission_fixed + abs(size) * price * self.commission


class Trade(msgspec.Struct, frozen=True, array_like=True):
    """A closed trade: `size` in units (negative: short), bars as indexes into the run's bars,
    prices per unit including spread and slippage, `commission` (money) for entry and exit.

    `exit_reason` says why it closed (see STRATEGIES.md, "Position management"): `signal` (the
    strategy's decision), `stop` (its stop-loss), `target` (its take-profit), `trailing` (its
    trailing stop), `time` (its maximum holding period) or `end` (the end of the data, or of the
    money: the stop-out)."""

    size: int
    entry_bar: int
    exit_bar: int
    entry_price: float
    exit_price: float
    commission: float
    exit_reason: str = "signal"


class TradeColumns(NamedTuple):
    """Closed trades as arrays, one per field, with each trade's profit and return."""

    size: npt.NDArray[np.int64]
    entry_bar: npt.NDArray[np.int64]
    exit_bar: npt.NDArray[np.int64]
    entry_price: npt.NDArray[np.float64]
    exit_price: npt.NDArray[np.float64]
    commission: npt.NDArray[np.float64]
    pnl: npt.NDArray[np.float64]
    returns: npt.NDArray[np.float64]  # fractions, commission included, as backtesting.py's


def trade_columns(trades: Sequence[Trade]) -> TradeColumns:
    """The trades as columns, with each trade's P&L = size x (exit - entry) - commission (money) and
    return = sign(size) x (exit / entry - 1) - commission / (|size| x entry) (a fraction), as
    backtesting.py's trades table computes PnL and ReturnPct."""
    size = np.array([t.size for t in trades], dtype=np.int64)
    entry = np.array([t.entry_price for t in trades], dtype=np.float64)
    exit_ = np.array([t.exit_price for t in trades], dtype=np.float64)
    fees = np.array([t.commission for t in trades], dtype=np.float64)
    units = size.astype(np.float64)
    with np.errstate(all="ignore"):
        pnl = units * (exit_ - entry) - fees
        returns = np.copysign(1.0, units) * (exit_ / entry - 1) - fees / (np.abs(units) * entry)
    return TradeColumns(
        size,
        np.array([t.entry_bar for t in trades], dtype=np.int64),
        np.array([t.exit_bar for t in trades], dtype=np.int64),
        entry,
        exit_,
        fees,
        pnl,
        returns,
    )


class Segment(msgspec.Struct, frozen=True, array_like=True):
    """Account state from the open of `bar` until the next segment: cash and the open trade."""

    bar: int
    cash: float
    size: int
    entry_price: float


class KernelState(msgspec.Struct):
    """Everything the loop needs to continue: the saved form between chunks."""

    cursor: int  # next bar at which a decision may be taken
    cash: float
    size: int = 0
    entry_price: float = 0.0
    entry_bar: int = -1
    trades: list[Trade] = []
    segments: list[Segment] = []
    last_action: int | None = None  # decision taken on the last bar, filled by the final settlement
    done: bool = False
    # The open trade's stop-loss and take-profit levels (None: none), and whether the stop was
    # last moved by the trailing rule (position management only; see `managed.py`).
    sl: float | None = None
    tp: float | None = None
    trailed: bool = False


def initial_state(cash: float, start: int) -> KernelState:
    """A flat account with `cash`, its first decision at bar `start` (the warm-up + 1)."""
    return KernelState(cursor=start, cash=cash, segments=[Segment(0, cash, 0, 0.0)])


@dataclass
class _Account:
    cash: float
    size: int
    entry_price: float
    entry_bar: int


def _close(acc: _Account, price: float, bar: int, costs: Costs, trades: list[Trade], reason: str = "signal") -> None:
    size, entry = acc.size, acc.entry_price
    fee = costs.fee(size, price)
    acc.cash += size * (price - entry) - fee
    trades.append(Trade(size, acc.entry_bar, bar, entry, price, fee + costs.fee(size, entry), reason))
    acc.size, acc.entry_price, acc.entry_bar = 0, 0.0, -1


def _exit_price(size: int, open_: float, costs: Costs) -> float:
    return open_ * (1.0 - costs.slippage) if size > 0 else open_ * (1.0 + costs.slippage)


def _enter(
    acc: _Account,
    direction: int,
    open_: float,
    bar: int,
    costs: Costs,
    size: float | None = None,
    leverage: float = 1.0,
) -> bool:
    """Open a trade at this open, or do nothing if the order is not affordable; whether it opened.

    `size` as backtesting.py's `buy(size=)`: None for all available equity (its 1 - ε), a
    fraction in (0, 1) of the available margin times `leverage`, or a whole number of units.
    """
    frac = FULL_EQUITY if size is None else size
    price = open_ * (1.0 + direction * costs.slippage)
    adjusted = price * (1 + (costs.spread if direction > 0 else -costs.spread))
    with_fee = adjusted + (costs.commission_fixed + frac * price * costs.commission) / frac
    # No trade is open here, so equity is cash and all of it is available as margin.
    margin = max(0, acc.cash + 0.0)
    if margin == math.inf:
        raise RepresentationError(f"equity at bar {bar} is beyond float64 (over 1.8e308): prices too far apart")
    units = int((margin * leverage * frac) // with_fee) if frac < 1 else int(frac)
    if not units or units * with_fee > margin * leverage:
        return False  # the broker cancels the order: not enough cash for one unit
    if units > MAX_UNITS:
        raise RepresentationError(
            f"an order at bar {bar} would hold {units:.3g} units (equity {margin:.6g} at {adjusted:.6g} a unit), "
            f"more than the engine represents exactly (2^53 = {MAX_UNITS:.3g}); use less cash or prices further from 0"
        )
    signed = units * direction
    acc.cash -= costs.fee(signed, adjusted)
    acc.size, acc.entry_price, acc.entry_bar = signed, adjusted, bar
    return True


def advance(state: KernelState, sig: Signals, open_: list[float], n: int, costs: Costs, max_events: int) -> None:
    """Process up to `max_events` decisions; sets `state.done` after the last one.

    Raises RepresentationError (not retryable) if an order would hold more than MAX_UNITS.
    """
    acc = _Account(state.cash, state.size, state.entry_price, state.entry_bar)
    trades, segments, i = state.trades, state.segments, state.cursor
    bars, acts = sig.bars, sig.acts
    for _ in range(max_events):
        s = (acc.size > 0) - (acc.size < 0)
        bl = bars[s]
        k = bisect_left(bl, i)
        if k == len(bl):
            state.done = True
            break
        j, act = bl[k], acts[s][k]
        if j >= n - 1:
            state.last_action = act
            state.done = True
            break
        f = j + 1
        o = open_[f]
        if acc.size:
            _close(acc, _exit_price(acc.size, o, costs), f, costs, trades)
        if act != FLAT:
            _enter(acc, act, o, f, costs)
        segments.append(Segment(f, acc.cash, acc.size, acc.entry_price))
        i = f
    state.cursor = i
    state.cash, state.size, state.entry_price, state.entry_bar = acc.cash, acc.size, acc.entry_price, acc.entry_bar


@dataclass(frozen=True)
class Simulation:
    """The settled outcome: closed trades, equity and position per bar, and where money ran out."""

    trades: list[Trade]
    equity: FloatArray
    position: npt.NDArray[np.int64]
    bankrupt_bar: int | None


def _expand(segments: list[Segment], close: FloatArray) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    n = close.shape[0]
    starts = np.fromiter((s.bar for s in segments), np.int64, len(segments))
    counts = np.diff(np.append(starts, n))
    cash = np.repeat(np.fromiter((s.cash for s in segments), np.float64, len(segments)), counts)
    size_i = np.repeat(np.fromiter((s.size for s in segments), np.int64, len(segments)), counts)
    entry = np.repeat(np.fromiter((s.entry_price for s in segments), np.float64, len(segments)), counts)
    size = size_i.astype(np.float64)
    # Same operations as the broker's equity: cash + (close * size - size * entry_price).
    return cash + (close * size - size * entry), size_i


class LastBar(Protocol):
    """Position management's part in the final settlement (see `managed.Manager`)."""

    @property
    def size(self) -> float | None:
        """The order size (`managed.Management.size`): None all equity."""
        ...

    @property
    def leverage(self) -> float:
        """1 / margin."""
        ...

    def after_entry(self, acc: _Account, bar: int, costs: Costs, trades: list[Trade]) -> None:
        """Check a trade entered at the last bar's open against that bar's stop and target."""
        ...


def settle(
    state: KernelState, open_: FloatArray, close: FloatArray, start: int, costs: Costs, pm: LastBar | None = None
) -> Simulation:
    """Rebuild equity, apply the stop-out where equity first reaches zero, and close at the end.

    `open_` and `close` (n,) per bar, `start` the first decision bar; `pm` position management
    (None: all-in trading). Equity is money per bar; a stop-out closes at that bar's close and
    leaves equity 0 from there (`Simulation.bankrupt_bar`)."""
    n = close.shape[0]
    equity, position = _expand(state.segments, close)
    trades = list(state.trades)
    broke = np.flatnonzero(equity[start:] <= 0)
    if broke.size:
        k = start + int(broke[0])
        seg = state.segments[int(np.searchsorted([s.bar for s in state.segments], k, "right")) - 1]
        trades = [t for t in trades if t.exit_bar <= k]
        if seg.size:
            # Every fill closes the open trade first, so a trade lives in exactly one segment.
            acc = _Account(seg.cash, seg.size, seg.entry_price, seg.bar)
            _close(acc, _exit_price(seg.size, float(close[k]), costs), k, costs, trades, "end")
        equity[k:] = 0.0
        position[k:] = 0
        return Simulation(trades, equity, position, k)

    # End of data: close what is open at the last bar's open, then fill a decision taken on
    # the last bar at that same price (backtesting.py's finalize_trades re-runs its last bar).
    acc = _Account(state.cash, state.size, state.entry_price, state.entry_bar)
    last = n - 1
    if acc.size:
        _close(acc, _exit_price(acc.size, float(open_[last]), costs), last, costs, trades, "end")
    if state.last_action is not None and state.last_action != FLAT:
        if pm is None:
            _enter(acc, state.last_action, float(open_[last]), last, costs)
        elif _enter(acc, state.last_action, float(open_[last]), last, costs, pm.size, pm.leverage):
            pm.after_entry(acc, last, costs, trades)
    size_f = float(acc.size)
    equity[last] = acc.cash + (float(close[last]) * size_f - size_f * acc.entry_price)
    position[last] = acc.size
    if equity[last] <= 0:
        if acc.size:
            _close(acc, _exit_price(acc.size, float(close[last]), costs), last, costs, trades, "end")
        equity[last] = 0.0
        position[last] = 0
        return Simulation(trades, equity, position, last)
    return Simulation(trades, equity, position, None)
