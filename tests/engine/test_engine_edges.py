"""Statistics at the edges: bar frequency, bankrupt runs, a drawdown still open at the last bar.

Each expected value is derived here from the equity curve by hand (a telescoping product of
returns), not taken from the engine; where backtesting.py 0.6.6 is right the oracle must agree,
and where it is wrong the deviation is asserted to be the documented one.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import bt_oracle
import numpy as np
import pandas as pd
import pytest
from test_engine_parity import assert_parity, run_engine

from consumers.engine.datasets import Catalog
from consumers.engine.metrics import OBJECTIVES, compute_metrics
from consumers.engine.sweep import make_row, ranked
from orchestrator.domain.spec import BacktestSpec


def metrics_of(index: pd.DatetimeIndex, equity: np.ndarray) -> dict[str, Any]:
    """The engine's statistics of an equity curve alone (no trades; Close = equity)."""
    return compute_metrics(index.to_numpy().astype("datetime64[s]"), equity, equity, [], 0)


def growth(n: int, mean: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.asarray(10_000 * np.cumprod(np.r_[1.0, 1 + mean + rng.normal(0, 0.02, n - 1)]))


def per_period_annualised(equity: np.ndarray, per_year: float) -> float:
    """Every bar is one period: the geometric mean return compounds over `per_year` periods."""
    return float((equity[-1] / equity[0]) ** (per_year / (len(equity) - 1)) - 1) * 100


def compound_volatility(equity: np.ndarray, per_year: float) -> float:
    r = [b / a - 1 for a, b in zip(equity[:-1], equity[1:], strict=True)]
    g = (equity[-1] / equity[0]) ** (1 / len(r)) - 1
    return math.sqrt((statistics.variance(r) + (1 + g) ** 2) ** per_year - (1 + g) ** (2 * per_year)) * 100


# --- 1. annualisation follows the bars' frequency ---------------------------------------------


@pytest.mark.parametrize(
    ("freq", "per_year"),
    [
        ("BME", 12),  # business-month ends: 28 to 33 days apart, median 30 (backtesting.py: 252)
        ("ME", 12),  # calendar month ends: median 31
        ("MS", 12),
        ("BQE", 4),  # quarters (backtesting.py: 252)
        ("W-FRI", 52),
        ("BYE", 1),
        ("YE", 1),
        ("14D", 365.25 / 14),  # no calendar frequency: annualised by calendar time
    ],
)
def test_bars_coarser_than_daily_are_annualised_by_their_frequency(freq: str, per_year: float) -> None:
    index = pd.date_range("2001-01-01", periods=60, freq=freq)
    equity = growth(60, 0.0098, seed=3)
    m = metrics_of(index, equity)
    assert m["return_ann_pct"] == pytest.approx(per_period_annualised(equity, per_year), rel=1e-9)
    assert m["volatility_ann_pct"] == pytest.approx(compound_volatility(equity, per_year), rel=1e-9)
    assert m["sharpe"] == pytest.approx(m["return_ann_pct"] / m["volatility_ann_pct"], rel=1e-12)


def test_monthly_bars_annualise_near_their_cagr() -> None:
    """The issue's case: 12.4% a year compounded, on business-month ends, read as ~1,066% when
    annualised with 252 periods a year."""
    index = pd.date_range("2002-01-01", periods=121, freq="BME")  # median spacing 30 days
    equity = 10_000 * 1.124 ** (np.arange(121) / 12)
    m = metrics_of(index, equity)
    assert m["return_ann_pct"] == pytest.approx(12.4, rel=1e-9)
    assert m["cagr_pct"] == pytest.approx(12.4, abs=0.05)  # calendar days, not months: close, not equal


@pytest.mark.parametrize(("weekends", "per_year"), [(False, 252), (True, 365)])
def test_daily_bars_use_trading_or_calendar_days(weekends: bool, per_year: int) -> None:
    index = pd.date_range("2020-01-01", periods=300, freq="D" if weekends else "B")
    equity = growth(300, 0.0005, seed=5)
    m = metrics_of(index, equity)
    assert m["return_ann_pct"] == pytest.approx(per_period_annualised(equity, per_year), rel=1e-9)


@pytest.mark.parametrize(("weekends", "per_year"), [(False, 252), (True, 365)])
def test_intraday_bars_are_resampled_to_days(weekends: bool, per_year: int) -> None:
    """Hourly bars: the last equity of each calendar day, then the daily rule."""
    days = pd.date_range("2021-03-01", periods=40, freq="D" if weekends else "B")
    index = pd.DatetimeIndex([d + pd.Timedelta(hours=h) for d in days for h in range(9, 17)])
    equity = growth(len(index), 0.0002, seed=9)
    m = metrics_of(index, equity)
    day_closes = equity[7::8]  # 8 bars a day, the last at 16:00
    assert m["return_ann_pct"] == pytest.approx(per_period_annualised(day_closes, per_year), rel=1e-9)
    assert m["duration_days"] == pytest.approx((index[-1] - index[0]) / pd.Timedelta(days=1), rel=1e-12)


def _engine_vs_oracle(tmp_path: Path, index: pd.DatetimeIndex) -> tuple[dict[str, Any], pd.Series, np.ndarray]:
    close = np.round(growth(len(index), 0.0098, seed=11) / 100, 2)
    frame = pd.DataFrame({"Open": close, "High": close, "Low": close, "Close": close, "Volume": 1.0}, index=index)
    bt_oracle.write_csv(frame, tmp_path / "SLOW.csv")
    catalog = Catalog.from_env_dir(str(tmp_path))
    spec = BacktestSpec(strategy="buy_and_hold", symbol="SLOW")
    detail = run_engine(catalog, spec).detail
    stats = bt_oracle.run(catalog.load("SLOW"), spec)
    return detail, stats, np.array(detail["equity_curve"]["equity"])


@pytest.mark.parametrize("freq", ["ME", "W-FRI", "D"])
def test_parity_where_backtesting_py_knows_the_frequency(tmp_path: Path, freq: str) -> None:
    close = np.round(growth(80, 0.004, seed=2) / 100, 2)
    index = pd.date_range("2010-01-01", periods=80, freq=freq)
    frame = pd.DataFrame({"Open": close, "High": close, "Low": close, "Close": close, "Volume": 1.0}, index=index)
    bt_oracle.write_csv(frame, tmp_path / "SLOW.csv")
    assert_parity(Catalog.from_env_dir(str(tmp_path)), BacktestSpec(strategy="buy_and_hold", symbol="SLOW"))


@pytest.mark.parametrize(("freq", "per_year"), [("BME", 12), ("BQE", 4)])
def test_deviation_where_backtesting_py_takes_bars_for_days(tmp_path: Path, freq: str, per_year: int) -> None:
    index = pd.date_range("2003-01-01", periods=60, freq=freq)  # business-month ends 30 days apart (median)
    detail, stats, equity = _engine_vs_oracle(tmp_path, index)
    ours = detail["metrics"]
    # Before the first fill equity is flat: every bar is still one period of its own.
    assert ours["return_ann_pct"] == pytest.approx(per_period_annualised(equity, per_year), rel=1e-9)
    assert stats["Return (Ann.) [%]"] == pytest.approx(per_period_annualised(equity, 252), rel=1e-9)
    mismatches = set(bt_oracle.metric_mismatches(ours, stats)) - bt_oracle.allowed_deviations(detail)
    assert mismatches == bt_oracle.ANNUALISED


# --- 2. a bankrupt run never outranks one that is not ----------------------------------------


@pytest.fixture
def crash_catalog(tmp_path: Path) -> Catalog:
    """A rise, a 10% decline, a gap to over three times the price and back: momentum with a low
    threshold goes short in the decline and is wiped out by the gap; with a higher one it stays
    long through it and ends a few percent down."""
    close = np.concatenate([np.linspace(100, 130, 10), np.linspace(130, 117, 25), [400.0, 400.0], [117.0] * 10])
    frame = pd.DataFrame(
        {"Open": close, "High": close, "Low": close, "Close": close, "Volume": 1.0},
        index=pd.bdate_range("2015-01-05", periods=len(close)),
    )
    bt_oracle.write_csv(frame, tmp_path / "CRASH.csv")
    return Catalog.from_env_dir(str(tmp_path))


def _momentum(threshold: float | list[float], objective: str = "sqn") -> BacktestSpec:
    return BacktestSpec(
        strategy="momentum", symbol="CRASH", params={"lookback": 5, "threshold": threshold}, objective=objective
    )


def test_bankrupt_run_reports_a_total_loss(crash_catalog: Catalog) -> None:
    detail = assert_parity(crash_catalog, _momentum(0.01))
    m = detail["metrics"]
    assert detail["bankrupt_at"] is not None
    assert m["return_ann_pct"] == m["cagr_pct"] == m["return_pct"] == -100.0
    assert m["sharpe"] < 0 and m["sortino"] < 0 and m["calmar"] == -1.0


def test_sweep_never_picks_a_bankrupt_run(crash_catalog: Catalog) -> None:
    out = run_engine(crash_catalog, _momentum([0.01, 0.05], objective="sharpe"))
    assert out.summary["best_params"] == {"lookback": 5, "threshold": 0.05}
    assert out.detail["best"]["bankrupt_at"] is None
    assert out.detail["table"][-1]["params"]["threshold"] == 0.01


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_no_objective_ranks_a_bankrupt_run_first(crash_catalog: Catalog, objective: str) -> None:
    rows = []
    for threshold in (0.01, 0.05):  # the bankrupt one first: it wins every tie in grid order
        detail = run_engine(crash_catalog, _momentum(threshold)).detail
        rows.append(make_row({"threshold": threshold}, detail["metrics"], objective))
    assert rows[0].metrics["equity_final"] == 0.0 and rows[1].metrics["equity_final"] > 0  # type: ignore[operator]
    assert [r.params["threshold"] for r in ranked(rows)] == [0.05, 0.01]


# --- 3. a drawdown still open at the last bar ------------------------------------------------


@pytest.mark.parametrize(
    ("equity", "avg_pct", "max_days", "avg_days"),
    [
        # A closed drawdown (10%, 2 days), then one opened on the last bar (20%, 1 day); the
        # mean duration 1.5 days is rounded up to the bar spacing's resolution (whole days).
        ([100.0, 90, 100, 110, 88], -15.0, 2, 2),
        # Only a drawdown opened on the last bar.
        ([100.0, 101, 102, 91.8], -10.0, 1, 1),
        # An open drawdown of three bars after a closed one.
        ([100.0, 50, 100, 110, 99, 88, 99], -35.0, 3, 3),
    ],
)
def test_open_drawdown_is_a_period(equity: list[float], avg_pct: float, max_days: int, avg_days: float) -> None:
    m = metrics_of(pd.date_range("2020-01-01", periods=len(equity), freq="D"), np.array(equity))
    assert m["avg_drawdown_pct"] == pytest.approx(avg_pct, rel=1e-12)
    assert (m["max_drawdown_duration_days"], m["avg_drawdown_duration_days"]) == (max_days, avg_days)


def test_no_drawdown_has_no_period() -> None:
    m = metrics_of(pd.date_range("2020-01-01", periods=4, freq="D"), np.array([100.0, 101, 102, 103]))
    assert m["max_drawdown_pct"] == 0 and math.isnan(m["avg_drawdown_pct"])  # type: ignore[arg-type]
    assert m["max_drawdown_duration_days"] is None and m["avg_drawdown_duration_days"] is None


def test_open_drawdown_deviation_from_backtesting_py(tmp_path: Path) -> None:
    """Bought at bar 2's open; a new high on the second-to-last bar, then a 5% fall."""
    close = np.array([10.0, 10, 10, 9, 10, 11, 12, 11.4])
    frame = pd.DataFrame(
        {"Open": close, "High": close, "Low": close, "Close": close, "Volume": 1.0},
        index=pd.bdate_range("2020-01-06", periods=len(close)),
    )
    bt_oracle.write_csv(frame, tmp_path / "DIP.csv")
    catalog = Catalog.from_env_dir(str(tmp_path))
    spec = BacktestSpec(strategy="buy_and_hold", symbol="DIP", cash=105.0)  # 10 units, 5 in cash
    detail = assert_parity(catalog, spec)  # all else equal
    stats = bt_oracle.run(catalog.load("DIP"), spec)
    ours = detail["metrics"]
    # Equity 105, 95, 105, 115, 125, 119 from bar 2: a period from bar 2 to 4 (10/105 deep,
    # 2 days) and one opened on the last bar (6/125 deep, 1 day; mean 1.5, rounded up to 2).
    assert ours["avg_drawdown_pct"] == pytest.approx(-(10 / 105 + 6 / 125) / 2 * 100, rel=1e-12)
    assert (ours["max_drawdown_duration_days"], ours["avg_drawdown_duration_days"]) == (2, 2)
    # backtesting.py drops the open one-bar period.
    assert stats["Avg. Drawdown [%]"] == pytest.approx(-10 / 105 * 100, rel=1e-12)
    assert stats["Avg. Drawdown Duration"] == pd.Timedelta(days=2)


@pytest.mark.parametrize(
    ("spacing", "expected_days"),
    [
        (pd.Timedelta(hours=1), 2 + 5 / 24),  # whole hours: ceiled to the hour
        (pd.Timedelta(minutes=90), 2 + 4.5 / 24),  # 1 h 30 min: to the minute
        (pd.Timedelta(days=1), 4),  # whole days
    ],
)
def test_durations_are_ceiled_to_the_bar_spacing_resolution(spacing: pd.Timedelta, expected_days: float) -> None:
    """One drawdown of a span of bars: its duration is the span itself, already whole in the
    spacing's resolution, so ceiling must leave it as it is (not round it up to a whole hour)."""
    n = {pd.Timedelta(hours=1): 54, pd.Timedelta(minutes=90): 36, pd.Timedelta(days=1): 5}[spacing]
    index = pd.date_range("2021-03-01", periods=n, freq=spacing)
    equity = np.full(n, 100.0)
    equity[1:-1] = 90.0  # from the first bar (the peak) to the last (recovered)
    m = metrics_of(index, equity)
    assert m["max_drawdown_duration_days"] == pytest.approx((index[-1] - index[0]) / pd.Timedelta(days=1), rel=1e-12)
    assert m["max_drawdown_duration_days"] == pytest.approx(expected_days, rel=1e-12)
