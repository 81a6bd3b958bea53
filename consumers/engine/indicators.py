"""Indicators, with comparisons that agree with pandas' arithmetic even at exact ties.

The rolling means and deviations themselves are `rolling.py`; this module caches them per run
(`IndicatorCache`) and decides comparisons (`robust_sign`)."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import numpy as np
import numpy.typing as npt

from consumers.engine.errors import EngineError
from consumers.engine.rolling import ExactMean, rolling_mean_fast, rolling_std

FloatArray = npt.NDArray[np.float64]
SignArray = npt.NDArray[np.int8]

# Relative gap under which two indicator values count as a possible tie. The fast (cumulative
# sum) moving average is within ~1e-12 of pandas' value; anything closer than this is settled
# with the exact replay below instead.
NEAR_TIE = 1e-9
# Sign codes: below, equal, above, and "undefined" (a NaN operand: every comparison is False).
BELOW, EQUAL, ABOVE, UNDEFINED = -1, 0, 1, 2


class IndicatorUnfinished(EngineError):
    """An exact replay has more bars to go than one step may compute; the step that asked for it
    ends here, and the next one asks again and goes on where this one stopped."""


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
    # ABOVE (1) minus BELOW (-1) from the two comparisons: 0 where equal or where an operand is
    # NaN (every comparison False), which then becomes UNDEFINED. Half the cost of masked writes.
    with np.errstate(invalid="ignore"):
        out = (lhs > rhs).view(np.int8) - (lhs < rhs).view(np.int8)
        undefined = np.isnan(lhs) | np.isnan(rhs)
    if undefined.any():
        out[undefined] = UNDEFINED
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
        exact_bars_per_call: int | None = None,
    ) -> None:
        self.close = close
        # At most this many bars of an exact replay per call of `mean(exact=True)`, which raises
        # IndicatorUnfinished until the replay is done (None: no bound).
        self.exact_bars_per_call = exact_bars_per_call
        self._replays: dict[tuple[str, int, bool], ExactMean] = {}
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
        """The simple moving average over `window` bars of `of` (`close`, or `gain`/`loss`: Close's
        per-bar rise and fall), NaN before the window fills; (n,) float64, cached. `exact`: pandas'
        own arithmetic bit for bit (`rolling.ExactMean`), which raises IndicatorUnfinished until
        its replay is done when `exact_bars_per_call` bounds it."""
        key = (of, window, exact)
        got = self._means.get(key)
        if got is None:
            x = self._series(of)
            if exact:
                replay = self._replays.get(key) or self._replays.setdefault(key, ExactMean(x, window))
                replay.advance(self.exact_bars_per_call or len(replay.vals))
                if not replay.done:
                    raise IndicatorUnfinished(f"exact mean({window}) of {of}: {replay.next_bar} bars so far")
                got = self._replays.pop(key).result()
            elif of == "close":
                got = rolling_mean_fast(x, window)
            else:
                # Gains and losses start with a NaN: average the rest and shift back by one.
                got = np.concatenate(([np.nan], rolling_mean_fast(x[1:], window)))
            self._means[key] = got
        return got

    def std(self, window: int) -> FloatArray:
        """The population standard deviation of Close over `window` bars (`rolling.rolling_std`),
        NaN before the window fills; (n,) float64, cached."""
        key = ("std", window)
        got = self._misc.get(key)
        if got is None:
            got = self._misc[key] = rolling_std(self.close, window)
        return got

    def momentum(self, lookback: int) -> FloatArray:
        """Close[t] / Close[t - lookback] - 1 (`momentum`), NaN for the first `lookback` bars; cached."""
        key = ("mom", lookback)
        got = self._misc.get(key)
        if got is None:
            got = self._misc[key] = momentum(self.close, lookback)
        return got
