"""The strategies: their parameters, warm-up, and per-bar decisions as event lists for the kernel."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from consumers.engine.indicators import ABOVE, BELOW, IndicatorCache, robust_sign, rsi_from

# What a decision asks for at the next bar's open. Every entry first closes the open trade,
# so LONG while already long re-enters (as backtesting.py's SmaCross does on a repeated cross).
LONG, SHORT, FLAT = 1, -1, 0

Params = Mapping[str, float]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class ParamDef:
    name: str
    kind: type  # int or float
    minimum: float
    maximum: float
    doc: str


@dataclass(frozen=True)
class Signals:
    """Decision bars and actions for each position state (-1 short, 0 flat, 1 long), ascending.

    The kernel, in state s at bar i, acts on the first entry of `bars[s]` at or after i.
    """

    bars: dict[int, list[int]]
    acts: dict[int, list[int]]


@dataclass(frozen=True)
class StrategyDef:
    name: str
    params: tuple[ParamDef, ...]
    warmup: Callable[[Params], int]
    rules: Callable[[Params], list[tuple[str, str]]]
    build: Callable[[IndicatorCache, Params, int, bool], Signals]
    summary: str

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)


def _events(per_state: dict[int, list[tuple[BoolArray, int]]], start: int) -> Signals:
    """Turn (mask, action) lists per state into sorted event lists; earlier pairs win a bar."""
    bars: dict[int, list[int]] = {}
    acts: dict[int, list[int]] = {}
    for state in (-1, 0, 1):
        pairs = per_state.get(state, [])
        if not pairs:
            bars[state], acts[state] = [], []
            continue
        n = pairs[0][0].shape[0]
        code = np.full(n, 9, dtype=np.int8)  # 9: no decision
        for mask, act in reversed(pairs):  # earlier pairs overwrite later ones, like if/elif
            code[mask] = act
        code[:start] = 9
        idx = np.flatnonzero(code != 9)
        bars[state] = idx.tolist()
        acts[state] = code[idx].tolist()
    return Signals(bars, acts)


def _level_rules(go_long: BoolArray, go_short: BoolArray, start: int, long_only: bool) -> Signals:
    """Enter long on `go_long` unless long, else short on `go_short` unless short (flat if long-only)."""
    if long_only:
        return _events({0: [(go_long, LONG)], 1: [(go_short, FLAT)], -1: [(go_long, LONG)]}, start)
    return _events({0: [(go_long, LONG), (go_short, SHORT)], 1: [(go_short, SHORT)], -1: [(go_long, LONG)]}, start)


# --- sma_cross -------------------------------------------------------------------------------


def _sma_cross(ind: IndicatorCache, p: Params, start: int, long_only: bool) -> Signals:
    fast, slow = int(p["fast"]), int(p["slow"])
    sign = robust_sign(lambda exact: (ind.mean(fast, exact), ind.mean(slow, exact)))
    up = np.zeros(sign.shape[0], dtype=bool)
    down = np.zeros(sign.shape[0], dtype=bool)
    up[1:] = (sign[:-1] == BELOW) & (sign[1:] == ABOVE)
    down[1:] = (sign[:-1] == ABOVE) & (sign[1:] == BELOW)
    exit_act = FLAT if long_only else SHORT
    pairs = [(up, LONG), (down, exit_act)]
    per_state = {1: pairs, -1: pairs, 0: [(up, LONG)] if long_only else pairs}
    return _events(per_state, start)


def _sma_rules(p: Params) -> list[tuple[str, str]]:
    if p["fast"] >= p["slow"]:
        return [("params.fast", f"fast ({p['fast']}) must be less than slow ({p['slow']})")]
    return []


# --- momentum --------------------------------------------------------------------------------


def _momentum(ind: IndicatorCache, p: Params, start: int, long_only: bool) -> Signals:
    mom = ind.momentum(int(p["lookback"]))
    thr = float(p["threshold"])
    with np.errstate(invalid="ignore"):
        return _level_rules(mom > thr, mom < -thr, start, long_only)


# --- bollinger -------------------------------------------------------------------------------


def _bollinger(ind: IndicatorCache, p: Params, start: int, long_only: bool) -> Signals:
    w, k = int(p["window"]), float(p["k"])
    close = ind.close
    sd = ind.std(w)
    vs_lower = robust_sign(lambda exact: (close, ind.mean(w, exact) - k * sd))
    vs_upper = robust_sign(lambda exact: (close, ind.mean(w, exact) + k * sd))
    vs_mid = robust_sign(lambda exact: (close, ind.mean(w, exact)))
    below, above = vs_lower == BELOW, vs_upper == ABOVE
    entries: list[tuple[BoolArray, int]] = [(below, LONG)] if long_only else [(below, LONG), (above, SHORT)]
    return _events({0: entries, 1: [(vs_mid == ABOVE, FLAT)], -1: [(vs_mid == BELOW, FLAT)]}, start)


# --- rsi -------------------------------------------------------------------------------------


def _rsi(ind: IndicatorCache, p: Params, start: int, long_only: bool) -> Signals:
    n = int(p["period"])
    lower, upper = float(p["lower"]), float(p["upper"])

    def rsi(exact: bool) -> npt.NDArray[np.float64]:
        return rsi_from(ind.mean(n, exact, "gain"), ind.mean(n, exact, "loss"))

    full = np.full(ind.close.shape[0], 0.0)
    vs_lower = robust_sign(lambda exact: (rsi(exact), full + lower))
    vs_upper = robust_sign(lambda exact: (rsi(exact), full + upper))
    return _level_rules(vs_lower == BELOW, vs_upper == ABOVE, start, long_only)


def _rsi_rules(p: Params) -> list[tuple[str, str]]:
    if p["lower"] >= p["upper"]:
        return [("params.lower", f"lower ({p['lower']}) must be less than upper ({p['upper']})")]
    return []


# --- buy_and_hold ----------------------------------------------------------------------------


def _buy_and_hold(ind: IndicatorCache, p: Params, start: int, long_only: bool) -> Signals:
    every = np.ones(ind.close.shape[0], dtype=bool)
    return _events({0: [(every, LONG)]}, start)


def _no_rules(p: Params) -> list[tuple[str, str]]:
    return []


WINDOW_MAX = 100_000

STRATEGIES: dict[str, StrategyDef] = {
    s.name: s
    for s in (
        StrategyDef(
            "sma_cross",
            (
                ParamDef("fast", int, 1, WINDOW_MAX, "bars in the fast simple moving average of Close"),
                ParamDef("slow", int, 2, WINDOW_MAX, "bars in the slow simple moving average of Close"),
            ),
            lambda p: int(max(p["fast"], p["slow"])) - 1,
            _sma_rules,
            _sma_cross,
            "fast SMA crosses above slow: close and go long; crosses below: close and go short",
        ),
        StrategyDef(
            "momentum",
            (
                ParamDef("lookback", int, 1, WINDOW_MAX, "bars back for the momentum Close[t]/Close[t-n]-1"),
                ParamDef("threshold", float, 0.0, 10.0, "momentum above +threshold goes long, below -threshold short"),
            ),
            lambda p: int(p["lookback"]),
            _no_rules,
            _momentum,
            "momentum above +threshold: long unless long; below -threshold: short unless short",
        ),
        StrategyDef(
            "bollinger",
            (
                ParamDef("window", int, 2, WINDOW_MAX, "bars in the moving average and standard deviation"),
                ParamDef("k", float, 0.0, 100.0, "band width in standard deviations"),
            ),
            lambda p: int(p["window"]) - 1,
            _no_rules,
            _bollinger,
            "flat: Close below lower band buys, above upper band sells; exit when Close crosses the middle",
        ),
        StrategyDef(
            "rsi",
            (
                ParamDef("period", int, 1, WINDOW_MAX, "bars in the average gain and loss"),
                ParamDef("lower", float, 0.0, 100.0, "RSI below this goes long unless long"),
                ParamDef("upper", float, 0.0, 100.0, "RSI above this goes short unless short"),
            ),
            lambda p: int(p["period"]),
            _rsi_rules,
            _rsi,
            "RSI below lower: long unless long; above upper: short unless short",
        ),
        StrategyDef(
            "buy_and_hold",
            (),
            lambda p: 0,
            _no_rules,
            _buy_and_hold,
            "buy with all equity at the first opportunity and hold to the end",
        ),
    )
}


def min_bars(strategy: StrategyDef, params: Params) -> int:
    """Bars needed: the warm-up, the first decision bar, and one bar to fill it on."""
    return strategy.warmup(params) + 3
