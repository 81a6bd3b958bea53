"""Indicators, with comparisons that agree with pandas' arithmetic even at exact ties."""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
SignArray = npt.NDArray[np.int8]

# Relative gap under which two indicator values count as a possible tie. The fast (cumulative
# sum) moving average is within ~1e-12 of pandas' value; anything closer than this is settled
# with the exact replay below instead.
NEAR_TIE = 1e-9
# Sign codes: below, equal, above, and "undefined" (a NaN operand: every comparison is False).
BELOW, EQUAL, ABOVE, UNDEFINED = -1, 0, 1, 2


def rolling_mean_fast(x: FloatArray, window: int) -> FloatArray:
    """Trailing mean over `window` values (NaN before that), by cumulative sums: O(n), vectorised."""
    n = x.shape[0]
    out = np.full(n, np.nan)
    if window > n:
        return out
    base = x[0] if n else 0.0
    # Shifting by the first value keeps the running sums small, so the rounding stays ~1e-13.
    cs = np.concatenate(([0.0], np.cumsum(x - base)))
    out[window - 1 :] = (cs[window:] - cs[:-window]) / window + base
    return out


def rolling_mean_exact(x: FloatArray, window: int) -> FloatArray:
    """Bit-for-bit pandas `Series.rolling(window).mean()`: Kahan sums with separate add and remove
    compensation, and the exact value for runs of equal values (pandas GH#42064).

    A pure-Python loop (~0.3 µs a bar): called only when the fast mean leaves a comparison too
    close to call.
    """
    vals = x.tolist()
    n = len(vals)
    out = [math.nan] * n
    sum_x = comp_add = comp_rem = 0.0
    nobs = neg = same = 0
    prev = vals[0] if n else 0.0
    for i in range(n):
        if i >= window:
            v = vals[i - window]
            if v == v:
                nobs -= 1
                y = -v - comp_rem
                t = sum_x + y
                comp_rem = t - sum_x - y
                sum_x = t
                if math.copysign(1.0, v) < 0:
                    neg -= 1
        v = vals[i]
        if v == v:
            nobs += 1
            y = v - comp_add
            t = sum_x + y
            comp_add = t - sum_x - y
            sum_x = t
            if math.copysign(1.0, v) < 0:
                neg += 1
            same = same + 1 if v == prev else 1
            prev = v
        if nobs >= window and nobs > 0:
            r = sum_x / nobs
            if same >= nobs:
                r = prev
            elif neg == 0 and r < 0 or neg == nobs and r > 0:
                r = 0.0
            out[i] = r
    return np.array(out, dtype=np.float64)


def rolling_std(x: FloatArray, window: int, mean: FloatArray) -> FloatArray:
    """Population standard deviation over the trailing window around the given rolling `mean`.

    Two-pass (sum of squared deviations from the window mean), so it stays accurate on prices
    far from zero; O(n·window) vectorised work and O(n) memory.
    """
    n = x.shape[0]
    out = np.full(n, np.nan)
    if window > n:
        return out
    m = mean[window - 1 :]
    acc = np.zeros(n - window + 1)
    for k in range(window):
        d = x[k : n - window + 1 + k] - m
        acc += d * d
    out[window - 1 :] = np.sqrt(acc / window)
    return out


def momentum(close: FloatArray, lookback: int) -> FloatArray:
    """Close over the close `lookback` bars earlier, minus one (pandas `c / c.shift(n) - 1`)."""
    out = np.full(close.shape[0], np.nan)
    out[lookback:] = close[lookback:] / close[:-lookback] - 1
    return out


