"""The five built-in strategies, written on the public interface (`interface.py`) like any plugin."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import msgspec
import numpy as np
import numpy.typing as npt

from consumers.engine.indicators import ABOVE, BELOW, IndicatorCache, robust_sign, rsi_from
from consumers.engine.interface import FLAT, LONG, SHORT, BoolArray, Decisions, Registered, Rule, Strategy, rules

WINDOW_MAX = 100_000


def _level_rules(n: int, go_long: BoolArray, go_short: BoolArray, long_only: bool) -> Decisions:
    """Enter long on `go_long` unless long, else short on `go_short` unless short (flat if long-only)."""
    if long_only:
        return rules(n, flat=[(go_long, LONG)], long=[(go_short, FLAT)], short=[(go_long, LONG)])
    return rules(n, flat=[(go_long, LONG), (go_short, SHORT)], long=[(go_short, SHORT)], short=[(go_long, LONG)])


# --- sma_cross -------------------------------------------------------------------------------


class SmaCrossParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """sma_cross's parameters: the two windows, in bars (fast < slow)."""

    fast: Annotated[
        int, msgspec.Meta(ge=1, le=WINDOW_MAX, description="bars in the fast simple moving average of Close")
    ] = 10
    slow: Annotated[
        int, msgspec.Meta(ge=2, le=WINDOW_MAX, description="bars in the slow simple moving average of Close")
    ] = 20


class SmaCross(Strategy[SmaCrossParams]):
    """backtesting.py's SmaCross: when the fast simple moving average of Close crosses above the slow one,
    close and go long; when it crosses below, close and go short (flat when long-only). A cross is
    decided on the sign of fast - slow as pandas' rolling means give it (`robust_sign`)."""

    name = "sma_cross"
    summary = "fast SMA crosses above slow: close and go long; crosses below: close and go short"
    Params = SmaCrossParams

    def warmup(self, p: SmaCrossParams) -> int:
        """The slow (the longer) window's first full bar."""
        return max(p.fast, p.slow) - 1

    def check(self, p: SmaCrossParams) -> list[tuple[str, str]]:
        """fast must be less than slow."""
        if p.fast >= p.slow:
            return [("params.fast", f"fast ({p.fast}) must be less than slow ({p.slow})")]
        return []

    def decide(self, data: IndicatorCache, p: SmaCrossParams, long_only: bool) -> Decisions:
        """Cross up: LONG in every state; cross down: SHORT, or when long-only FLAT (and no entry when flat)."""
        sign = robust_sign(lambda exact: (data.mean(p.fast, exact), data.mean(p.slow, exact)))
        n = sign.shape[0]
        # Each bar's (previous, current) sign pair as one number, 4 * previous + current (signs are
        # -1..2, so every pair has its own): a cross up is (BELOW, ABOVE), a cross down the reverse.
        pair = np.empty(n, dtype=np.int8)
        pair[:1] = 0  # no previous bar: no cross
        np.multiply(sign[:-1], 4, out=pair[1:])
        pair[1:] += sign[1:]
        up = pair == 4 * BELOW + ABOVE
        down = pair == 4 * ABOVE + BELOW
        pairs: list[Rule] = [(up, LONG), (down, FLAT if long_only else SHORT)]
        return rules(n, flat=[(up, LONG)] if long_only else pairs, long=pairs, short=pairs)


# --- momentum --------------------------------------------------------------------------------


class MomentumParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """momentum's parameters: the lookback in bars and the threshold, a fraction (0.05 = 5%)."""

    lookback: Annotated[
        int, msgspec.Meta(ge=1, le=WINDOW_MAX, description="bars back for the momentum Close[t]/Close[t-n]-1")
    ] = 20
    threshold: Annotated[
        float, msgspec.Meta(ge=0.0, le=10.0, description="momentum above +threshold goes long, below -threshold short")
    ] = 0.0


class Momentum(Strategy[MomentumParams]):
    """Momentum = Close[t] / Close[t - lookback] - 1: above +threshold go long unless long, below
    -threshold go short unless short (flat when long-only)."""

    name = "momentum"
    summary = "momentum above +threshold: long unless long; below -threshold: short unless short"
    Params = MomentumParams

    def warmup(self, p: MomentumParams) -> int:
        """The lookback: the first bar with a Close that many bars earlier."""
        return p.lookback

    def decide(self, data: IndicatorCache, p: MomentumParams, long_only: bool) -> Decisions:
        """Entries on the momentum's level (see the class)."""
        mom = data.momentum(p.lookback)
        with np.errstate(invalid="ignore"):
            return _level_rules(mom.shape[0], mom > p.threshold, mom < -p.threshold, long_only)


# --- bollinger -------------------------------------------------------------------------------


class BollingerParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """bollinger's parameters: the window in bars and the band width k in standard deviations."""

    window: Annotated[
        int, msgspec.Meta(ge=2, le=WINDOW_MAX, description="bars in the moving average and standard deviation")
    ] = 20
    k: Annotated[float, msgspec.Meta(ge=0.0, le=100.0, description="band width in standard deviations")] = 2.0


class Bollinger(Strategy[BollingerParams]):
    """Bollinger bands: middle = the window's simple moving average of Close, bands = middle ± k x
    its population standard deviation. Flat: Close below the lower band goes long, above the upper
    short (not when long-only); a long exits when Close crosses above the middle, a short below."""

    name = "bollinger"
    summary = "flat: Close below lower band buys, above upper band sells; exit when Close crosses the middle"
    Params = BollingerParams

    def warmup(self, p: BollingerParams) -> int:
        """The window's first full bar."""
        return p.window - 1

    def decide(self, data: IndicatorCache, p: BollingerParams, long_only: bool) -> Decisions:
        """Entries at the bands, exits at the middle (see the class)."""
        w, k, close = p.window, float(p.k), data.close
        sd = data.std(w)
        vs_lower = robust_sign(lambda exact: (close, data.mean(w, exact) - k * sd))
        vs_upper = robust_sign(lambda exact: (close, data.mean(w, exact) + k * sd))
        vs_mid = robust_sign(lambda exact: (close, data.mean(w, exact)))
        below, above = vs_lower == BELOW, vs_upper == ABOVE
        entries: list[Rule] = [(below, LONG)] if long_only else [(below, LONG), (above, SHORT)]
        return rules(close.shape[0], flat=entries, long=[(vs_mid == ABOVE, FLAT)], short=[(vs_mid == BELOW, FLAT)])


# --- rsi -------------------------------------------------------------------------------------


class RsiParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """rsi's parameters: the averaging period in bars and the two levels, 0-100 (lower < upper)."""

    period: Annotated[int, msgspec.Meta(ge=1, le=WINDOW_MAX, description="bars in the average gain and loss")] = 14
    lower: Annotated[float, msgspec.Meta(ge=0.0, le=100.0, description="RSI below this goes long unless long")] = 30.0
    upper: Annotated[float, msgspec.Meta(ge=0.0, le=100.0, description="RSI above this goes short unless short")] = 70.0


class Rsi(Strategy[RsiParams]):
    """Relative strength index, RSI = 100 x G / (G + L), G and L the simple moving averages over
    `period` bars of Close's rises and falls (Cutler's RSI, not Wilder's smoothing). Below `lower`
    go long unless long, above `upper` go short unless short (flat when long-only)."""

    name = "rsi"
    summary = "RSI below lower: long unless long; above upper: short unless short"
    Params = RsiParams

    def warmup(self, p: RsiParams) -> int:
        """The period: rises and falls start on the second bar."""
        return p.period

    def check(self, p: RsiParams) -> list[tuple[str, str]]:
        """lower must be less than upper."""
        if p.lower >= p.upper:
            return [("params.lower", f"lower ({p.lower}) must be less than upper ({p.upper})")]
        return []

    def decide(self, data: IndicatorCache, p: RsiParams, long_only: bool) -> Decisions:
        """Entries on the RSI's level (see the class)."""
        n, lower, upper = p.period, float(p.lower), float(p.upper)

        def rsi(exact: bool) -> npt.NDArray[np.float64]:
            return rsi_from(data.mean(n, exact, "gain"), data.mean(n, exact, "loss"))

        full = np.full(data.close.shape[0], 0.0)
        vs_lower = robust_sign(lambda exact: (rsi(exact), full + lower))
        vs_upper = robust_sign(lambda exact: (rsi(exact), full + upper))
        return _level_rules(full.shape[0], vs_lower == BELOW, vs_upper == ABOVE, long_only)


# --- buy_and_hold ----------------------------------------------------------------------------


class NoParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """No parameters."""


class BuyAndHold(Strategy[NoParams]):
    """Buy with all equity at the first bar after the warm-up and hold to the end."""

    name = "buy_and_hold"
    summary = "buy with all equity at the first opportunity and hold to the end"
    Params = NoParams

    def decide(self, data: IndicatorCache, p: NoParams, long_only: bool) -> Decisions:
        """LONG whenever flat (so once, unless a stop closes the trade)."""
        n = data.close.shape[0]
        return rules(n, flat=[(np.ones(n, dtype=bool), LONG)])


BUILTINS: tuple[Strategy[Any], ...] = (SmaCross(), Momentum(), Bollinger(), Rsi(), BuyAndHold())

# The built-ins by name. Plugins join them in `registry.strategies()`, which is what the engine,
# the API and the CLI use.
STRATEGIES: dict[str, Registered] = {s.name: Registered(s) for s in BUILTINS}


def min_bars(strategy: Registered, params: Mapping[str, Any]) -> int:
    """Bars needed: the warm-up, the first decision bar, and one bar to fill it on."""
    return strategy.warmup(params) + 3
