"""Rolling indicators: exact to rounding against rational arithmetic, O(n) whatever the window,
and their exact replay cut into bounded steps."""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
import timeit
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumers.engine.datasets import Bars
from consumers.engine.indicators import IndicatorCache, IndicatorUnfinished
from consumers.engine.job import Job, run_once
from consumers.engine.kernel import Costs
from consumers.engine.market import Market
from consumers.engine.rolling import rolling_mean_fast, rolling_std
from consumers.engine.strategies import STRATEGIES


def exact_mean(values: np.ndarray) -> float:
    return float(sum(Fraction(v) for v in values.tolist()) / len(values))


def exact_std(values: np.ndarray) -> float:
    """Population standard deviation in rational arithmetic, rounded once at the end."""
    return float(statistics.pstdev([Fraction(v) for v in values.tolist()]))


def cent_walk(n: int, seed: int, start: float = 100.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.round(start + np.abs(np.cumsum(rng.choice([-0.05, -0.01, 0.0, 0.01, 0.05], n))), 2)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 400), st.integers(1, 450), st.integers(0, 2**32 - 1), st.sampled_from([0.5, 100.0, 25_000.0]))
def test_rolling_mean_and_std_equal_exact_arithmetic(n: int, window: int, seed: int, level: float) -> None:
    x = cent_walk(n, seed, level)
    mean, sd = rolling_mean_fast(x, window), rolling_std(x, window)
    assert mean.shape == sd.shape == (n,)
    if window > n:
        assert np.isnan(mean).all() and np.isnan(sd).all()
        return
    assert np.isnan(mean[: window - 1]).all() and np.isnan(sd[: window - 1]).all()
    for i in range(window - 1, n):
        part = x[i - window + 1 : i + 1]
        assert mean[i] == pytest.approx(exact_mean(part), rel=1e-14)
        want = exact_std(part)
        # Relative to the window's level: a deviation near zero is a difference of prices.
        assert abs(sd[i] - want) <= 1e-12 * max(want, 1e-3 * float(np.max(np.abs(part))))
        if np.all(part == part[0]):
            assert sd[i] == 0.0


def test_windows_of_equal_prices_have_exactly_zero_deviation() -> None:
    x = np.array([10.0] * 7 + [10.01] * 9 + [10.0] * 8)
    for window in (2, 3, 5, 7, 8):
        sd = rolling_std(x, window)
        for i in range(window - 1, len(x)):
            if np.all(x[i - window + 1 : i + 1] == x[i]):
                assert sd[i] == 0.0, (window, i)
                assert rolling_mean_fast(x, window)[i] == x[i]


def test_rolling_mean_stays_exact_on_a_long_series() -> None:
    """The rounding of the fast mean must not grow with the series' length: the near-tie rule
    (NEAR_TIE = 1e-9) relies on it being far closer than that. One cumulative sum over 300,000
    bars was ~1e-10 off at the end."""
    x = cent_walk(300_000, 3, 100.0) + 60 * np.sin(np.arange(300_000) / 4000)
    for window in (3, 20, 250):
        mean, sd = rolling_mean_fast(x, window), rolling_std(x, window)
        for i in range(x.shape[0] - 2000, x.shape[0], 97):
            part = x[i - window + 1 : i + 1]
            assert abs(mean[i] - math.fsum(part.tolist()) / window) <= 1e-14 * abs(mean[i])
            assert sd[i] == pytest.approx(exact_std(part), rel=1e-11, abs=1e-13)


@pytest.mark.parametrize("indicator", [rolling_mean_fast, rolling_std])
def test_cost_does_not_grow_with_the_window(indicator: object) -> None:
    """Linear in the series, independent of the window: a window of half the series costs about
    what a window of 8 does (O(n·window) work made it ~1,000 times more). Timed side by side,
    best of several runs, and with a factor of 5 of slack: not a speed target (BENCHMARKS.md)."""
    x = cent_walk(40_000, 5)

    def best(window: int) -> float:
        # CPU time of this process: another process on the machine does not count.
        return min(timeit.repeat(lambda: indicator(x, window), number=3, repeat=7, timer=time.process_time))  # type: ignore[operator]

    small, large = best(8), best(20_000)
    assert large < 5 * small, (small, large)


def test_exact_replay_in_bounded_parts_equals_pandas() -> None:
    """A long replay is cut into parts of at most `exact_bars_per_call` bars, one per call; the
    result is still pandas' rolling mean bit for bit."""
    x = cent_walk(5_500, 9, 20.0)
    cache = IndicatorCache(x, exact_bars_per_call=1_000)
    unfinished = 0
    while True:
        try:
            got = cache.mean(7, exact=True)
            break
        except IndicatorUnfinished:
            unfinished += 1
    assert unfinished == 5
    np.testing.assert_array_equal(got, pd.Series(x).rolling(7).mean().to_numpy())


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("sma_cross", {"fast": 2, "slow": 3}),
        ("rsi", {"period": 4, "lower": 50.0, "upper": 75.0}),
        ("bollinger", {"window": 4, "k": 0.0}),
    ],
)
def test_a_run_whose_replay_spans_steps_equals_one_in_a_single_step(name: str, params: dict[str, float]) -> None:
    """Cent prices that barely move tie often, so the exact replay runs; cut into steps of 500
    bars it gives the same trades and equity as in one go."""
    rng = np.random.default_rng(4)
    close = np.round(10 + np.cumsum(rng.choice([-0.01, 0, 0, 0, 0.01], 3_000)), 2)
    dates = np.datetime64("2001-01-01") + np.arange(close.shape[0])
    bars = Bars("X", "user", dates, close, close + 0.01, close - 0.01, close, np.ones(close.shape[0]))
    strategy = STRATEGIES[name]
    unbounded = dataclasses.replace(Market.of(bars), indicators=IndicatorCache(close))
    whole = run_once(unbounded, strategy, params, Costs(), False, 10_000.0)
    in_parts = dataclasses.replace(Market.of(bars), indicators=IndicatorCache(close, exact_bars_per_call=500))
    job = Job(in_parts, strategy, params, Costs(), False, 10_000.0)
    steps_before_signals = 0
    while job.signals is None:
        job.step()
        steps_before_signals += 1
    while not job.done:
        job.step()
    assert steps_before_signals > 3  # the replay really was cut into parts
    assert job.sim is not None
    assert [(t.entry_bar, t.exit_bar, t.size) for t in job.sim.trades] == [
        (t.entry_bar, t.exit_bar, t.size) for t in whole[0].trades
    ]
    np.testing.assert_array_equal(job.sim.equity, whole[0].equity)
    assert job.metrics == whole[1]