def gains_losses(close: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Per-bar rise and fall of Close (both >= 0, NaN on the first bar)."""
    gain = np.full(close.shape[0], np.nan)
    loss = np.full(close.shape[0], np.nan)
    gain[1:] = np.maximum(close[1:] - close[:-1], 0.0)
    loss[1:] = np.maximum(close[:-1] - close[1:], 0.0)
    return gain, loss


def rsi_from(avg_gain: FloatArray, avg_loss: FloatArray) -> FloatArray:
    """RSI = 100·G/(G+L) from average gain and loss; NaN where the window saw no change."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return 100 * avg_gain / (avg_gain + avg_loss)


def _signs(lhs: FloatArray, rhs: FloatArray) -> SignArray:
    out = np.full(lhs.shape[0], UNDEFINED, dtype=np.int8)
    with np.errstate(invalid="ignore"):
        out[lhs < rhs] = BELOW
        out[lhs > rhs] = ABOVE
        out[lhs == rhs] = EQUAL
    return out


def robust_sign(pair: Callable[[bool], tuple[FloatArray, FloatArray]]) -> SignArray:
    """Sign of lhs - rhs per bar, as pandas-based code would decide it.

    `pair(exact)` returns (lhs, rhs); with exact=False from the fast indicators, with exact=True
    from the bit-exact ones. The exact pair is built only if some bar is a near tie, and only
    those bars take its verdict.
    """
    lhs, rhs = pair(False)
    signs = _signs(lhs, rhs)
    with np.errstate(invalid="ignore"):
        near = np.abs(lhs - rhs) <= NEAR_TIE * np.maximum(np.abs(lhs), np.abs(rhs))
    if near.any():
        elhs, erhs = pair(True)
        idx = np.flatnonzero(near)
        signs[idx] = _signs(elhs[idx], erhs[idx])
    return signs


class IndicatorCache:
    """The bars of one run and their indicators, each computed once and shared across a sweep.

    `open`, `high`, `low`, `close`, `volume`: float64 arrays, one value per bar, oldest first
    (only `close` is required; the others default to it, volume to zeros). Strategies read them
    and ask for indicators here: `mean`, `std`, `momentum`, or any array of their own through
    `memo(key, compute)`.
    """

    def __init__(
        self,
        close: FloatArray,
        *,
        open: FloatArray | None = None,  # noqa: A002  (the bar's field name)
        high: FloatArray | None = None,
        low: FloatArray | None = None,
        volume: FloatArray | None = None,
    ) -> None:
        self.close = close
        self.open = close if open is None else open
        self.high = close if high is None else high
        self.low = close if low is None else low
        self.volume = np.zeros_like(close) if volume is None else volume
        self._means: dict[tuple[str, int, bool], FloatArray] = {}
        self._misc: dict[tuple[str, int], FloatArray] = {}
        self._gl: tuple[FloatArray, FloatArray] | None = None
        self._memo: dict[Hashable, Any] = {}

    def memo(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """`compute()`'s value, computed on the first call with this `key` and kept for the run:
        a plugin's own indicators, shared across the combinations of a sweep. Make the key
        name the indicator and every parameter it depends on, e.g. ("donchian_high", 20)."""
        try:
            return self._memo[key]
        except KeyError:
            got = self._memo[key] = compute()
            return got

    def _series(self, name: str) -> FloatArray:
        if name == "close":
            return self.close
        if self._gl is None:
            self._gl = gains_losses(self.close)
        return self._gl[0] if name == "gain" else self._gl[1]

    def mean(self, window: int, exact: bool = False, of: str = "close") -> FloatArray:
        key = (of, window, exact)
        got = self._means.get(key)
        if got is None:
            x = self._series(of)
            if exact:
                got = rolling_mean_exact(x, window)
            elif of == "close":
                got = rolling_mean_fast(x, window)
            else:
                # Gains and losses start with a NaN: average the rest and shift back by one.
                got = np.concatenate(([np.nan], rolling_mean_fast(x[1:], window)))
            self._means[key] = got
        return got

    def std(self, window: int) -> FloatArray:
        key = ("std", window)
        got = self._misc.get(key)
        if got is None:
            got = self._misc[key] = rolling_std(self.close, window, self.mean(window))
        return got

    def momentum(self, lookback: int) -> FloatArray:
        key = ("mom", lookback)
        got = self._misc.get(key)
        if got is None:
            got = self._misc[key] = momentum(self.close, lookback)
        return got
