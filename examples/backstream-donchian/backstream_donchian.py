"""A Donchian channel breakout: an example Backstream strategy plugin.

Go long when Close breaks above the highest High of the previous `entry` bars; go short (or flat
when long-only) when it breaks below the lowest Low of the previous `entry` bars; leave a trade
when Close crosses the opposite channel of the shorter `exit` window.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
import numpy as np
import numpy.typing as npt

from consumers.engine.indicators import IndicatorCache
from consumers.engine.interface import FLAT, LONG, SHORT, Decisions, Strategy, rules

FloatArray = npt.NDArray[np.float64]


class DonchianParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    entry: Annotated[int, msgspec.Meta(ge=2, le=1000, description="bars in the breakout channel")] = 20
    exit: Annotated[int, msgspec.Meta(ge=1, le=1000, description="bars in the exit channel")] = 10


def rolling_max(x: FloatArray, n: int) -> FloatArray:
    """Highest value of the `n` bars before each bar (NaN until there are n of them)."""
    out = np.full(x.shape[0], np.nan)
    if n < x.shape[0]:
        out[n:] = np.lib.stride_tricks.sliding_window_view(x, n).max(axis=1)[:-1]
    return out


def rolling_min(x: FloatArray, n: int) -> FloatArray:
    """Lowest value of the `n` bars before each bar (NaN until there are n of them)."""
    return -rolling_max(-x, n)


class Donchian(Strategy[DonchianParams]):
    name = "donchian"
    summary = "Close above the prior N-bar high: long; below the prior N-bar low: short; exit on the M-bar channel"
    Params = DonchianParams

    def warmup(self, p: DonchianParams) -> int:
        return max(p.entry, p.exit)

    def check(self, p: DonchianParams) -> list[tuple[str, str]]:
        if p.exit > p.entry:
            return [("params.exit", f"exit ({p.exit}) must be at most entry ({p.entry})")]
        return []

    def decide(self, data: IndicatorCache, p: DonchianParams, long_only: bool) -> Decisions:
        # memo(): each channel is computed once per window across a whole sweep.
        hi = data.memo(("donchian_high", p.entry), lambda: rolling_max(data.high, p.entry))
        lo = data.memo(("donchian_low", p.entry), lambda: rolling_min(data.low, p.entry))
        exit_hi = data.memo(("donchian_high", p.exit), lambda: rolling_max(data.high, p.exit))
        exit_lo = data.memo(("donchian_low", p.exit), lambda: rolling_min(data.low, p.exit))
        close = data.close
        with np.errstate(invalid="ignore"):
            up, down = close > hi, close < lo
            leave_long, leave_short = close < exit_lo, close > exit_hi
        n = close.shape[0]
        if long_only:
            return rules(n, flat=[(up, LONG)], long=[(leave_long, FLAT)])
        return rules(
            n,
            flat=[(up, LONG), (down, SHORT)],
            long=[(down, SHORT), (leave_long, FLAT)],
            short=[(up, LONG), (leave_short, FLAT)],
        )
