"""What a strategy decides, per bar and position state, and the engine's form of it.

`Decisions` (built with `rules()` or `from_target()`) is what a strategy's `decide` returns; the
engine turns it into `Signals` (`to_signals`), lists of decision bars its kernel walks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

# What a decision asks for at the next bar's open. Every entry first closes the open trade,
# so LONG while already long re-enters (as backtesting.py's SmaCross does on a repeated cross).
LONG, SHORT, FLAT = 1, -1, 0
# No decision at this bar (the position is kept).
HOLD = 9

BoolArray = npt.NDArray[np.bool_]
CodeArray = npt.NDArray[np.int8]
Rule = tuple[BoolArray, int]


@dataclass(frozen=True)
class Decisions:
    """What the strategy does at each bar's close, for each position state it may be in.

    `flat`, `long` and `short` are int8 arrays of one code per bar (LONG, SHORT, FLAT or HOLD):
    the action taken at that bar's close when the position is flat, long or short. Build them
    with `rules()` (if/elif masks per state) or `from_target()` (a target position per bar)
    rather than by hand. Decisions inside the warm-up are ignored by the engine.

    `stop_price`, `target_price` (optional float64 arrays, one per bar, NaN for none): the
    stop-loss and take-profit price of a trade entered on the decision taken at that bar's close
    (backtesting.py's `buy(sl=, tp=)`). A level on the wrong side of the fill price (a long's
    stop at or above it, its target at or below it; mirrored for a short) is ignored; the
    request's `stop_loss_pct` / `take_profit_pct`, when set, replace these.
    """

    flat: CodeArray
    long: CodeArray
    short: CodeArray
    stop_price: npt.NDArray[np.float64] | None = None
    target_price: npt.NDArray[np.float64] | None = None

    def for_state(self, state: int) -> CodeArray:
        """The codes for position state `state`: 0 flat, > 0 long, < 0 short."""
        return self.flat if state == 0 else self.long if state > 0 else self.short


def _codes(n: int, pairs: Sequence[Rule]) -> CodeArray:
    code = np.full(n, HOLD, dtype=np.int8)
    for mask, act in reversed(pairs):  # earlier pairs overwrite later ones, like if/elif
        if act not in (LONG, SHORT, FLAT):
            raise ValueError(f"an action is LONG, SHORT or FLAT, got {act!r}")
        code[mask] = act
    return code


def rules(
    n: int,
    *,
    flat: Sequence[Rule] = (),
    long: Sequence[Rule] = (),
    short: Sequence[Rule] = (),
    stop_price: npt.NDArray[np.float64] | None = None,
    target_price: npt.NDArray[np.float64] | None = None,
) -> Decisions:
    """Decisions from (mask, action) pairs per position state, `n` bars long, with optional
    per-entry stop and target prices (see `Decisions`).

    Within a state, the first pair whose boolean mask is true at a bar decides it (if/elif);
    a bar no mask covers holds. States given the same list object share one array (read-only).
    Example, an SMA cross that always reverses:
    `rules(n, flat=[(up, LONG), (down, SHORT)], long=[(down, SHORT)], short=[(up, LONG)])`.
    Raises ValueError for an action other than LONG, SHORT or FLAT.
    """
    made: dict[int, CodeArray] = {}  # states given the same list of pairs share one array

    def codes(pairs: Sequence[Rule]) -> CodeArray:
        got = made.get(id(pairs))
        if got is None:
            got = made[id(pairs)] = _codes(n, pairs)
        return got

    return Decisions(codes(flat), codes(long), codes(short), stop_price, target_price)


def from_target(
    target: npt.NDArray[np.floating[Any]],
    *,
    stop_price: npt.NDArray[np.float64] | None = None,
    target_price: npt.NDArray[np.float64] | None = None,
) -> Decisions:
    """Decisions from a target position per bar: 1 long, -1 short, 0 flat, NaN no opinion (with
    optional per-entry stop and target prices, see `Decisions`).

    The engine trades at a bar whose target differs from the position it holds (an entry
    closes the opposite trade first); NaN bars hold whatever is held. Raises ValueError for a
    target other than -1, 0, 1 or NaN.
    """
    t = np.asarray(target, dtype=np.float64)
    bad = ~np.isnan(t) & ~np.isin(t, (-1.0, 0.0, 1.0))
    if bad.any():
        raise ValueError(f"a target is -1, 0, 1 or NaN; bar {int(np.flatnonzero(bad)[0])} has {float(t[bad][0])!r}")
    n = t.shape[0]
    out = []
    for state in (0, 1, -1):
        code = np.full(n, HOLD, dtype=np.int8)
        act = ~np.isnan(t) & (t != state)
        code[act] = t[act].astype(np.int8)
        out.append(code)
    return Decisions(out[0], out[1], out[2], stop_price, target_price)


@dataclass(frozen=True)
class Signals:
    """The engine's form of Decisions: decision bars and actions per position state (-1 short,
    0 flat, 1 long), ascending. The kernel, in state s at bar i, acts on the first entry of
    `bars[s]` at or after i."""

    bars: dict[int, list[int]]
    acts: dict[int, list[int]]
    # Per-entry levels by decision bar (NaN: none), when the strategy gives them.
    stop: list[float] | None = None
    target: list[float] | None = None


def to_signals(d: Decisions, start: int) -> Signals:
    """The decisions at bars `start` and later, as event lists per state."""
    bars: dict[int, list[int]] = {}
    acts: dict[int, list[int]] = {}
    for state in (-1, 0, 1):
        code = d.for_state(state)
        idx = np.flatnonzero(code[start:] != HOLD) + start
        bars[state] = idx.tolist()
        acts[state] = code[idx].tolist()
    stop = None if d.stop_price is None else np.asarray(d.stop_price, dtype=np.float64).tolist()
    target = None if d.target_price is None else np.asarray(d.target_price, dtype=np.float64).tolist()
    return Signals(bars, acts, stop, target)
