"""Properties over random prices and strategies (hypothesis), and exact ties in indicators."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bt_oracle
import numpy as np
import pandas as pd
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from consumers.engine.datasets import Bars, Catalog
from consumers.engine.job import run_once
from consumers.engine.kernel import Costs
from consumers.engine.market import Market
from consumers.engine.rolling import rolling_mean_exact, rolling_mean_fast
from consumers.engine.strategies import STRATEGIES
from orchestrator.domain.spec import BacktestSpec

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make_bars(close: np.ndarray, open_: np.ndarray) -> Bars:
    dates = np.datetime64("2001-01-01") + np.arange(len(close))
    hi, lo = np.maximum(open_, close) * 1.01, np.minimum(open_, close) * 0.99
    return Bars("X", "user", dates, open_, hi, lo, close, np.ones(len(close)))


def market(bars: Bars) -> Market:
    return Market.of(bars)


prices = st.lists(st.floats(-0.08, 0.08), min_size=40, max_size=150).map(
    lambda r: np.round(50 * np.exp(np.cumsum(r)), 2)
)
strategy_params = st.sampled_from(
    [
        ("sma_cross", {"fast": 2, "slow": 5}),
        ("sma_cross", {"fast": 3, "slow": 10}),
        ("momentum", {"lookback": 3, "threshold": 0.01}),
        ("bollinger", {"window": 8, "k": 1.0}),
        ("rsi", {"period": 4, "lower": 35.0, "upper": 65.0}),
        ("buy_and_hold", {}),
    ]
)
costs = st.builds(Costs, st.floats(0, 0.02), st.floats(0, 5), st.floats(0, 0.01), st.floats(0, 0.002))


def with_opens(close: np.ndarray, gaps: float) -> np.ndarray:
    return np.round(np.concatenate([[close[0]], close[:-1]]) * (1 + gaps), 2)


@SETTINGS
@given(prices, strategy_params, costs, st.booleans(), st.floats(-0.02, 0.02))
def test_equity_is_cash_plus_position_value(close: np.ndarray, sp: Any, c: Costs, long_only: bool, gap: float) -> None:
    name, params = sp
    bars = make_bars(close, with_opens(close, gap))
    sim, _ = run_once(market(bars), STRATEGIES[name], params, c, long_only, 10_000.0)
    end = len(close) - 1 if sim.bankrupt_bar is None else sim.bankrupt_bar
    for k in range(end):
        realised = sum(t.size * (t.exit_price - t.entry_price) - t.commission for t in sim.trades if t.exit_bar <= k)
        open_trades = [t for t in sim.trades if t.entry_bar <= k < t.exit_bar]
        cash = 10_000.0 + realised - sum(c.fee(t.size, t.entry_price) for t in open_trades)
        value = sum(t.size * (close[k] - t.entry_price) for t in open_trades)
        assert sim.position[k] == sum(t.size for t in open_trades)
        assert abs(sim.equity[k] - (cash + value)) <= 1e-9 * max(1.0, abs(cash) + abs(value))


@SETTINGS
@given(prices, strategy_params, costs, st.booleans(), st.data())
def test_no_fill_uses_its_own_bars_close(close: np.ndarray, sp: Any, c: Costs, long_only: bool, data: Any) -> None:
    """Rewriting every Close from bar k on changes no fill at or before bar k."""
    name, params = sp
    open_ = with_opens(close, 0.0)
    k = data.draw(st.integers(1, len(close) - 2))
    other = close.copy()
    other[k:] = np.round(other[k:] * data.draw(st.floats(0.5, 2.0)), 2)
    first, _ = run_once(market(make_bars(close, open_)), STRATEGIES[name], params, c, long_only, 10_000.0)
    second, _ = run_once(market(make_bars(other, open_)), STRATEGIES[name], params, c, long_only, 10_000.0)
    assume(first.bankrupt_bar is None and second.bankrupt_bar is None)

    def fills(sim: Any) -> set[tuple[Any, ...]]:
        out = {("in", t.entry_bar, t.size, t.entry_price) for t in sim.trades if t.entry_bar <= k}
        return out | {("out", t.exit_bar, t.size, t.exit_price) for t in sim.trades if t.exit_bar <= k}

    assert fills(first) == fills(second)


@SETTINGS
@given(prices, strategy_params, costs, st.booleans(), st.floats(1e-6, 1e-3))
def test_more_commission_never_raises_final_equity(
    close: np.ndarray, sp: Any, c: Costs, long_only: bool, more: float
) -> None:
    """With the same fills (same bars and units), a higher commission rate ends with less.

    With whole units the literal claim can fail: a higher rate can buy one unit fewer, and one
    unit fewer of a losing trade can outweigh the fee (see the test below).
    """
    name, params = sp
    m = market(make_bars(close, with_opens(close, 0.0)))
    higher = Costs(c.commission + more, c.commission_fixed, c.spread, c.slippage)
    lo, mlo = run_once(m, STRATEGIES[name], params, c, long_only, 10_000.0)
    hi, mhi = run_once(m, STRATEGIES[name], params, higher, long_only, 10_000.0)
    same = [(t.entry_bar, t.exit_bar, t.size) for t in lo.trades] == [
        (t.entry_bar, t.exit_bar, t.size) for t in hi.trades
    ]
    # The same units held at every bar too: a fill on the last bar is no trade yet, and one unit
    # fewer there can outweigh the fee, as in the test below.
    same = same and np.array_equal(lo.position, hi.position)
    assume(same and lo.bankrupt_bar is None and hi.bankrupt_bar is None)
    assert mhi["equity_final"] <= mlo["equity_final"]  # type: ignore[operator]


def test_whole_units_can_make_more_commission_end_higher() -> None:
    """The counterexample: 1005 cash, a 100 entry and a 50 exit. With no fee 10 units lose 500;
    with 1% the cash buys only 9 units, which lose less even after fees."""
    close = np.array([100.0, 100, 100, 50, 50])
    bars = make_bars(close, close)
    strategy = STRATEGIES["buy_and_hold"]
    _, free = run_once(market(bars), strategy, {}, Costs(), False, 1005.0)
    _, costly = run_once(market(bars), strategy, {}, Costs(commission=0.01), False, 1005.0)
    assert costly["equity_final"] > free["equity_final"]  # type: ignore[operator]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(-3, 3), min_size=5, max_size=300), st.integers(1, 30), st.integers(800, 2000))
def test_exact_rolling_mean_is_pandas_bit_for_bit(steps: list[int], window: int, base: int) -> None:
    x = (base + np.cumsum(steps)) / 100  # cent prices with long flat runs
    np.testing.assert_array_equal(rolling_mean_exact(x, window), pd.Series(x).rolling(window).mean().to_numpy())


def test_ties_are_decided_as_pandas_decides_them(tmp_path: Path) -> None:
    """Cent prices that barely move: the moving averages tie exactly, often. The fast cumulative
    mean alone decides some of those crossings differently; the engine must not."""
    rng = np.random.default_rng(11)
    n = 600
    close = np.round(10 + np.cumsum(rng.choice([-0.01, 0, 0, 0, 0.01], n)), 2)
    frame = pd.DataFrame(
        {"Open": close, "High": close + 0.01, "Low": close - 0.01, "Close": close, "Volume": 1.0},
        index=pd.bdate_range("2010-01-04", periods=n),
    )
    bt_oracle.write_csv(frame, tmp_path / "FLAT.csv")
    catalog = Catalog.from_env_dir(str(tmp_path))
    bars = catalog.load("FLAT")
    naive_differs = False
    for fast, slow in [(2, 3), (2, 4), (3, 6), (4, 8), (5, 10)]:
        f, s = rolling_mean_fast(bars.close, fast), rolling_mean_fast(bars.close, slow)
        ef, es = rolling_mean_exact(bars.close, fast), rolling_mean_exact(bars.close, slow)
        naive_differs |= bool(((f > s) != (ef > es)).any() or ((f == s) != (ef == es)).any())
        spec = BacktestSpec(strategy="sma_cross", symbol="FLAT", params={"fast": fast, "slow": slow})
        from test_engine_parity import assert_parity

        assert_parity(catalog, spec)
    for spec in [
        BacktestSpec(strategy="rsi", symbol="FLAT", params={"period": 4, "lower": 25.0, "upper": 75.0}),
        BacktestSpec(strategy="bollinger", symbol="FLAT", params={"window": 4, "k": 0.0}),
    ]:
        from test_engine_parity import assert_parity

        assert_parity(catalog, spec)
    assert naive_differs
